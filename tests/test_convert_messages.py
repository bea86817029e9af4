"""Issue 14, defect 6: what a long conversion tells a CI log, and the warning when int8 is slower than float.

Both run the real converter on the digits CNN (tests/conftest.py). Timing is never asserted: the progress
threshold is set to 0 s, and the slower-than-float case feeds the pass a measured-slower converted model by
stretching its timed samples (the decision under test is the pass's, not the host's speed)."""

from __future__ import annotations

import json
import re

from converter import cli as convert_cli
from converter.passes import host_benchmark

from .conftest import convert_args


def test_long_conversion_prints_one_progress_line_per_pass_without_a_tty(digits, tmp_path, capsys, monkeypatch):
    """A 3-minute conversion printed nothing in a non-TTY log (CI); now each pass is one plain line on
    stderr once the run is past PLAIN_PROGRESS_AFTER_S (0 here, as if the conversion were long)."""
    monkeypatch.setattr(convert_cli, "PLAIN_PROGRESS_AFTER_S", 0.0)
    args = [a for a in convert_args(digits, tmp_path / "d.edgebundle") if a != "--quiet"]
    assert convert_cli.main(args) == 0
    err = capsys.readouterr().err  # capsys: stderr is not a TTY, as in CI
    lines = re.findall(r"^edge-convert: \[(\d+)/(\d+)\] ([\w-]+) \(\d+ s so far\)$", err, re.M)
    names = [n for _, _, n in lines]
    assert {"import", "quantize", "accuracy-gate", "package"} <= set(names), err
    assert [int(i) for i, _, _ in lines] == list(range(1, len(lines) + 1))  # numbered in order, none repeated
    assert "\r" not in err and "\x1b[" not in err  # no bar redraws in a log
    # --json keeps stderr free of progress (a script reads stdout, a log stays clean)
    assert convert_cli.main([*args, "--json", "--out", str(tmp_path / "e.edgebundle")]) == 0
    assert "edge-convert: [" not in capsys.readouterr().err


def test_the_long_compensation_step_prints_a_line_inside_the_quantize_pass(digits, tmp_path, capsys, monkeypatch):
    """The quantize pass of a YOLOv8n int8 conversion ran 13 minutes after its one progress line (almost all of it
    the layer-by-layer compensation fit); the fit now announces itself with a line of its own, numbered as its pass."""
    monkeypatch.setattr(convert_cli, "PLAIN_PROGRESS_AFTER_S", 0.0)
    args = [a for a in convert_args(digits, tmp_path / "d.edgebundle", "raspberry-pi-4", "--compensation", "bias")
            if a != "--quiet"]
    assert convert_cli.main(args) == 0
    err = capsys.readouterr().err
    quantize = re.findall(r"^edge-convert: \[(\d+)/\d+\] quantize \(", err, re.M)
    step = re.findall(r"^edge-convert: \[(\d+)/\d+\] quantize: compensation bias: fitting .+ on \d+ samples", err, re.M)
    assert quantize and step == quantize, err


def test_int8_slower_than_float_is_written_with_a_warning(digits, tmp_path, capsys, caplog, monkeypatch):
    """An int8 bundle slower than float was written silently; now the report, the log and the summary say so."""
    real = host_benchmark.time_runs
    calls: list[int] = []

    def converted_three_times_slower(run, runs, warmup, progress=None):
        first, samples = real(run, runs, warmup, progress)
        calls.append(1)
        return first, samples if len(calls) == 1 else [3.0 * s + 1.0 for s in samples]  # 1st: float, 2nd: int8

    monkeypatch.setattr(host_benchmark, "time_runs", converted_three_times_slower)
    out = tmp_path / "slow.edgebundle"
    assert convert_cli.main([a for a in convert_args(digits, out) if a != "--quiet"]) == 0
    text = capsys.readouterr().out
    report = json.loads((tmp_path / "slow.edgebundle.report.json").read_text())
    lat = report["measurements"]["host_latency"]
    assert report["precision"].startswith("int8") and lat["speedup_vs_float"] < 1
    assert "slower than float" in lat["warning"] and "--quantize-ops weighted" in lat["warning"]
    assert "slower than float" in caplog.text and "slower than float" in text


def test_speedup_and_slower_warning_follow_the_medians_the_summary_prints(digits, tmp_path, capsys, monkeypatch):
    """The summary printed 'float p50 0.040 ms, converted p50 0.079 ms (0.175x)' and 'p50 0.015 ms vs 0.018 ms
    (2.524x)': the ratio came from the means, which one stall moves. A converted model twice as fast on every run
    but one (a 1 s stall) is now reported faster, without the slower-than-float warning."""
    real = host_benchmark.time_runs
    calls: list[int] = []

    def converted_faster_but_one_stall(run, runs, warmup, progress=None):
        first, samples = real(run, runs, warmup, progress)
        calls.append(1)
        if len(calls) == 1:
            return first, [1.0] * len(samples)  # float: 1 ms a run
        return first, [0.5] * (len(samples) - 1) + [1000.0]  # converted: 0.5 ms, one stall

    monkeypatch.setattr(host_benchmark, "time_runs", converted_faster_but_one_stall)
    out = tmp_path / "fast.edgebundle"
    assert convert_cli.main([a for a in convert_args(digits, out) if a != "--quiet"]) == 0
    lat = json.loads((tmp_path / "fast.edgebundle.report.json").read_text())["measurements"]["host_latency"]
    assert lat["speedup_vs_float"] == 2.0 and "warning" not in lat
    assert "(2.0x)" in capsys.readouterr().out


def test_the_slower_than_float_advice_names_options_that_act_on_the_build():
    """A TFLite or int8-dynamic bundle slower than float was told to try --quantize-ops weighted and fewer
    --max-float-layers, options of the ONNX int8-static path only (accepted and ignored elsewhere)."""
    onnx_static = host_benchmark.slower_warning("int8-static", 1.0, 2.0, "onnx")
    assert "--quantize-ops weighted" in onnx_static
    for precision, fmt in (("int8-static", "tflite"), ("int8-mixed", "tflite"), ("int8-dynamic", "onnx")):
        advice = host_benchmark.slower_warning(precision, 1.0, 2.0, fmt)
        assert "--quantize-ops" not in advice and "--max-float-layers" not in advice and "--precision" in advice


def test_keygen_over_an_existing_key_pair_is_a_usage_error_and_keeps_it(tmp_path, capsys):
    """It exited 1 ('other error'); the key pair is kept, and --force replaces it."""
    assert convert_cli.main(["keygen", "--out", str(tmp_path)]) == 0
    before = (tmp_path / "signing.key").read_bytes()
    assert convert_cli.main(["keygen", "--out", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err and (tmp_path / "signing.key").read_bytes() == before
    assert convert_cli.main(["keygen", "--out", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "signing.key").read_bytes() != before
