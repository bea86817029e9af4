"""The API over HTTPS when `serve` is given a certificate: verified with the CA by httpx and by the
remote CLI (--api-ca); refused without it; plain HTTP on the TLS port gets no answer."""

from __future__ import annotations

import ssl

import httpx
import pytest

from edge_fleet.cli import main as fleet_main
from edge_fleet.errors import exit_code
from .fleet_http_helpers import FleetProcess, fleet_home, make_tokens
from .test_ota_tls import make_pki


def test_https_with_a_configured_certificate(tmp_path, digits, capsys):
    pki = make_pki(tmp_path / "pki")
    ca = pki["ca"][0]
    cert, key = pki["server"]
    home = fleet_home(tmp_path, digits.pub)
    token = make_tokens(home, "viewer")["viewer"]
    fleet = FleetProcess(home, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert fleet.http.startswith("https://127.0.0.1:")
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), headers=auth) as api:
            assert api.get(f"{fleet.http}/api/v1/whoami").json() == {"name": "viewer", "role": "viewer"}
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{fleet.http}/api/v1/whoami", headers=auth)  # the system CAs do not know ours
        with pytest.raises(httpx.HTTPError):
            httpx.get(fleet.http.replace("https://", "http://") + "/api/v1/whoami", headers=auth, timeout=5)
        capsys.readouterr()
        assert fleet_main(["--api", fleet.http, "--token", token, "--api-ca", str(ca), "status", "--json"]) == 0
        assert fleet_main(["--api", fleet.http, "--token", token, "status"]) == exit_code("api-failed")
        assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err
    finally:
        fleet.stop()


def test_a_certificate_without_its_key_is_refused_in_one_line(tmp_path, capsys):
    pki = make_pki(tmp_path / "pki")
    rc = fleet_main(["serve", "--home", str(tmp_path / "fleet"), "--http", "0", "--tls-cert", str(pki["server"][0])])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == exit_code("usage") and err[-1] == "edge-fleet: error: --tls-cert and --tls-key go together"
