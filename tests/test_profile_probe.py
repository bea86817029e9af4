"""A user's own device profile, written by copying a shipped one and editing it: what each mistake gets.

Each case ran the real CLIs (`edge-convert profiles show`, `edge-convert convert`, `edge-agent verify/install`)
and found a traceback-free but wrong answer: a value accepted that disables a check, a field silently
ignored, a message that does not say which file or which field.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from converter.cli import main as convert_main
from edge_agent.cli import main as agent_main
from device_profiles import builtin_profile_dir

from .conftest import convert_args
from .device_fixtures import Device, edge_device, sshd  # noqa: F401 - fixtures


def _board(tmp_path: Path, *edits: tuple[str, str], name: str = "rk3588.toml") -> Path:
    """The Raspberry Pi 4 profile copied and edited line by line, as a user adapts it to their board."""
    text = (builtin_profile_dir() / "raspberry-pi-4.toml").read_text().replace('"raspberry-pi-4"', '"rk3588"')
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


def _show(capsys, profile: str | Path) -> tuple[int, list[str]]:
    rc = convert_main(["profiles", "show", str(profile)])
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("edit, field", [
    (("min_agreement = 0.95", "min_agreement = nan"), "accuracy.min_agreement"),
    (("max_top1_drop = 1.0", "max_top1_drop = nan"), "accuracy.max_top1_drop"),
    (("latency_budget_ms = 500", "latency_budget_ms = nan"), "limits.latency_budget_ms"),
    (("max_bundle_mb = 200", "max_bundle_mb = inf"), "limits.max_bundle_mb"),
])
def test_nan_and_inf_budgets_are_refused(tmp_path, capsys, edit, field):
    """TOML's nan passed every range check and then every budget comparison was False: a profile with
    `max_top1_drop = nan` converted and shipped a model the accuracy gate never judged."""
    rc, err = _show(capsys, _board(tmp_path, edit))
    assert rc == 20 and len(err) == 1 and field in err[0] and "finite" in err[0]


@pytest.mark.parametrize("edit, field", [
    (("per_channel = true", "per_chanel = false\nper_channel = true"), "precision.per_chanel"),
    (("threads = 4", "threads = 4\nintra_op_threads = 2"), "runtime.intra_op_threads"),
    (('name = "rk3588"', 'extends = "raspberry-pi-4"\nname = "rk3588"'), "extends"),
])
def test_unknown_fields_are_refused_not_ignored(tmp_path, capsys, edit, field):
    """A misspelt field (`per_chanel = false`) or an invented one (`extends`) loaded without a word, so the
    user believed per-channel was off, or that their profile inherited from another, and it was not."""
    rc, err = _show(capsys, _board(tmp_path, edit))
    assert rc == 20 and len(err) == 1 and f"'{field}' is unknown" in err[0]


def test_a_bad_field_names_the_file_it_came_from(tmp_path, capsys, digits, int8_bundle, monkeypatch):
    """The agent reads its profile from --profile, EDGE_AGENT_PROFILE or the home's `profile` file; a bad field
    said only "profile field 'limits.latency_budget_ms' is missing", not which of those files to open."""
    monkeypatch.delenv("EDGE_AGENT_PROFILE", raising=False)
    board = _board(tmp_path, ("latency_budget_ms = 500", "latency_budget = 500"))
    home = tmp_path / "home"
    home.mkdir()
    (home / "profile").write_text(f"{board}\n")
    rc = agent_main(["--home", str(home), "verify", str(int8_bundle), "--trust", str(digits.pub)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 20 and len(err) == 1 and str(board) in err[0] and "limits.latency_budget" in err[0]


def test_a_folder_named_like_a_builtin_does_not_shadow_it(tmp_path, capsys, monkeypatch):
    """`--profile raspberry-pi-4` run where the user keeps a raspberry-pi-4/ folder of outputs said
    'profile file raspberry-pi-4 does not exist'."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raspberry-pi-4").mkdir()
    assert convert_main(["profiles", "show", "raspberry-pi-4", "--json"]) == 0
    assert '"name": "raspberry-pi-4"' in capsys.readouterr().out


def test_a_folder_given_as_the_profile_is_called_a_folder(tmp_path, capsys):
    """A folder passed as --profile was reported as 'does not exist' (it does: it is a folder)."""
    folder = tmp_path / "boards.toml"
    folder.mkdir()
    rc, err = _show(capsys, folder)
    assert rc == 20 and len(err) == 1 and "is a folder" in err[0] and "does not exist" not in err[0]


