"""The search's decisions (issue 15): the speed floor decided on two timings, and recipe choices kept only
when a paired test on the same inputs says they are better. Timings come from injected functions, never a clock."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from converter.accuracy.budget import Budget
from converter.accuracy.mixed_precision import SearchSettings, search_mixed_precision
from converter.accuracy.paired import sign_test_p
from converter.accuracy.sensitivity import LayerBinding
from converter.accuracy.speed_floor import enforce_floor
from converter.data import Dataset
from converter.errors import GateFailed

LAYERS = ["l0", "l1", "l2", "l3"]
FP32 = "fp32"  # the float model as the search's latency function sees it


class Agreement:
    """A fake evaluator: a model is the tuple of layers it keeps in float; l0 fixes everything."""

    task = "classification"
    float_model = FP32

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def on(self, data: Dataset) -> "Agreement":
        return Agreement(data)

    def __call__(self, model: tuple[str, ...]) -> dict:
        a = 1.0 if "l0" in model else 0.80
        return {"agreement": a, "error": 1 - a, "metric": "top1_agreement"}


def _search(int8_timings: list[float], bound: list[int]):
    """Search with fp32 timed at 2.0 ms (floor 2.0 / 1.3 = 1.54 ms) and plain int8 at `int8_timings`, in turn."""
    timings = list(int8_timings)

    def latency(model) -> float:
        if model == FP32:
            return 2.0
        if model == ():
            return timings.pop(0) if timings else 1.0
        return 1.2  # a model with a layer in float: above the floor

    def bind(data: Dataset) -> LayerBinding:
        bound.append(1)
        return LayerBinding(list(LAYERS), lambda keep: tuple(keep))

    settings = SearchSettings(max_float_layers=None, min_speedup=1.3, sensitivity="auto", sensitivity_samples=64,
                              sensitivity_candidates=16)
    return search_mixed_precision((), Agreement(Dataset({"x": np.zeros((60, 1), np.float32)})),
                                  Budget(0.95, 100.0, 0.0), settings, bind, latency)


def test_int8_below_the_speed_floor_twice_writes_nothing_and_offers_fp16_first():
    bound: list[int] = []
    out = _search([1.8, 1.7], bound)  # both timings slower than the 1.54 ms floor: nothing to spend
    assert out.below_floor and out.model is None and out.mixed is None and not bound  # no sensitivity, no walk
    floor = out.entry["speed_floor"]
    assert floor["fp32_ms"] == [2.0, 2.0] and floor["int8_ms"] == [1.8, 1.7] and floor["below"]
    measurements: dict = {}
    with pytest.raises(GateFailed) as err:
        enforce_floor(out.entry, measurements, ("convert", "m.onnx", "--out", "m.edgebundle"), False, "int8-static")
    line = str(err.value)
    assert "\n" not in line and "1.18x fp32" in line and "below --min-speedup 1.3 in both timings" in line
    assert "agreement 0.8000" in line and "nothing written" in line
    fp16 = line.index("edge-convert convert m.onnx --out m.edgebundle --precision fp16")
    no_floor = line.index("edge-convert convert m.onnx --out m.edgebundle --min-speedup 0")
    force = line.index("edge-convert convert m.onnx --out m.edgebundle --force")
    assert fp16 < no_floor < force
    assert measurements["mixed_precision"]["speed_floor"]["below"]
    # --force: plain int8 is kept (the gate then writes it as is), nothing raised
    enforce_floor(out.entry, {}, (), True, "int8-static")


def test_one_slow_int8_timing_is_a_spike_and_the_walk_goes_on():
    bound: list[int] = []
    out = _search([9.0, 1.0], bound)  # one load spike; the fastest of two is above the floor
    assert not out.below_floor and bound
    assert out.entry["speed_floor"]["spike"] and not out.entry["speed_floor"]["below"]
    assert out.mixed["speed_floor"]["int8_ms"] == [9.0, 1.0]  # both timings in the report
    assert out.mixed["passed"] and out.mixed["float_layers"] == ["l0"] and out.model == ("l0",)
    assert out.mixed["min_speedup"] == 1.3 and out.mixed["fp32_latency_ms"] == 2.0  # the floor stands
    enforce_floor(out.entry, {}, (), False, "int8-static")  # nothing to refuse


def _slow_int8_conversion(tmp_path, monkeypatch, profile: str, *extra: str) -> tuple[int, Path, list[Path]]:
    """A real int8 conversion that misses its budget, fp32 timed at 1 ms and every int8 model at 3 ms by an
    injected probe (no clock)."""
    from converter.cli import main
    from converter.passes.context import ConversionContext
    from edge_agent.bundle import generate_keypair
    from tests.test_accuracy_int8 import _outlier_model

    key = generate_keypair(tmp_path / "keys")[0]
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", x=rng.normal(0, 1, (32, 3, 16, 16)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", x=rng.normal(0, 1, (60, 3, 16, 16)).astype(np.float32))
    model = _outlier_model(tmp_path / "outlier.onnx")
    timed: list[Path] = []

    def probe(self, runs=None):
        return lambda path: (timed.append(path), 1.0 if path == timed[0] else 3.0)[1]  # the first timed is fp32

    monkeypatch.setattr(ConversionContext, "search_latency_probe", probe)
    out = tmp_path / "slow.edgebundle"
    args = ["convert", str(model), "--profile", profile, "--calibration", str(tmp_path / "calib.npz"),
            "--eval", str(tmp_path / "eval.npz"), "--key", str(key), "--out", str(out), "--bench-runs", "3",
            "--accuracy-budget", "agreement:0.95", "--equalization", "off", "--compensation", "none", *extra]
    return main(args), out, timed


def _profiles() -> tuple[str, str]:
    """(a profile of this host's architecture, one of another): the floor's default depends on which."""
    from converter.accuracy.speed_floor import host_arch

    return ("raspberry-pi-4", "x86-64-cpu") if host_arch() == "aarch64" else ("x86-64-cpu", "raspberry-pi-4")


def test_convert_below_the_speed_floor_exits_30_with_the_fp16_command_first(tmp_path, capsys, monkeypatch):
    """End to end on a real int8 conversion for a profile of this host's architecture (the floor's default)."""
    code, out, timed = _slow_int8_conversion(tmp_path, monkeypatch, _profiles()[0])
    assert code == 30 and not out.exists()
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("edge-convert: error:")]
    assert len(err) == 1 and "below --min-speedup 1.3 in both timings" in err[0]
    fp16, no_floor, force = err[0].split(" ; ")  # the fp16 command first, then the search without a floor, then --force
    assert fp16.endswith("--precision fp16") and no_floor.endswith("--min-speedup 0") and force.endswith("--force")
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["measurements"]["mixed_precision"]["speed_floor"]["int8_ms"] == [3.0, 3.0]
    assert len(timed) == 4  # fp32, int8, fp32, int8: no layer was tried


def test_cross_architecture_conversion_is_not_refused_on_host_timings(tmp_path, capsys, monkeypatch):
    """Converting for a Pi on an x86 host (or the reverse): the host's int8 timings do not stand for the device's
    (MobileNetV2 int8 1.20x fp32 on an AVX2 EPYC, 1.6-2.2x with VNNI), so by default no floor refuses or ends the
    search; the report says why. An explicit --min-speedup still enforces the host's timings."""
    from converter.accuracy.speed_floor import resolve_min_speedup

    assert resolve_min_speedup(None, "aarch64", "AMD64") == (0.0, resolve_min_speedup(None, "aarch64", "x86_64")[1])
    assert resolve_min_speedup(None, "x86_64", "x86_64") == (1.3, None)
    assert resolve_min_speedup(None, "aarch64", "arm64") == (1.3, None)
    assert resolve_min_speedup(2.0, "aarch64", "x86_64") == (2.0, None)
    cross = _profiles()[1]
    code, out, timed = _slow_int8_conversion(tmp_path / "default", monkeypatch, cross, "--force")
    assert code == 0 and out.exists(), capsys.readouterr().err
    report = json.loads(Path(str(out) + ".report.json").read_text())
    floor = report["measurements"]["mixed_precision"]["speed_floor"]
    assert floor["min_speedup"] == 0 and floor["note"].startswith("not enforced") and "int8_ms" not in floor
    assert timed and len(set(timed)) == len(timed)  # each step of the walk timed once; no floor's double timings
    code, out, _ = _slow_int8_conversion(tmp_path / "explicit", monkeypatch, cross, "--min-speedup", "1.3")
    assert code == 30 and not out.exists()


