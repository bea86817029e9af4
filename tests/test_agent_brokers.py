"""Several broker URLs for the agent (the nodes of a clustered broker): where they come from, how
they are checked, and the move to the next one when a broker dies and back when that one dies too,
on two real Mosquitto brokers. The cluster test (test_fleet_cluster.py) does it on ejabberd nodes."""

from __future__ import annotations

import time

import pytest

from edge_agent.bundle import TrustStore
from edge_agent.home import AgentHome
from edge_agent.ota.daemon import AgentConfig
from edge_agent.ota.daemon.config import AgentConfigError
from edge_agent.ota.daemon.mqtt_link import DeviceTopics, MqttLink
from edge_agent.ota.protocol import Topics
from edge_fleet.broker import start_broker


def _config(broker: str, **kw) -> AgentConfig:
    return AgentConfig(broker=broker, device_id="pi-1", profile_name="raspberry-pi-4", latency_budget_ms=None,
                       trust=TrustStore({}), **kw)


def test_broker_urls_come_from_the_flag_then_the_environment_then_the_home(tmp_path, monkeypatch):
    home = AgentHome(tmp_path)
    monkeypatch.delenv("EDGE_AGENT_BROKER", raising=False)
    assert home.broker_urls(None) is None
    home.root.mkdir(exist_ok=True)
    home.broker_file.write_text("mqtt://n1:1883\nmqtt://n2:1883\n")
    assert home.broker_urls(None) == "mqtt://n1:1883,mqtt://n2:1883"
    monkeypatch.setenv("EDGE_AGENT_BROKER", "mqtt://e1, mqtt://e2")
    assert home.broker_urls(None) == "mqtt://e1,mqtt://e2"
    assert home.broker_urls(["mqtt://a:1", "mqtt://b:2,mqtt://c:3"]) == "mqtt://a:1,mqtt://b:2,mqtt://c:3"


def test_every_broker_url_is_checked_and_each_keeps_its_own_login():
    cfg = _config("mqtt://u1:p1@n1:1884, mqtt://n2")
    a, b = cfg.broker_addresses()
    assert (a.host, a.port, b.host, b.port) == ("n1", 1884, "n2", 1883)
    assert cfg.login_for(a) == ("u1", "p1") and cfg.login_for(b) == (None, None)
    assert _config("mqtt://n1,mqtt://n2", username="dev", password="pw").login_for(b) == ("dev", "pw")
    with pytest.raises(AgentConfigError, match="must look like"):
        _config("mqtt://n1,http://n2").broker_addresses()
    with pytest.raises(AgentConfigError, match="mix mqtt:// and mqtts://"):
        _config("mqtt://n1,mqtts://n2").broker_addresses()
    with pytest.raises(AgentConfigError, match="no broker URL"):
        _config(" , ").broker_addresses()


