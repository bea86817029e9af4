"""OTA over TLS with client certificates: Mosquitto requires a certificate signed by the fleet's
CA; the fleet server and a real agent process connect with theirs and an update goes through;
a client without a certificate is turned away."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent.bundle import TrustStore
from edge_agent.cli import main as agent_main
from edge_fleet.broker import TlsListener, start_broker
from edge_fleet.cli import main as fleet_main
from edge_fleet.mqtt import MqttSettings
from edge_fleet.publish import publish_bundle
from edge_fleet.registry import open_registry
from edge_fleet.server import FleetServer
from .ota_helpers import AgentProcess, wait_for


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(folder: Path, stem: str, key, cert: x509.Certificate) -> tuple[Path, Path]:
    key_path, cert_path = folder / f"{stem}.key", folder / f"{stem}.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def make_pki(folder: Path) -> dict[str, tuple[Path, Path]]:
    """A CA, a server certificate for 127.0.0.1 and client certificates for the fleet and one device."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("edgekit test CA")).issuer_name(_name("edgekit test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": _write(folder, "ca", ca_key, ca)}

    def leaf(cn: str, server: bool) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1)))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return _write(folder, cn, key, b.sign(ca_key, hashes.SHA256()))

    out["server"] = leaf("server", True)
    out["fleet"] = leaf("fleet", False)
    out["pi-tls"] = leaf("pi-tls", False)
    return out


def test_update_over_tls_with_client_certificates(tmp_path, digits, int8_bundle, int8_v2_bundle, capsys):
    pki = make_pki(tmp_path / "pki")
    ca = pki["ca"][0]
    broker = start_broker(tmp_path / "broker", prefer="mosquitto", fallback=False,
                          tls=TlsListener(cafile=ca, certfile=pki["server"][0], keyfile=pki["server"][1]))
    reg = open_registry(tmp_path / "fleet.db")
    for b in (int8_bundle, int8_v2_bundle):
        publish_bundle(reg, b, TrustStore.from_paths([digits.pub]))
    server = agent = None
    try:
        assert broker.url.startswith("mqtts://")
        # a client without a certificate is refused by the broker
        refused = threading.Event()
        bare = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="no-cert")
        bare.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
        connected = threading.Event()
        bare.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else refused.set()
        try:
            bare.connect(broker.host, broker.port)
            bare.loop_start()
            assert not connected.wait(3), "a client without a certificate must not get in"
        except (ssl.SSLError, OSError):
            pass  # the handshake itself failed: refused
        finally:
            bare.loop_stop()

        settings = MqttSettings(url=broker.url, ca_file=ca, cert_file=pki["fleet"][0], key_file=pki["fleet"][1],
                                client_id="edge-fleet-tls")
        server = FleetServer(reg, broker.url, settings=settings, tick=0.05).start()
        home = tmp_path / "pi-tls"
        assert agent_main(["--home", str(home), "install", str(int8_bundle), "--trust", str(digits.pub),
                           "--profile", "raspberry-pi-4"]) == 0
        agent = AgentProcess(home, broker.url, "pi-tls", digits.pub,
                             extra=["--tls-ca", str(ca), "--tls-cert", str(pki["pi-tls"][0]), "--tls-key", str(pki["pi-tls"][1])])
        wait_for(lambda: (d := reg.device("pi-tls")) is not None and d.presence == "online", what="agent online over TLS")
        capsys.readouterr()
        rc = fleet_main(["deploy", "digits:2", "--devices", "pi-tls", "--wait", "--wait-timeout", "120",
                         "--db", str(reg.db_path), "--json"])
        assert rc == 0, capsys.readouterr().out
        capsys.readouterr()
        assert agent_main(["--home", str(home), "status", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["version"] == 2
    finally:
        if agent is not None:
            agent.stop()
        if server is not None:
            server.stop()
        broker.stop()
        reg.close()
