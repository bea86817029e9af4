"""Numeric options that argparse's int/float took as they came: nan, inf, negative or zero durations meant a loop
that never waits (--telemetry-interval 0 published telemetry on every tick), a rollout whose devices never time out
(--stage-timeout nan) or all time out at once (-5). Each is now a usage error (exit 2) naming the option."""

from __future__ import annotations

import pytest

from edge_agent.cli import main as agent_main
from edge_device.cli import main as device_main
from edge_fleet.cli import main as fleet_main

AGENT_SERVE = ["serve", "--device-id", "d1", "--broker", "mqtt://127.0.0.1:1"]


def _usage_error(main, argv: list[str], capsys) -> str:  # noqa: ANN001
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    return err


@pytest.mark.parametrize("argv, words", [
    ([*AGENT_SERVE, "--telemetry-interval", "0"], "--telemetry-interval: must be more than 0 seconds"),
    ([*AGENT_SERVE, "--telemetry-interval", "nan"], "--telemetry-interval: must be more than 0 seconds"),
    ([*AGENT_SERVE, "--infer-interval", "-1"], "--infer-interval: must be >= 0 (0 = off) seconds"),
    ([*AGENT_SERVE, "--probation", "inf"], "--probation: must be >= 0 (0 = off) seconds"),
    ([*AGENT_SERVE, "--latency-budget-ms", "nan"], "--latency-budget-ms: must be more than 0 ms"),
    ([*AGENT_SERVE, "--threads", "-2"], "--threads: must be at least 0"),
    ([*AGENT_SERVE, "--metrics-port", "70000"], "--metrics-port: port must be 0-65535"),
    (["run", "b.edgebundle", "--source", "x.mp4", "--reconnect-attempts", "-1"], "--reconnect-attempts: must be at least 0"),
    (["run", "b.edgebundle", "--source", "x.mp4", "--reconnect-max-seconds", "nan"], "--reconnect-max-seconds: must be >= 0"),
    (["serve-model", "b.edgebundle", "--http", "0", "--threads", "x"], "--threads: 'x' is not a whole number"),
    (["serve-model", "b.edgebundle", "--http", "70000"], "--http: port must be 0-65535"),
    ([*AGENT_SERVE, "--http", "-1"], "--http: port must be 0-65535"),
    (["serve-model", "b.edgebundle", "--http", "0", "--max-json-mb", "inf"], "--max-json-mb: must be more than 0 MB"),
    (["serve-model", "b.edgebundle", "--http", "0", "--max-body-mb", "nan"], "--max-body-mb: must be more than 0 MB"),
])
def test_agent_refuses_numbers_it_cannot_use(argv, words, capsys, tmp_path):
    assert words in _usage_error(agent_main, ["--home", str(tmp_path / "home"), *argv], capsys)


@pytest.mark.parametrize("option, value, words", [
    ("--stage-timeout", "nan", "--stage-timeout nan: input should be"),
    ("--stage-timeout", "-5", "--stage-timeout -5.0: input should be greater than 0"),
    ("--shadow-frames", "0", "--shadow-frames 0: input should be greater than or equal to 1"),
    ("--min-shadow-agreement", "1.5", "--min-shadow-agreement 1.5: input should be less than or equal to 1"),
    ("--wait-timeout", "-1", "--wait-timeout: must be >= 0 (0 = off) seconds"),
])
def test_fleet_deploy_refuses_what_its_api_would(option, value, words, capsys, tmp_path):
    """The same rules as the API's (DeployBody), checked before either backend sees the rollout."""
    home = tmp_path / "fleet"
    err = _usage_error(fleet_main, ["deploy", "--home", str(home), "digits:1", "--devices", "a", option, value], capsys)
    assert words in err and "\n" not in err.strip().splitlines()[-1]


@pytest.mark.parametrize("option, value", [("--timeout", "0"), ("--parallel", "0")])
def test_device_refuses_numbers_it_cannot_use(option, value, capsys, tmp_path):
    err = _usage_error(device_main, ["probe", "pi@127.0.0.1", option, value], capsys)
    assert option in err
