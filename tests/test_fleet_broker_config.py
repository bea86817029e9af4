"""The Mosquitto config renderer is a pure function: settings in, text out; nothing is started.

That Mosquitto accepts what it renders is shown by tests/test_broker.py, which runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_fleet.broker import MosquittoSettings, TlsListener, render_mosquitto_config
from edge_fleet.broker.mosquitto_config import MQTT_MAX_PACKET, PACKET_OVERHEAD, max_packet_size

BASE = MosquittoSettings(host="127.0.0.1", port=18830, persistence_dir=Path("/srv/fleet/broker/persistence"),
                         log_file=Path("/srv/fleet/broker/mosquitto.log"))


def lines(settings: MosquittoSettings) -> list[str]:
    return render_mosquitto_config(settings).splitlines()


def test_defaults_listen_on_one_address_persist_and_allow_anonymous():
    out = lines(BASE)
    assert out[0].startswith("#")
    assert "listener 18830 127.0.0.1" in out and "per_listener_settings false" in out
    assert "persistence true" in out and "persistence_location /srv/fleet/broker/persistence/" in out
    assert "log_dest file /srv/fleet/broker/mosquitto.log" in out and "set_tcp_nodelay true" in out
    assert "allow_anonymous true" in out
    assert "max_queued_messages 100000" in out  # the fleet's one subscription gets every device's reports
    assert not any(x.split()[0] in ("password_file", "acl_file", "max_packet_size", "cafile", "user") for x in out[1:])
    assert render_mosquitto_config(BASE) == render_mosquitto_config(BASE)  # deterministic


def test_logins_acl_size_limit_tls_and_user():
    tls = TlsListener(Path("/pki/ca.pem"), Path("/pki/server.pem"), Path("/pki/server.key"), require_certificate=False)
    out = lines(MosquittoSettings(**{**BASE.__dict__, "password_file": Path("/srv/fleet/broker/passwd"),
                                     "acl_file": Path("/etc/edgekit/acl.conf"), "max_packet_size": 1_118_576,
                                     "tls": tls, "run_as_user": "root"}))
    assert "allow_anonymous false" in out and "allow_anonymous true" not in out
    assert "password_file /srv/fleet/broker/passwd" in out and "acl_file /etc/edgekit/acl.conf" in out
    assert "max_packet_size 1118576" in out and "user root" in out
    assert ["cafile /pki/ca.pem", "certfile /pki/server.pem", "keyfile /pki/server.key",
            "require_certificate false"] == out[-4:]
    required = lines(MosquittoSettings(**{**BASE.__dict__, "tls": TlsListener(tls.cafile, tls.certfile, tls.keyfile)}))
    assert "require_certificate true" in required


@pytest.mark.parametrize("field", ["persistence_dir", "log_file", "password_file", "acl_file"])
@pytest.mark.parametrize("bad", ["/srv/my fleet/x", "relative/x"])
def test_paths_mosquitto_cannot_read_are_refused(field, bad):
    with pytest.raises(ValueError, match=field):
        render_mosquitto_config(MosquittoSettings(**{**BASE.__dict__, field: Path(bad)}))


def test_max_packet_size_leaves_room_for_headers_and_refuses_out_of_range():
    assert max_packet_size(1) == 2**20 + PACKET_OVERHEAD
    assert max_packet_size((MQTT_MAX_PACKET - PACKET_OVERHEAD) / 2**20) <= MQTT_MAX_PACKET
    for bad in (0, -1, 256):
        with pytest.raises(ValueError, match="max_message_mb"):
            max_packet_size(bad)
