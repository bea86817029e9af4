"""The rollout's arithmetic, directly: examples that pin today's behaviour, and properties
checked by Hypothesis over many generated inputs (no registry, no broker)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_fleet.errors import FleetError, NoTargets, RolloutConflict
from edge_fleet.registry.records import BundleRecord, DeviceRecord
from edge_fleet.rollout import (failure_threshold, parse_max_failures, parse_stages, parse_target, select_targets,
                                split_stages)
from edge_fleet.rollout.stages import assign_stages

# increasing percentages in (0, 100] that end at 100, as --stages wants them
stage_lists = st.lists(st.integers(1, 99), max_size=6, unique=True).map(lambda xs: [float(x) for x in sorted(xs)] + [100.0])


@pytest.mark.parametrize(("text", "expected"), [("digits:2", ("digits", 2)), ("a:b:10", ("a:b", 10))])
def test_parse_target_examples(text, expected):
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", ["digits", "digits:", ":2", "digits:0", "digits:-1", "digits:x",
                                  "digits:99999999999999999999999", "digits:\u00b2", "digits: 2"])
def test_parse_target_refuses(text):
    with pytest.raises(FleetError, match="NAME:VERSION"):
        parse_target(text)


@given(st.text(min_size=1).filter(lambda s: s.strip() == s), st.integers(1, 10**6))
def test_parse_target_round_trips(name, version):
    assert parse_target(f"{name}:{version}") == (name, version)


@pytest.mark.parametrize(("text", "expected"), [("5,25,100", [5.0, 25.0, 100.0]), (" 5% , 25%,100% ", [5.0, 25.0, 100.0]),
                                                ("100", [100.0]), ("0.5,100", [0.5, 100.0])])
def test_parse_stages_examples(text, expected):
    assert parse_stages(text) == expected


@pytest.mark.parametrize("text", ["", ",", "50", "50,25,100", "0,100", "5,25,101", "five,100", "nan,100"])
def test_parse_stages_refuses(text):
    with pytest.raises(FleetError, match="--stages"):
        parse_stages(text)


@given(stage_lists)
def test_parse_stages_round_trips_valid_lists(stages):
    assert parse_stages(",".join(f"{s:g}" for s in stages)) == stages


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=5))
def test_parse_stages_accepts_only_increasing_lists_ending_at_100(values):
    text = ",".join(repr(v) for v in values)
    try:
        stages = parse_stages(text)
    except FleetError:
        return
    assert stages[-1] == 100 and stages == sorted(stages) and all(0 < s <= 100 for s in stages)


@pytest.mark.parametrize(("text", "expected"), [("0", 0.0), ("2", 2.0), ("0.1", 0.1), ("10%", 0.1), ("0%", 0.0)])
def test_parse_max_failures_examples(text, expected):
    assert parse_max_failures(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["-1", "1.5", "150%", "abc", "", "nan", "inf", "-inf"])
def test_parse_max_failures_refuses(text):
    # "nan" used to pass and then crash the rollout driver in failure_threshold (math.floor(nan))
    with pytest.raises(FleetError, match="--max-failures"):
        parse_max_failures(text)


@pytest.mark.parametrize(("max_failures", "n", "expected"),
                         [(0, 10, 0), (2, 10, 2), (2, 1, 2), (0.1, 10, 1), (0.1, 5, 0), (0.5, 3, 1), (0.99, 100, 99)])
def test_failure_threshold_examples(max_failures, n, expected):
    assert failure_threshold(max_failures, n) == expected


@given(st.floats(0, 1, exclude_max=True), st.integers(0, 10_000), st.integers(0, 10_000))
def test_failure_threshold_of_a_fraction_stays_within_the_fleet_and_grows_with_it(fraction, n, more):
    t = failure_threshold(fraction, n)
    assert 0 <= t <= n and t <= fraction * n
    assert failure_threshold(fraction, n + more) >= t


@given(st.integers(0, 1000), st.integers(0, 10_000))
def test_failure_threshold_of_a_count_ignores_the_fleet_size(count, n):
    assert failure_threshold(float(count), n) == count


@pytest.mark.parametrize(("n", "stages", "expected"), [
    (4, [25, 50, 100], [1, 2, 4]),
    (3, [5, 25, 100], [1, 2, 3]),
    (1, [5, 25, 100], [1]),
    (2, [5, 25, 100], [1, 2]),
    (100, [5, 25, 100], [5, 25, 100]),
    (10, [100], [10]),
    (5, [20, 40, 100], [1, 2, 5]),
])
def test_split_stages_examples(n, stages, expected):
    assert split_stages(n, stages) == expected


@given(st.integers(1, 5000), stage_lists)
def test_split_stages_properties(n, stages):
    out = split_stages(n, stages)
    assert out[-1] == n  # every device is reached
    assert out[0] >= 1 and all(b > a for a, b in zip(out, out[1:]))  # each stage adds at least one device
    assert len(out) <= len(stages)  # empty stages are dropped, none invented
    for i, pct in enumerate(stages):  # no stage reaches fewer devices than its percentage asks for
        assert out[min(i, len(out) - 1)] >= min(math.ceil(n * pct / 100), n)


@given(st.integers(1, 300), stage_lists)
def test_assign_stages_places_every_device_once_in_order(n, stages):
    counts = split_stages(n, stages)
    placed = assign_stages(list(range(n)), counts)
    assert [item for item, _ in placed] == list(range(n))
    sizes = [sum(1 for _, s in placed if s == k) for k in range(len(counts))]
    assert sizes == [b - a for a, b in zip([0, *counts], counts)]


def _bundle(profile: str) -> BundleRecord:
    return BundleRecord("a" * 64, "digits", 2, profile, 1, {}, {}, "k", __import__("pathlib").Path("/x"), 0.0)


def test_select_targets_skips_unknown_and_other_profiles_and_keeps_order():
    known = {"b": DeviceRecord("b", profile="pi"), "c": DeviceRecord("c", profile="jetson"), "d": DeviceRecord("d")}
    eligible, skipped = select_targets(["b", "ghost", "c", "d"], known, {"pi": _bundle("pi")}, busy={})
    assert [d for d, _ in eligible] == ["b"]
    assert [d for d, _ in skipped] == ["ghost", "c", "d"]
    assert "never reported" in dict(skipped)["ghost"] and "profile jetson" in dict(skipped)["c"]


def test_select_targets_refuses_a_device_busy_in_another_rollout():
    with pytest.raises(RolloutConflict, match="already in running rollout r-1") as caught:
        select_targets(["b"], {"b": DeviceRecord("b", profile="pi")}, {"pi": _bundle("pi")}, busy={"b": "r-1"})
    assert caught.value.exit_code == 6 and not isinstance(caught.value, NoTargets)


@given(st.one_of(st.floats().map(repr), st.floats().map(lambda f: f"{f!r}%"), st.text(max_size=8)))
def test_parse_max_failures_returns_a_usable_threshold_or_refuses(text):
    try:
        value = parse_max_failures(text)
    except FleetError:
        return
    assert math.isfinite(value) and value >= 0
    assert 0 <= failure_threshold(value, 50)  # the driver computes this on every step
