"""The bundle manifest: schema, validation and canonical JSON.

The manifest is the one description of a bundle that the converter writes, the agent reads
and the fleet publishes. See docs/bundle-format.md for the field-by-field spec.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from device_profiles import FORMATS, NAME_RE, RUNTIMES

from .errors import ManifestError, UnsupportedSchema

SCHEMA_VERSION = "1.0"
# Optional payload member: the converter's reference statistics for drift monitoring (edge_agent.monitor.reference).
# Like every member it is listed with its hash in `files`, so the manifest's signature covers it.
REFERENCE_STATS_FILE = "reference_stats.json"
SUPPORTED_MAJOR = 1

PRECISIONS = ("fp32", "fp16", "int8-static", "int8-dynamic", "int8-mixed", "int8-qat", "int4-weight")
LAYOUTS = ("NCHW", "NHWC", "NC", "ANY")
DTYPES = ("float32", "float16", "int8", "uint8", "int32", "int64", "bool")
COLOR_ORDERS = ("RGB", "BGR", "GRAY")
RESIZE_MODES = ("bilinear", "nearest", "letterbox")
# Which library resizes: "opencv" = cv2.resize INTER_LINEAR (INTER_NEAREST for `nearest`), letterbox padded
# with 114; "pillow" = PIL BILINEAR (antialiased when shrinking) / NEAREST. Their pixels differ, so the
# converter records the one its calibration/eval data went through and the agent uses the same.
RESAMPLERS = ("pillow", "opencv")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class FileEntry:
    """One payload file of the bundle (every member except manifest.json and signature.json)."""

    path: str
    size: int
    sha256: str


@dataclass
class Quantization:
    """Affine parameters of an integer tensor: real = (q - zero_point) * scale."""

    scale: float
    zero_point: int


@dataclass
class TensorSpec:
    """A model input or output as the bundle's runtime sees it."""

    name: str
    dtype: str
    shape: list[int | str]
    layout: str = "ANY"
    source_layout: str | None = None  # layout in the source model, when the bundle transposed it
    quantization: Quantization | None = None


@dataclass
class Preprocess:
    """How the agent turns an image into the model's first input."""

    kind: str = "image"  # image | none
    color: str = "RGB"
    size: list[int] = field(default_factory=list)  # [height, width]
    resize: str = "bilinear"
    resampler: str = "pillow"  # RESAMPLERS; absent in older manifests = pillow (what they were built with)
    scale: float = 1.0 / 255.0
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])


@dataclass
class Postprocess:
    """What the agent does with the outputs: classification (softmax/top-k), detection or none."""

    kind: str = "classification"  # classification | detection | none
    softmax: bool = True
    top_k: int = 5
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SelfTest:
    """Inputs recorded at conversion with the outputs the bundle gave; used by health checks."""

    file: str
    atol: float
    rtol: float = 0.0


@dataclass
class Manifest:
    """A bundle's manifest. Build it, `to_json()` it, sign those bytes."""

    name: str
    version: int
    profile: str
    format: str
    runtime: str
    precision: str
    model_file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    files: list[FileEntry] = field(default_factory=list)
    execution_providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    preprocess: Preprocess | None = None
    postprocess: Postprocess | None = None
    labels: list[str] | None = None
    selftest: SelfTest | None = None
    measurements: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    created_by: str = ""
    schema_version: str = SCHEMA_VERSION

    # --- serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys, fixed separators): the exact bytes that get signed."""
        return (json.dumps(self.to_dict(), sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "Manifest":
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"manifest.json is not valid JSON: {exc}") from exc
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: Any) -> "Manifest":
        """Validate and build; raises ManifestError naming the bad field, UnsupportedSchema."""
        if not isinstance(obj, dict):
            raise ManifestError("manifest.json must hold a JSON object")
        check_schema_version(obj.get("schema_version"))
        v = _Validator(obj)
        manifest = cls(
            schema_version=v.str("schema_version"),
            name=v.str("name", pattern=NAME_RE),
            version=v.int("version", minimum=1),
            profile=v.str("profile"),
            format=v.str("format", choices=FORMATS),
            runtime=v.str("runtime", choices=RUNTIMES),
            precision=v.str("precision", choices=PRECISIONS),
            model_file=v.str("model_file"),
            inputs=[_tensor(t, f"inputs[{i}]") for i, t in enumerate(v.list("inputs", nonempty=True))],
            outputs=[_tensor(t, f"outputs[{i}]") for i, t in enumerate(v.list("outputs", nonempty=True))],
            files=[_file(f, f"files[{i}]") for i, f in enumerate(v.list("files", nonempty=True))],
            execution_providers=[str(p) for p in v.list("execution_providers", nonempty=True)],
            preprocess=_preprocess(obj["preprocess"]) if obj.get("preprocess") is not None else None,
            postprocess=_postprocess(obj["postprocess"]) if obj.get("postprocess") is not None else None,
            labels=[str(x) for x in v.list("labels")] if obj.get("labels") is not None else None,
            selftest=_selftest(obj["selftest"]) if obj.get("selftest") is not None else None,
            measurements=v.dict("measurements", default={}),
            source=v.dict("source", default={}),
            created_by=str(obj.get("created_by", "")),
        )
        listed = {f.path for f in manifest.files}
        if len(listed) != len(manifest.files):
            raise ManifestError("manifest field 'files' lists a path twice")
        if manifest.model_file not in listed:
            raise ManifestError(f"manifest field 'model_file' ({manifest.model_file}) is not listed in 'files'")
        if manifest.selftest and manifest.selftest.file not in listed:
            raise ManifestError(f"manifest field 'selftest.file' ({manifest.selftest.file}) is not listed in 'files'")
        return manifest

    def file_entry(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def check_schema_version(value: Any) -> None:
    """Refuse a manifest whose schema major version this agent does not understand."""
    if not isinstance(value, str) or not re.fullmatch(r"\d+\.\d+", value):
        raise ManifestError(f"manifest field 'schema_version' must look like '1.0', got {value!r}")
    major = int(value.split(".")[0])
    if major != SUPPORTED_MAJOR:
        raise UnsupportedSchema(
            f"bundle schema {value} is not supported by this agent (understands {SUPPORTED_MAJOR}.x): "
            "upgrade edge-agent or rebuild the bundle with a matching converter"
        )


# --- field validation helpers --------------------------------------------------------------


class _Validator:
    def __init__(self, obj: dict[str, Any], where: str = "") -> None:
        self.obj = obj
        self.where = where

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str) -> Any:
        if key not in self.obj:
            raise ManifestError(f"manifest field '{self._name(key)}' is missing")
        return self.obj[key]

    def str(self, key: str, choices=None, pattern=None) -> str:
        value = self.get(key)
        if not isinstance(value, str) or not value:
            raise ManifestError(f"manifest field '{self._name(key)}' must be a non-empty string")
        if choices and value not in choices:
            raise ManifestError(f"manifest field '{self._name(key)}' is {value!r}; expected one of {', '.join(choices)}")
        if pattern and not pattern.match(value):
            raise ManifestError(f"manifest field '{self._name(key)}' has an invalid value {value!r}")
        return value

    def int(self, key: str, minimum: int | None = None) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            raise ManifestError(f"manifest field '{self._name(key)}' must be an integer >= {minimum}")
        return value

    def num(self, key: str, default: float | None = None) -> float:
        if default is not None and key not in self.obj:
            return default
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ManifestError(f"manifest field '{self._name(key)}' must be a number")
        return float(value)

    def list(self, key: str, nonempty: bool = False) -> list:
        value = self.get(key)
        if not isinstance(value, list) or (nonempty and not value):
            raise ManifestError(f"manifest field '{self._name(key)}' must be a {'non-empty ' if nonempty else ''}list")
        return value

    def dict(self, key: str, default: dict | None = None) -> dict:
        if default is not None and self.obj.get(key) is None:
            return dict(default)
        value = self.get(key)
        if not isinstance(value, dict):
            raise ManifestError(f"manifest field '{self._name(key)}' must be an object")
        return value