# --- paired significance of recipe choices -------------------------------------------------------------------


def test_sign_test_counts_only_discordant_inputs_and_matches_the_documented_minimum_wins():
    from converter.accuracy.paired import ALPHA, paired_test

    assert sign_test_p(4, 0) == 1 / 16 and sign_test_p(3, 0) == 1 / 8 and sign_test_p(0, 0) == 1.0
    assert sign_test_p(5, 1) == pytest.approx(7 / 64) and sign_test_p(6, 1) == pytest.approx(8 / 128)
    # sequences count timesteps: thousands of discordant units (2.0 ** 3000 overflowed a float)
    assert sign_test_p(1550, 1450) == pytest.approx(0.035334522, rel=1e-6) and sign_test_p(1500, 1500) > 0.5
    fewest = {n: min(w for w in range(n + 1) if sign_test_p(w, n - w) <= ALPHA) for n in (4, 7, 9, 12, 14, 17, 22)}
    assert fewest == {4: 4, 7: 6, 9: 7, 12: 9, 14: 10, 17: 12, 22: 15}  # the table in converter/accuracy/paired.py
    simple = np.array([True] * 90 + [False] * 10)
    three_more = simple.copy()
    three_more[90:93] = True  # agreement 0.93 vs 0.90: "higher", but 3 of 3 coin flips
    t = paired_test(simple, three_more)
    assert (t["wins"], t["losses"], t["p_value"], t["better"]) == (3, 0, 0.125, False)
    eight_two = simple.copy()
    eight_two[90:98], eight_two[:2] = True, False  # +6 net, 10 discordant: p = 56/1024
    t = paired_test(simple, eight_two)
    assert (t["wins"], t["losses"], t["better"]) == (8, 2, True) and t["p_value"] == round(56 / 1024, 4)
    # the same +3 net carried by more swaps is no gain at all: 10 wins, 7 losses
    churn = simple.copy()
    churn[90:100], churn[3:10] = True, False
    t = paired_test(simple, churn)
    assert t["wins"] == 10 and t["losses"] == 7 and not t["better"]


