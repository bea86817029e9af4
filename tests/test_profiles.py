"""Device profiles: built-ins load and validate; a missing or wrong field is refused by name."""

from __future__ import annotations

import tomllib

import pytest

from converter.cli import main as convert_main
from device_profiles import ProfileError, builtin_profile_dir, list_profiles, load_profile

EXPECTED = {"raspberry-pi-4", "raspberry-pi-5", "raspberry-pi-zero-2w", "jetson-nano", "jetson-orin-nano", "x86-64-cpu"}


def test_builtin_profiles_all_load():
    assert EXPECTED <= set(list_profiles())
    for name in EXPECTED:
        p = load_profile(name)
        assert p.name == name
        assert p.runtime.execution_providers[-1] == "CPUExecutionProvider"


def test_recipes_follow_the_hardware():
    pi = load_profile("raspberry-pi-4")
    assert pi.precision.recipe == "int8-static" and pi.precision.per_channel and pi.hardware.arch == "aarch64"
    jetson = load_profile("jetson-orin-nano")
    assert jetson.precision.recipe == "fp16" and jetson.hardware.accelerator == "cuda"
    assert list(jetson.runtime.execution_providers) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def _user_profile(tmp_path, mutate):
    data = tomllib.loads((builtin_profile_dir() / "raspberry-pi-4.toml").read_text())
    mutate(data)
    lines = [f'name = "{data["name"]}"'] if "name" in data else []
    for section, values in data.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            for k, v in values.items():
                lines.append(f"{k} = " + (repr(v).replace("'", '"').replace("True", "true").replace("False", "false")))
    path = tmp_path / "mine.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_user_profile_by_path(tmp_path):
    path = _user_profile(tmp_path, lambda d: d.update(name="my-board"))
    assert load_profile(path).name == "my-board"
    assert load_profile(str(path)).source == str(path)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d["precision"].pop("recipe"), "precision.recipe"),
        (lambda d: d["precision"].update(recipe="int3"), "precision.recipe"),
        (lambda d: d["runtime"].update(threads="four"), "runtime.threads"),
        (lambda d: d["hardware"].update(arch="sparc"), "hardware.arch"),
        (lambda d: d["accuracy"].update(min_agreement=1.5), "accuracy.min_agreement"),
        (lambda d: d["runtime"].update(execution_providers=["CUDAExecutionProvider"]), "runtime.execution_providers"),
        (lambda d: d.pop("limits"), "limits"),
        (lambda d: d.pop("name"), "name"),
    ],
)
def test_bad_profile_names_the_field(tmp_path, mutate, field):
    path = _user_profile(tmp_path, mutate)
    with pytest.raises(ProfileError, match=field.replace(".", r"\.")):
        load_profile(path)


def test_unknown_profile_lists_builtins():
    with pytest.raises(ProfileError, match="raspberry-pi-4"):
        load_profile("raspberry-pi-9")


def test_convert_refuses_bad_profile_with_exit_code(tmp_path, digits, capsys):
    path = _user_profile(tmp_path, lambda d: d["precision"].pop("calibration_method"))
    rc = convert_main(["convert", str(digits.onnx), "--profile", str(path), "--key", str(digits.key),
                       "--out", str(tmp_path / "x.edgebundle")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 20 and len(err) == 1 and "precision.calibration_method" in err[0]


def test_profiles_cli_lists_and_shows(capsys):
    import json

    assert convert_main(["profiles", "list", "--json"]) == 0
    names = {p["name"] for p in json.loads(capsys.readouterr().out)}
    assert EXPECTED <= names
    assert convert_main(["profiles", "show", "jetson-nano", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"]["recipe"] == "fp16"


def test_older_profile_files_with_runtimes_and_fallback_still_load(tmp_path):
    """`runtime.runtimes` (always the formats' runtimes) and `precision.fallback` (never applied) were dropped;
    a user's profile written before that still loads."""
    def old_style(d):
        d["runtime"]["runtimes"] = ["litert", "onnxruntime"]
        d["precision"]["fallback"] = "fp32"

    p = load_profile(_user_profile(tmp_path, old_style))
    assert p.runtime.formats == ("tflite", "onnx") and not hasattr(p.runtime, "runtimes")


def test_format_and_runtime_names_come_from_one_place():
    import converter.recipes
    import edge_agent.bundle.manifest as manifest
    from device_profiles import FORMATS, RUNTIME_FOR_FORMAT, RUNTIMES
    from edge_agent.runtimes import _BACKENDS

    assert manifest.FORMATS is FORMATS and manifest.RUNTIMES is RUNTIMES and converter.recipes.FORMATS is FORMATS
    assert set(_BACKENDS) == set(RUNTIMES) == set(RUNTIME_FOR_FORMAT.values())
