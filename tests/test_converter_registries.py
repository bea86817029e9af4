"""The converter's registries are consistent: exit codes, passes by name, recipes, pass options and flags."""

from __future__ import annotations

import argparse

import pytest

from converter import errors
from edge_agent.errors import EXIT_CODES, exit_code
from converter.cli import build_parser, main
from converter.options import ConvertOptions
from converter.passes import PASSES, declared_options
from converter.pipeline import convert
from converter.recipes import GATE, RECIPES, shared_prefix, split_for_candidates


def test_every_converter_error_uses_a_registered_code_listed_by_help(capsys):
    classes, todo = [], [errors.ConversionError]
    while todo:
        cls = todo.pop()
        classes.append(cls)
        todo.extend(cls.__subclasses__())
    assert {c.__name__ for c in classes} >= {"UsageError", "ImportFailed", "DataError", "GateFailed", "BundleTooLarge"}
    assert all(c.exit_code == exit_code(c.code_name) for c in classes)
    # --help's epilog is generated from the shared registry: every edge-convert code with its meaning
    with pytest.raises(SystemExit):
        main(["--help"])
    epilog = capsys.readouterr().out.split("exit codes:")[1]
    for e in EXIT_CODES:
        if "edge-convert" in e.clis:
            assert f"{e.code:>3}  {e.meaning}" in epilog


def test_recipes_name_registered_passes_and_share_import_cleanup_and_fold_input():
    for fmt, recipe in RECIPES.items():
        assert all(name in PASSES for name in recipe), fmt
        assert recipe[-1] == "package" and recipe.count(GATE) == 1
    assert shared_prefix() == ("import", "cleanup", "fold-input")  # both formats quantize the same grey-level model
    build, finish = split_for_candidates("tflite", shared_prefix())
    assert build == ("tflite-convert", "tflite-mixed-precision", GATE) and finish == ("host-benchmark", "selftest", "reference-stats", "package")


def test_every_declared_pass_option_has_one_flag_and_a_description():
    parser = build_parser()
    convert_parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["convert"]
    flags = {s: a.dest for a in convert_parser._actions for s in a.option_strings}
    for name, (option, readers) in declared_options().items():
        assert option.description and readers
        if option.cli_flag(name) is not None:
            assert flags[option.cli_flag(name)] == name
    # both mixed-precision passes read one --sensitivity, declared once
    assert declared_options()["sensitivity"][1] == ["mixed-precision", "tflite-mixed-precision"]


def test_unknown_or_invalid_pass_options_are_usage_errors(digits, tmp_path):
    base = dict(source=str(digits.onnx), profile="raspberry-pi-4", out=tmp_path / "x.edgebundle", key=digits.key)
    with pytest.raises(errors.UsageError, match="no pass has an option 'sensitivty'"):
        convert(ConvertOptions(**base, pass_options={"sensitivty": "off"}))
    with pytest.raises(errors.UsageError, match="unknown calibration method"):
        convert(ConvertOptions(**base, pass_options={"calibration_method": "median"}))
    assert not (tmp_path / "x.edgebundle").exists()


@pytest.mark.parametrize("fmt, warned", [("tflite", ["--equalization", "--quantize-ops"]), ("onnx", [])])
def test_options_the_chosen_recipe_does_not_read_are_named_before_any_work(fmt, warned, digits, tmp_path, capsys,
                                                                           caplog):
    """--equalization and --quantize-ops act on the ONNX quantizer only: a TFLite conversion took them and said
    nothing. The warning comes before the key is even read (here: a missing key ends the run right after it)."""
    code = main(["convert", str(digits.onnx), "--profile", "raspberry-pi-4", "--format", fmt, "--key",
                 str(tmp_path / "missing.pem"), "--out", str(tmp_path / "x.edgebundle"),
                 "--equalization", "on", "--quantize-ops", "all", "--calibration-method", "minmax"])
    err = capsys.readouterr().err
    assert code != 0 and "missing.pem" in err
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "does nothing in a" in r.getMessage()]
    assert sorted(m.split()[0] for m in said) == warned, said
    assert all(f"does nothing in a {fmt} conversion (read by the quantize pass" in m for m in said)