def _score(hits: np.ndarray):
    from converter.accuracy.paired import Score

    s = Score(agreement=float(hits.mean()), error=1 - float(hits.mean()), metric="top1_agreement")
    s.hits = hits
    return s


def test_calibration_methods_carry_a_paired_test_against_the_first():
    """Calibration methods cost the same at run time (no simpler recipe to fall back to): the best agreement is
    kept and each row says whether its lead over the first method is more than coin flips."""
    from converter.accuracy.calibration_choice import select_method

    base = np.array([True] * 80 + [False] * 20)
    a_little = base.copy()
    a_little[80:82] = True  # +2 samples
    clearly = base.copy()
    clearly[80:90] = True  # +10 samples
    runs = {"minmax": base, "entropy": a_little, "percentile:99.9": clearly}
    sel = select_method(["minmax", "entropy", "percentile:99.9"], lambda m: m, lambda m: _score(runs[m]))
    assert sel.method == "percentile:99.9" and "vs_minmax" not in sel.table[0]
    little, clear = sel.table[1]["vs_minmax"], sel.table[2]["vs_minmax"]
    assert (little["wins"], little["losses"], little["p_value"], little["better"]) == (2, 0, 0.25, False)
    assert (clear["wins"], clear["losses"], clear["better"]) == (10, 0, True)
    json.dumps(sel.table)  # the per-input hits stay out of the report


