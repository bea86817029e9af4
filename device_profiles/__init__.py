"""Device profiles: one TOML file per target, plus this small loader and validator.

A profile says what a device is (architecture, cores, memory, accelerator), which bundle
formats, runtimes and execution providers it prefers (best first), the precision recipe the
converter should apply, the accuracy budget of that recipe, and the device's limits.

Built-in profiles live beside this file; users pass their own file by path. A profile with a
missing or wrong field is refused with a :class:`ProfileError` that names the field.
This module imports nothing else of the project.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6): the same parser from PyPI (pyproject marks it for 3.10 only)
    import tomli as tomllib

__all__ = [
    "Profile",
    "ProfileError",
    "builtin_profile_dir",
    "list_profiles",
    "load_profile",
    "profile_from_dict",
]

RECIPES = ("int8-static", "int8-dynamic", "fp16", "fp32", "int4-weight")  # int4-weight: ONNX Runtime only
# Bundle formats and the runtime that runs each: the ONE list of these names. The manifest, the
# converter and the agent's runtime registry all import it from here (this package imports nothing of ours).
RUNTIME_FOR_FORMAT = {"onnx": "onnxruntime", "tflite": "litert"}
FORMATS = tuple(RUNTIME_FOR_FORMAT)
RUNTIMES = tuple(RUNTIME_FOR_FORMAT.values())
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANT_TYPES = ("int8", "uint8")
ARCHES = ("aarch64", "armv7l", "x86_64")
ACCELERATORS = ("none", "cuda", "npu", "tpu")
# The one rule for a name that becomes a file name, a URL segment and an MQTT topic level: a bundle's model name,
# a profile name (a bundle's `profile`) and a published bundle's file name. Defined in this, the bottom layer (it
# imports nothing of ours), and re-exported by the bundle format (edge_agent.bundle.NAME_RE), the fleet's source.
# \Z, not $: `$` also matched before a trailing newline, so "digits\n" was a valid name.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


class ProfileError(ValueError):
    """A profile file is missing, unreadable or has a missing/wrong field."""


@dataclass(frozen=True)
class Hardware:
    arch: str
    cores: int
    memory_mb: int
    accelerator: str


@dataclass(frozen=True)
class RuntimePrefs:
    """Bundle formats best first (each runs on RUNTIME_FOR_FORMAT[format]), providers, threads.

    Older profile files also had `runtimes` (always the formats' runtimes) and `precision.fallback`
    (never applied); both are ignored when present."""

    formats: tuple[str, ...]
    execution_providers: tuple[str, ...]
    threads: int


@dataclass(frozen=True)
class Precision:
    recipe: str
    per_channel: bool
    activation_type: str
    weight_type: str
    calibration_method: str


@dataclass(frozen=True)
class AccuracyBudget:
    max_top1_drop: float
    min_agreement: float


@dataclass(frozen=True)
class Limits:
    max_bundle_mb: float
    memory_budget_mb: float
    latency_budget_ms: float


@dataclass(frozen=True)
class Profile:
    """A validated device profile."""

    name: str
    description: str
    hardware: Hardware
    runtime: RuntimePrefs
    precision: Precision
    accuracy: AccuracyBudget
    limits: Limits
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


def builtin_profile_dir() -> Path:
    """The folder holding the built-in profile files."""
    return Path(__file__).resolve().parent


def list_profiles() -> list[str]:
    """Names of the built-in profiles, sorted."""
    return sorted(p.stem for p in builtin_profile_dir().glob("*.toml"))


def _exists(path: Path) -> bool:
    """Path.exists() that says False where it cannot look (a name looked up from an unreadable working
    folder, as for a service user run from the SSH login's home) instead of raising."""
    try:
        return path.exists()
    except OSError:
        return False


def _profile_path(text: str) -> Path:
    """Where NAME_OR_PATH points. A bare built-in name is the built-in even when the working folder holds a
    file or folder of that name (`raspberry-pi-4/` of outputs must not shadow it: write ./NAME for a file);
    `~` is expanded because `--profile=~/board.toml` and the home's `profile` file reach us unexpanded."""
    if not text.strip():  # `--profile "$BOARD"` with BOARD unset: Path("") is the working folder
        raise ProfileError(f"no profile given (empty name): built-in profiles are {', '.join(list_profiles())}; "
                           "or pass the path of your own profile file")
    if text in list_profiles():
        return builtin_profile_dir() / f"{text}.toml"
    path = Path(text).expanduser()
    if path.suffix in (".toml", ".json") or _exists(path):
        return path
    raise ProfileError(
        f"unknown profile {text!r}: built-in profiles are {', '.join(list_profiles())}; "
        "or pass the path of your own profile file"
    )


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a built-in profile by name, or a user's profile file by path (.toml or .json)."""
    path = _profile_path(str(name_or_path))
    if path.is_dir():
        raise ProfileError(f"profile {path} is a folder: pass a profile file (.toml or .json) or a built-in name")
    if not path.is_file():
        raise ProfileError(f"profile file {path} does not exist")
    try:
        raw = path.read_bytes()
        if path.suffix == ".json":
            import json

            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (OSError, ValueError) as exc:  # tomllib/json errors subclass ValueError
        raise ProfileError(f"profile file {path} cannot be parsed: {exc}") from exc
    try:
        return profile_from_dict(data, source=str(path))
    except ProfileError as exc:  # the field alone does not say which file: the home's, a --profile, the env's
        raise ProfileError(f"profile file {path}: {exc}") from None


# --- validation -------------------------------------------------------------------------


def _field(data: dict[str, Any], section: str, key: str) -> Any:
    where = f"{section}.{key}" if section else key
    container = data.get(section) if section else data
    if section and not isinstance(container, dict):
        raise ProfileError(f"profile field [{section}] is missing or not a table")
    if key not in container:
        raise ProfileError(f"profile field '{where}' is missing")
    return container[key]


def _str(data, section, key, choices=None) -> str:
    value = _field(data, section, key)
    where = f"{section}.{key}" if section else key
    if not isinstance(value, str) or not value:
        raise ProfileError(f"profile field '{where}' must be a non-empty string, got {value!r}")
    if choices and value not in choices:
        raise ProfileError(f"profile field '{where}' is {value!r}; expected one of {', '.join(choices)}")
    return value


def _num(data, section, key, kind=float, minimum=0.0, maximum=None) -> Any:
    value = _field(data, section, key)
    where = f"{section}.{key}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ProfileError(f"profile field '{where}' must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if not math.isfinite(value):  # TOML's nan/inf: every budget comparison with nan is False, so a gate would never fire
        raise ProfileError(f"profile field '{where}' must be a finite number, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ProfileError(f"profile field '{where}' must be {bound}, got {value!r}")
    return kind(value)


def _list(data, section, key, choices=None) -> tuple[str, ...]:
    value = _field(data, section, key)
    where = f"{section}.{key}"
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ProfileError(f"profile field '{where}' must be a non-empty list of strings, got {value!r}")
    if choices:
        bad = [v for v in value if v not in choices]
        if bad:
            raise ProfileError(f"profile field '{where}' has {bad!r}; allowed: {', '.join(choices)}")
    twice = sorted({v for v in value if value.count(v) > 1})
    if twice:  # a list best first: a repeat is a slip (`--format auto` built and measured the same format twice)
        raise ProfileError(f"profile field '{where}' lists {', '.join(twice)} more than once")
    return tuple(value)


def _bool(data, section, key) -> bool:
    value = _field(data, section, key)
    if not isinstance(value, bool):
        raise ProfileError(f"profile field '{section}.{key}' must be true or false, got {value!r}")
    return value


# Fields each table may hold (from the dataclasses above); `runtime.runtimes` and `precision.fallback` are
# older fields still read (and ignored) so a profile written before they were dropped loads.
_SECTIONS = {"hardware": Hardware, "runtime": RuntimePrefs, "precision": Precision, "accuracy": AccuracyBudget,
             "limits": Limits}
_LEGACY = {"runtime": {"runtimes"}, "precision": {"fallback"}}


def _refuse_unknown_fields(data: dict[str, Any]) -> None:
    """A misspelt or invented field (`per_chanel`, `extends`, `[runtime] npu = ...`) would otherwise be read
    as nothing at all: the user believes it applies while the built-in default or another field does."""
    known = {"name", "description", *_SECTIONS}
    for key in data:
        if key not in known:
            hint = " (profiles do not inherit: copy a built-in file and edit it)" if key in ("extends", "inherits", "base") else ""
            raise ProfileError(f"profile field '{key}' is unknown{hint}; a profile has {', '.join(sorted(known))}")
    for section, cls in _SECTIONS.items():
        fields = [f.name for f in dataclasses.fields(cls)]
        for key in data.get(section, {}) if isinstance(data.get(section), dict) else ():
            if key not in fields and key not in _LEGACY.get(section, ()):
                raise ProfileError(f"profile field '{section}.{key}' is unknown; [{section}] has {', '.join(fields)}")


def _precision(data: dict[str, Any]) -> Precision:
    """The [precision] table. int8 activations with uint8 weights is the one pair ONNX Runtime's quantizer
    refuses: accepted here it failed the conversion after export and calibration, exit 1."""
    precision = Precision(
        recipe=_str(data, "precision", "recipe", RECIPES),
        per_channel=_bool(data, "precision", "per_channel"),
        activation_type=_str(data, "precision", "activation_type", QUANT_TYPES),
        weight_type=_str(data, "precision", "weight_type", QUANT_TYPES),
        calibration_method=_str(data, "precision", "calibration_method", CALIBRATION_METHODS),
    )
    if (precision.activation_type, precision.weight_type) == ("int8", "uint8"):
        raise ProfileError("profile fields 'precision.activation_type' int8 with 'precision.weight_type' uint8 are not a "
                           "pair ONNX Runtime quantizes: use uint8/int8 (fast on ARM), int8/int8 or uint8/uint8")
    return precision


def profile_from_dict(data: dict[str, Any], source: str = "<dict>") -> Profile:
    """Validate a parsed profile; raise ProfileError naming the first bad field."""
    if not isinstance(data, dict):
        raise ProfileError("a profile must be a table of fields")
    if not data:  # an empty file said "[runtime] is missing", as if only that table were
        raise ProfileError("the profile is empty: copy a built-in profile (device_profiles/*.toml) and edit it")
    _refuse_unknown_fields(data)
    name = _str(data, "", "name")
    if not NAME_RE.match(name):  # it is a bundle's `profile`, a fleet's filter and the {profile} of --source-url
        raise ProfileError(f"profile field 'name' is {name!r}: use letters, digits, '.', '_' and '-' "
                           "(starting with a letter or digit, at most 128), e.g. \"rk3588-evb\"")
    description = data.get("description", "")
    if not isinstance(description, str):  # `description = 5` was shown as "5"
        raise ProfileError(f"profile field 'description' must be a string, got {description!r}")
    providers = _list(data, "runtime", "execution_providers")
    if providers[-1] != "CPUExecutionProvider":  # ORT gives each node to the first provider that takes it: after CPU, none
        raise ProfileError("profile field 'runtime.execution_providers' must end with CPUExecutionProvider as the fallback")
    profile = Profile(
        name=name,
        description=description,
        hardware=Hardware(
            arch=_str(data, "hardware", "arch", ARCHES),
            cores=_num(data, "hardware", "cores", int, 1),
            memory_mb=_num(data, "hardware", "memory_mb", int, 16),
            accelerator=_str(data, "hardware", "accelerator", ACCELERATORS),
        ),
        runtime=RuntimePrefs(
            formats=_list(data, "runtime", "formats", FORMATS),
            execution_providers=providers,
            threads=_num(data, "runtime", "threads", int, 1, 256),
        ),
        precision=_precision(data),
        accuracy=AccuracyBudget(
            max_top1_drop=_num(data, "accuracy", "max_top1_drop", float, 0.0, 100.0),
            min_agreement=_num(data, "accuracy", "min_agreement", float, 0.0, 1.0),
        ),
        limits=Limits(
            max_bundle_mb=_num(data, "limits", "max_bundle_mb", float, 0.001),
            memory_budget_mb=_num(data, "limits", "memory_budget_mb", float, 1.0),
            latency_budget_ms=_num(data, "limits", "latency_budget_ms", float, 0.001),
        ),
        source=source,
    )
    if profile.precision.recipe == "int4-weight" and "onnx" not in profile.runtime.formats:
        # int4-weight is ONNX Runtime's MatMulNBits: a TFLite-only device cannot run it (`--format auto` said
        # "no candidate passed the accuracy gate", exit 30)
        raise ProfileError("profile field 'precision.recipe' int4-weight needs \"onnx\" in 'runtime.formats' "
                           f"(it has {', '.join(profile.runtime.formats)}): int4-weight bundles are ONNX only")
    return profile