def _wait_on(link: MqttLink, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not (link.connected.is_set() and link.broker_url.endswith(f":{port}")):
        assert time.monotonic() < deadline, f"not connected to port {port} (at {link.broker_url})"
        time.sleep(0.05)


def test_the_agent_moves_to_the_next_broker_when_one_dies_and_comes_back(tmp_path):
    first = start_broker(tmp_path / "a", prefer="mosquitto", fallback=False)
    second = start_broker(tmp_path / "b", prefer="mosquitto", fallback=False)
    cfg = _config(f"{first.url},{second.url}", keepalive_s=2)
    topics = DeviceTopics.for_device(Topics(), cfg.device_id)
    link = MqttLink(cfg, topics)
    link.route(topics.desired, lambda payload: None)
    connects: list[str] = []
    link.on_connected(lambda: connects.append(link.broker_url))
    try:
        link.start()
        _wait_on(link, first.port)
        first.stop()
        _wait_on(link, second.port)
        first.start()  # back on its port
        second.stop()
        _wait_on(link, first.port)
        assert connects == [first.url, second.url, first.url]
    finally:
        link.stop()
        first.stop()
        second.stop()


def test_serve_without_any_broker_is_a_usage_error_of_one_line(tmp_path, monkeypatch, capsys):
    from edge_agent.cli import main as agent_main

    monkeypatch.delenv("EDGE_AGENT_BROKER", raising=False)
    code = agent_main(["--home", str(tmp_path / "home"), "serve", "--device-id", "pi-1", "--profile", "raspberry-pi-4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no broker" in err[0] and "EDGE_AGENT_BROKER" in err[0]


@pytest.fixture
def dead_and_locked(tmp_path):
    """(URL of a port nothing listens on, a real Mosquitto that takes only the login dev/right)."""
    from .ports import free_port

    locked = start_broker(tmp_path / "locked", prefer="mosquitto", fallback=False, users={"dev": "right"})
    yield f"mqtt://127.0.0.1:{free_port()}", locked
    locked.stop()


def test_a_refused_login_names_the_broker_tried_not_the_first_one(dead_and_locked, caplog):
    """Fails before the fix: the line named the whole --broker list and the first broker's login."""
    dead, locked = dead_and_locked
    cfg = _config(f"{dead},mqtt://dev:wrong@127.0.0.1:{locked.port}", keepalive_s=2)
    topics = DeviceTopics.for_device(Topics(), cfg.device_id)
    link = MqttLink(cfg, topics)
    try:
        with caplog.at_level("ERROR", logger="edge_agent.ota.daemon.mqtt_link"):
            link.start()
            deadline = time.monotonic() + 30
            while not any("refused" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "no refusal logged"
                time.sleep(0.05)
    finally:
        link.stop()
    line = next(r.getMessage() for r in caplog.records if "refused" in r.getMessage())
    assert line.startswith(f"the broker {locked.url} refused the login of user 'dev'") and dead not in line


def test_check_connection_tries_each_broker_and_names_the_one_that_answered(dead_and_locked):
    from edge_agent.ota.daemon.connection_check import BrokerLoginRefused, BrokerUnreachable, check_connection

    dead, locked = dead_and_locked
    ok = check_connection(_config(f"{dead},{locked.url}", username="dev", password="right"), timeout_s=5)
    assert ok["broker"] == locked.url and ok["username"] == "dev"
    assert len(ok["failed"]) == 1 and ok["failed"][0].startswith(f"cannot reach the broker {dead}")
    with pytest.raises(BrokerLoginRefused) as refused:
        check_connection(_config(f"{dead},{locked.url}", username="dev", password="wrong"), timeout_s=5)
    assert f"the broker {locked.url} refused the login of user 'dev'" in str(refused.value)
    assert f"cannot reach the broker {dead}" in str(refused.value)
    with pytest.raises(BrokerUnreachable, match=f"cannot reach the broker {dead}"):
        check_connection(_config(dead), timeout_s=5)


def test_first_that_answers_tries_in_order_and_lets_the_caller_choose_the_error():
    """The one try-in-order loop of the agent's --check-connection and the fleet's first connect."""
    from edge_agent.ota.broker_failover import first_that_answers
    from edge_agent.ota.broker_url import parse_broker_urls

    addresses = parse_broker_urls("mqtt://n1,mqtt://n2,mqtt://n3")
    tried = []

    def attempt(index, address):
        tried.append((index, address.host))
        if address.host != "n3":
            raise ConnectionError(f"{address.host} is down")
        return "welcome"

    result, address, failures = first_that_answers(addresses, attempt, (ConnectionError,), lambda e: RuntimeError())
    assert (result, address.host, [str(f) for f in failures]) == ("welcome", "n3", ["n1 is down", "n2 is down"])
    assert tried == [(0, "n1"), (1, "n2"), (2, "n3")]
    with pytest.raises(LookupError, match="n1 is down; n2 is down"):
        first_that_answers(addresses[:2], attempt, (ConnectionError,), lambda e: LookupError("; ".join(map(str, e))))
    with pytest.raises(ZeroDivisionError):  # not a "try the next broker" error: it is not swallowed
        first_that_answers(addresses, lambda i, a: 1 / 0, (ConnectionError,), lambda e: RuntimeError())