def _obj(value: Any, where: str) -> _Validator:
    if not isinstance(value, dict):
        raise ManifestError(f"manifest field '{where}' must be an object")
    return _Validator(value, where)


def _tensor(value: Any, where: str) -> TensorSpec:
    v = _obj(value, where)
    shape = v.list("shape")
    if not all((isinstance(d, int) and not isinstance(d, bool) and d >= 0) or isinstance(d, str) for d in shape):
        raise ManifestError(f"manifest field '{where}.shape' must hold non-negative integers or names")
    q = value.get("quantization")
    quant = None
    if q is not None:
        qv = _obj(q, f"{where}.quantization")
        quant = Quantization(scale=qv.num("scale"), zero_point=qv.int("zero_point", minimum=-(2**31)))
    source_layout = value.get("source_layout")
    if source_layout is not None and source_layout not in LAYOUTS:
        raise ManifestError(f"manifest field '{where}.source_layout' must be one of {', '.join(LAYOUTS)}")
    return TensorSpec(
        name=v.str("name"),
        dtype=v.str("dtype", choices=DTYPES),
        shape=list(shape),
        layout=v.str("layout", choices=LAYOUTS),
        source_layout=source_layout,
        quantization=quant,
    )


def _file(value: Any, where: str) -> FileEntry:
    v = _obj(value, where)
    return FileEntry(path=v.str("path"), size=v.int("size", minimum=0), sha256=v.str("sha256", pattern=_SHA_RE))


def _preprocess(value: Any) -> Preprocess:
    v = _obj(value, "preprocess")
    kind = v.str("kind", choices=("image", "none"))
    if kind == "none":
        return Preprocess(kind="none")
    size = v.list("size", nonempty=True)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ManifestError("manifest field 'preprocess.size' must be [height, width] in pixels")
    mean = [float(x) for x in v.list("mean", nonempty=True)]
    std = [float(x) for x in v.list("std", nonempty=True)]
    if any(s == 0 for s in std):
        raise ManifestError("manifest field 'preprocess.std' must not contain 0")
    return Preprocess(
        kind=kind,
        color=v.str("color", choices=COLOR_ORDERS),
        size=list(size),
        resize=v.str("resize", choices=RESIZE_MODES),
        resampler=v.str("resampler", choices=RESAMPLERS) if "resampler" in value else "pillow",
        scale=v.num("scale"),
        mean=mean,
        std=std,
    )


def _postprocess(value: Any) -> Postprocess:
    v = _obj(value, "postprocess")
    return Postprocess(
        kind=v.str("kind", choices=("classification", "detection", "none")),
        softmax=bool(value.get("softmax", True)),
        top_k=v.int("top_k", minimum=1) if "top_k" in value else 5,
        options=v.dict("options", default={}),
    )


def _selftest(value: Any) -> SelfTest:
    v = _obj(value, "selftest")
    return SelfTest(file=v.str("file"), atol=v.num("atol"), rtol=v.num("rtol", default=0.0))