def test_tilde_in_the_homes_profile_file_is_expanded(tmp_path, capsys, digits, int8_bundle, monkeypatch):
    """`~/boards/rk3588.toml` written to the home's `profile` file (or `--profile=~/...`, which the shell does not
    expand) was looked up literally: 'profile file ~/boards/rk3588.toml does not exist'."""
    monkeypatch.delenv("EDGE_AGENT_PROFILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "boards").mkdir()
    _board(tmp_path / "boards")
    home = tmp_path / "home"
    home.mkdir()
    (home / "profile").write_text("~/boards/rk3588.toml\n")
    rc = agent_main(["--home", str(home), "verify", str(int8_bundle), "--trust", str(digits.pub)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 17 and len(err) == 1 and "built for profile 'raspberry-pi-4' but this device is 'rk3588'" in err[0]


@pytest.mark.parametrize("edit, field, words", [
    (('execution_providers = ["CPUExecutionProvider"]', 'execution_providers = ["CPUExecutionProvider", "CUDAExecutionProvider"]'),
     "runtime.execution_providers", "must end with CPUExecutionProvider"),
    (('formats = ["tflite", "onnx"]', 'formats = ["onnx", "onnx"]'), "runtime.formats", "onnx more than once"),
])
def test_list_fields_mean_what_they_say(tmp_path, capsys, edit, field, words):
    """CPU listed before CUDA loaded although the message for a missing CPU fallback says it 'must end with'
    it (ORT hands every node to CPU first, so CUDA never ran); a format listed twice was built twice by
    `--format auto`."""
    rc, err = _show(capsys, _board(tmp_path, edit))
    assert rc == 20 and len(err) == 1 and field in err[0] and words in err[0]


def test_install_keeps_a_user_profiles_bundle_size_limit(tmp_path, capsys, digits, int8_bundle, monkeypatch):
    """The install's early size check looked the profile up again by the name inside the file: a user's
    profile file named `raspberry-pi-4` with max_bundle_mb = 0.01 installed a 50 KB bundle (the built-in's
    200 MB applied; a file named `rk3588` had no limit at all)."""
    monkeypatch.delenv("EDGE_AGENT_PROFILE", raising=False)
    board = _board(tmp_path, ("max_bundle_mb = 200", "max_bundle_mb = 0.01"), ('"rk3588"', '"raspberry-pi-4"'))
    rc = agent_main(["--home", str(tmp_path / "home"), "install", str(int8_bundle), "--trust", str(digits.pub),
                     "--profile", str(board)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 52 and "over this profile's max_bundle_mb (0.01 MiB)" in err[-1], err


def test_device_setup_says_it_does_not_copy_a_profile_file(sshd, digits, tmp_path, capsys):  # noqa: F811
    """`edge-device setup --profile ./rk3588.toml` (over real SSH) said "unknown profile 'rk3588': built-in profiles
    are ...; or pass the path of your own profile file" although the user had passed exactly that: setup writes
    only a profile's name on the device. Now it says so, before anything is installed."""
    board = _board(tmp_path)
    dev = Device(sshd, tmp_path / "opt-edgekit", tmp_path / "systemd", {})
    code, out = edge_device(capsys, "setup", *dev.args(), "--unit-dir", str(dev.unit_dir), "--broker",
                            "mqtt://127.0.0.1:1", "--trust", str(digits.pub), "--profile", str(board))
    error = out["devices"][0]["error"]
    assert code == 20 and "built-in profiles only" in error and str(board) in error
    assert not (tmp_path / "opt-edgekit" / "agent").exists()


def test_an_activation_weight_pair_ort_cannot_quantize_is_a_profile_error(tmp_path, capsys, digits):
    """int8 activations with uint8 weights loaded, then the conversion exported, calibrated and failed inside
    ONNX Runtime's quantizer ("doesn't support data format: activation_type=QuantType.QInt8, ..."), exit 1."""
    board = _board(tmp_path, ('activation_type = "uint8"', 'activation_type = "int8"'),
                   ('weight_type = "int8"', 'weight_type = "uint8"'))
    rc = convert_main(convert_args(digits, tmp_path / "x.edgebundle", str(board)))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 20 and len(err) == 1 and "precision.weight_type" in err[0] and str(board) in err[0], err
    assert not (tmp_path / "x.edgebundle").exists()


def test_int4_weight_on_a_tflite_only_profile_is_a_profile_error(tmp_path, capsys, digits):
    """recipe int4-weight with formats = ["tflite"] loaded; `--format auto` then said "no --format auto candidate
    passed the accuracy gate" with the accuracy gate's exit code 30, though nothing had been measured."""
    board = _board(tmp_path, ('recipe = "int8-static"', 'recipe = "int4-weight"'),
                   ('formats = ["tflite", "onnx"]', 'formats = ["tflite"]'))
    rc = convert_main(convert_args(digits, tmp_path / "x.edgebundle", str(board), "--format", "auto"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 20 and len(err) == 1 and "int4-weight" in err[0] and "runtime.formats" in err[0], err


def test_doctor_says_what_the_home_uses_and_what_save_replaced(tmp_path, capsys, monkeypatch):
    """With the home set to the user's own profile file, `edge-agent doctor` named only the detected built-in,
    and `doctor --save` replaced the user's file in the home's `profile` without a word."""
    monkeypatch.delenv("EDGE_AGENT_PROFILE", raising=False)
    board = _board(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    (home / "profile").write_text(f"{board}\n")
    assert agent_main(["--home", str(home), "doctor"]) == 0
    assert f"home:    {home / 'profile'} says {board}" in capsys.readouterr().out
    assert agent_main(["--home", str(home), "doctor", "--save"]) == 0
    out = capsys.readouterr().out
    saved = (home / "profile").read_text().strip()
    assert saved != str(board) and f"saved:   {home / 'profile'} (replaced {board})" in out


def test_an_empty_profile_name_says_so(tmp_path, capsys, digits):
    """`--profile "$BOARD"` with BOARD unset said "profile file . does not exist" (Path("") is the working folder)."""
    rc = convert_main(convert_args(digits, tmp_path / "x.edgebundle", ""))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 20 and len(err) == 1 and "no profile given" in err[0] and "raspberry-pi-4" in err[0], err


@pytest.mark.parametrize("text, words", [
    ("", "the profile is empty"),
    ("# my board, to do\n", "the profile is empty"),
])
def test_an_empty_profile_file_says_it_is_empty(tmp_path, capsys, text, words):
    """An empty (or comments-only) file said "profile field [runtime] is missing or not a table"."""
    path = tmp_path / "rk3588.toml"
    path.write_text(text)
    rc, err = _show(capsys, path)
    assert rc == 20 and len(err) == 1 and words in err[0] and str(path) in err[0]


def test_a_description_that_is_not_text_is_refused(tmp_path, capsys):
    """`description = 5` (or a list) loaded and was shown as "5"."""
    rc, err = _show(capsys, _board(tmp_path, ('description = "Raspberry Pi 4 Model B, 4x Cortex-A72, 2-8 GB RAM, CPU only"',
                                                   "description = 5")))
    assert rc == 20 and len(err) == 1 and "'description' must be a string" in err[0]


def test_a_relative_profile_file_in_the_home_is_the_homes(tmp_path, capsys, digits, int8_bundle, monkeypatch):
    """`rk3588.toml` in the home's `profile` file (the board file copied beside it) was looked up in the folder
    the agent ran from: the service, started from / by systemd, said 'profile file rk3588.toml does not exist'."""
    monkeypatch.delenv("EDGE_AGENT_PROFILE", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    _board(home)
    (home / "profile").write_text("rk3588.toml\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    rc = agent_main(["--home", str(home), "verify", str(int8_bundle), "--trust", str(digits.pub)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 17 and len(err) == 1 and "this device is 'rk3588'" in err[0], err


@pytest.mark.parametrize("name", ["Rockchip RK3588", "rk3588/evb", "../rk3588"])
def test_a_profile_name_that_cannot_be_a_path_segment_is_refused(tmp_path, capsys, name):
    """Any string loaded as the name and went into the bundle's manifest: the fleet's `--source-url
    https://cdn/{profile}/{name}.edgebundle` then made a URL with a space, an extra folder or a `..` in it."""
    rc, err = _show(capsys, _board(tmp_path, ('name = "rk3588"', f'name = "{name}"')))
    assert rc == 20 and len(err) == 1 and "profile field 'name'" in err[0] and "letters, digits" in err[0]


def test_install_does_not_offer_an_override_it_lacks(tmp_path, capsys, digits, int8_bundle, monkeypatch):
    """A bundle for another profile made `edge-agent install` (and `edge-device flash`, which runs it) say
    "override with --allow-profile-mismatch", an option install refuses as unrecognized."""
    monkeypatch.delenv("EDGE_AGENT_PROFILE", raising=False)
    rc = agent_main(["--home", str(tmp_path / "home"), "install", str(int8_bundle), "--trust", str(digits.pub),
                     "--profile", str(_board(tmp_path))])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 17 and "built for profile 'raspberry-pi-4' but this device is 'rk3588'" in err[-1]
    assert "install and updates have no override" in err[-1]
