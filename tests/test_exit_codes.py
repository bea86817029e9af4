"""One table of exit codes for every CLI: unique, used by every error class, listed by each --help,
documented in docs/exit-codes.md, and every failure is one line with its code."""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path

import pytest

import converter
import edge_agent
import edge_fleet
from edge_agent import errors
from edge_agent.errors import ALL, EXIT_CODES, EdgekitError

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("converter.tflite", "converter.qat")  # import TensorFlow/torch quantization: not needed to list errors


def _import_all() -> None:
    for pkg in (edge_agent, converter, edge_fleet):
        for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if not mod.name.startswith(HEAVY) and not mod.name.endswith("__main__"):
                importlib.import_module(mod.name)


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def test_codes_and_names_are_unique_and_each_belongs_to_a_cli():
    codes = [e.code for e in EXIT_CODES]
    names = [e.name for e in EXIT_CODES]
    assert len(codes) == len(set(codes)) and len(names) == len(set(names))
    assert all(e.clis and set(e.clis) <= set(ALL) and e.meaning for e in EXIT_CODES)


def test_every_error_class_of_every_package_uses_a_registered_code():
    _import_all()
    classes = _subclasses(EdgekitError)
    names = {c.__name__ for c in classes}
    # one root per CLI and the shared bundle errors all hang from EdgekitError
    assert {"AgentError", "ConversionError", "FleetError", "BundleError", "DetectionConfigError", "ManifestError",
            "HealthCheckFailed", "SourceLost", "GateFailed", "BrokerStartError"} <= names
    for cls in classes:
        assert cls.exit_code == errors.exit_code(cls.code_name), cls
    # the defect the registry removed: two unrelated errors sharing one code
    from edge_agent.bundle import ManifestError
    from edge_agent.pipeline.detection import DetectionConfigError

    assert DetectionConfigError.exit_code != ManifestError.exit_code
    with pytest.raises(KeyError):
        type("Unregistered", (EdgekitError,), {"code_name": "no-such-code"})


def test_each_help_lists_exactly_its_codes():
    from converter.cli import build_parser as convert_parser
    from edge_agent.cli import build_parser as agent_parser
    from edge_fleet.cli import build_parser as fleet_parser

    for cli, parser in (("edge-agent", agent_parser()), ("edge-convert", convert_parser()),
                        ("edge-fleet", fleet_parser())):
        epilog = parser.epilog or ""
        listed = {int(line.split()[0]) for line in epilog.split("exit codes:")[1].splitlines() if line.strip()}
        assert listed == {e.code for e in EXIT_CODES if cli in e.clis}, cli


def test_docs_page_is_the_table():
    page = (REPO / "docs" / "exit-codes.md").read_text()
    assert errors.markdown_table() in page


def test_a_failure_is_one_line_and_its_code_with_a_json_object(tmp_path, capsys):
    from edge_agent.cli import main

    bad = tmp_path / "x.edgebundle"
    bad.write_bytes(b"not a tar at all" * 64)
    rc = main(["--home", str(tmp_path / "home"), "verify", str(bad), "--trust", str(bad), "--json"])
    out, err = capsys.readouterr()
    assert rc in (errors.exit_code("corrupt"), errors.exit_code("signature"))
    assert len(err.strip().splitlines()) == 1 and err.startswith("edge-agent: error: ")
    record = json.loads(out)
    assert record["ok"] is False and record["exit_code"] == rc and record["message"] in err


def test_an_unexpected_error_is_one_line_code_1_and_no_traceback(capsys):
    def body() -> int:
        raise ZeroDivisionError("division by zero")

    assert errors.run_main("edge-x", body) == 1
    err = capsys.readouterr().err
    assert err == "edge-x: error: division by zero\n"


def test_a_profile_error_is_code_20_though_device_profiles_imports_nothing_of_ours(capsys):
    from device_profiles import load_profile

    assert errors.run_main("edge-x", lambda: bool(load_profile("no-such-board"))) == 20


def test_output_into_a_pipe_its_reader_closed_stops_quietly_with_141(tmp_path):
    """`edge-fleet status | head`: head exits after a line; the CLI printed `error: [Errno 32] Broken pipe` and
    exited 1. Now it stops without a word, with 141 (what a shell reports for git ended by SIGPIPE): not 0, since the
    command did not finish (a halted `deploy --wait` must not read as success). Buffered stdout, as in a terminal
    session: the short output is only written at the end."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command prints a byte
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    try:
        run = subprocess.run([sys.executable, "-m", "edge_fleet.cli", "audit", "--home", str(tmp_path / "fleet")],
                             stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
                             env={**env, "PYTHONPATH": str(REPO)})
    finally:
        os.close(write_end)
    assert (run.returncode, run.stderr) == (errors.exit_code("stdout-closed"), "")



@pytest.mark.parametrize("argv", [["deploy", "digits:1", "--group", "g", "--stages", "abc"],
                                  ["deploy", "digits:1", "--group", "g", "--max-failures", "x"],
                                  ["publish", "/nonexistent.edgebundle"],  # no trusted key to check it with
                                  ["devices", "login", "bad/id"], ["devices", "group", "bad/id", "yard"]])
def test_fleet_option_values_it_refuses_are_usage_errors(argv, tmp_path, capsys):
    """They exited 1 ('other error', which the table calls a bug to report) where argparse's own refusals exit 2."""
    from edge_fleet.cli import main as fleet_main

    assert fleet_main([*argv, "--home", str(tmp_path)]) == errors.exit_code("usage")
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