def _held_out_search(fixed_odd: set[int], min_agreement: float):
    """60 samples x = 0..59; plain int8 misses every x % 5 == 0. Layer l0 fixes every even miss (the search half)
    and the odd ones in `fixed_odd` (the held-out half); other layers change nothing."""

    class Hits:
        task = "classification"
        float_model = FP32

        def __init__(self, data: Dataset) -> None:
            self.data = data

        def on(self, data: Dataset) -> "Hits":
            return Hits(data)

        def __call__(self, model: tuple[str, ...]):
            x = self.data.inputs["x"][:, 0].astype(int)
            fixed = (x % 2 == 0) | np.isin(x, sorted(fixed_odd)) if "l0" in model else np.zeros(len(x), bool)
            return _score((x % 5 != 0) | fixed)

    settings = SearchSettings(max_float_layers=1, min_speedup=0, sensitivity="auto", sensitivity_samples=64,
                              sensitivity_candidates=16)
    data = Dataset({"x": np.arange(60, dtype=np.float32)[:, None]})
    return search_mixed_precision((), Hits(data), Budget(min_agreement, 100.0, 0.0), settings,
                                  lambda d: LayerBinding(list(LAYERS), lambda keep: tuple(keep)), None)


def test_float_layers_kept_only_when_they_beat_plain_int8_on_the_held_out_half():
    # +2 of 30 held-out samples (2 wins, 0 losses: p = 0.25): the search half's +6 was fitting, plain int8 stays
    out = _held_out_search({5, 15}, 0.99)
    mixed = out.mixed
    assert out.model is None and mixed["float_layers"] == [] and mixed["best_float_layers"] == ["l0"]
    assert mixed["paired_test"]["wins"] == 2 and mixed["paired_test"]["p_value"] == 0.25
    assert "held-out" in mixed["paired_test"]["inputs"] and "not significantly better" in mixed["not_kept"]
    # +5 of 30 held-out (p = 1/32): a real gain, kept although the budget (0.99) is still missed
    out = _held_out_search({5, 15, 25, 35, 45}, 0.99)
    assert out.model == ("l0",) and out.mixed["float_layers"] == ["l0"] and out.mixed["paired_test"]["better"]
    assert "not_kept" not in out.mixed
    # a fallback that meets the budget is kept whatever the test says (the budget is the user's own criterion)
    out = _held_out_search({5, 15}, 0.90)
    assert out.mixed["passed"] and out.model == ("l0",) and not out.mixed["paired_test"]["better"]


def test_real_conversion_reports_every_choice_with_its_paired_test(int8_bundle):
    """The digits CNN converted for raspberry-pi-4: each recipe choice says wins, losses and p-value, and the
    choice follows the test, not the bare agreement figures."""
    report = json.loads(Path(str(int8_bundle) + ".report.json").read_text())
    quant = next(p for p in report["passes"] if p["pass"] == "quantize")
    eq = quant["equalization"]
    assert eq["paired_test"]["units"] == 450 and (eq["chosen"] == "on") == eq["paired_test"]["better"]
    rows = {r["compensation"]: r for r in quant["compensation"]["candidates"]}
    if "bias" in rows:
        test = rows["bias"]["paired_test"]
        assert (quant["compensation"]["chosen"] == "bias") == test["better"]
        assert test["p_value"] == round(sign_test_p(test["wins"], test["losses"]), 4)
    mixed = report["measurements"].get("mixed_precision")
    if mixed is None:  # plain int8 met the budget (exact int8 arithmetic): no layer search to report
        assert report["precision"] == "int8-static" and report["measurements"]["accuracy"]["passed"]
        return
    assert mixed["paired_test"]["inputs"].startswith("held-out") and mixed["paired_test"]["units"] == 225
    assert mixed["passed"] or (bool(mixed["float_layers"]) == mixed["paired_test"]["better"])
