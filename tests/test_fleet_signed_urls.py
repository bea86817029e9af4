"""Per-device signed download URLs checked by a real nginx (Debian's, secure_link module) on loopback,
and S3 pre-signed URLs made by boto3 (no S3 server: what a URL carries is checked)."""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from urllib.parse import parse_qs, urlsplit

import pytest

from edge_agent.ota.protocol import BundleRef, ReportedState, Topics
from edge_agent.ota.http_fetch import http_download
from edge_fleet.registry import open_registry
from edge_fleet.registry.records import BundleRecord
from edge_fleet.rollout import RolloutDriver, plan_rollout
from edge_fleet.rollout.signed_urls import UrlSigner, s3_presigned

from .nginx_server import NginxServer

SECRET = "a-long-random-secret-for-tests-only"


@pytest.fixture
def nginx(tmp_path):
    """A real nginx serving tmp_path/store under /bundles/ only with a valid secure link; its base URL."""
    store = tmp_path / "store"
    store.mkdir()
    with NginxServer(tmp_path / "nginx", store, SECRET) as server:
        yield server.url, store


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_nginx_serves_a_signed_url_only_to_its_device_and_only_until_it_expires(nginx):
    base, store = nginx
    (store / "b.edgebundle").write_bytes(b"x" * 1000)
    signer = UrlSigner(SECRET)
    url = signer.sign(f"{base}/bundles/b.edgebundle", "pi-1", now=time.time(), lifetime=60)
    assert _status(url) == 200
    assert _status(url.replace("device=pi-1", "device=pi-2")) == 403  # another device's copy of the link
    assert _status(url.replace("expires=", "expires=9")) == 403  # a longer life is not for the asking
    assert _status(f"{base}/bundles/b.edgebundle") == 403  # unsigned
    expired = signer.sign(f"{base}/bundles/b.edgebundle", "pi-1", now=time.time() - 3600, lifetime=60)
    assert _status(expired) == 410
    assert _status(UrlSigner("another-secret-of-16+").sign(f"{base}/bundles/b.edgebundle", "pi-1", time.time(), 60)) == 403


def test_a_rollout_sends_each_device_its_own_link_and_the_agent_downloads_through_nginx(nginx, tmp_path):
    """The driver signs the --source-url template per device; the agent's HTTP downloader fetches the
    bundle through nginx with the link device a got, and b's link differs."""
    base, store = nginx
    data = os.urandom(300_000)
    sha = hashlib.sha256(data).hexdigest()
    (store / f"{sha}.edgebundle").write_bytes(data)
    sent: dict[str, dict] = {}
    with open_registry(tmp_path / "fleet.db") as reg:
        reg.add_bundle(BundleRecord(sha, "digits", 2, "pi", len(data), {}, {"key_id": "k"}, "k",
                                    store / f"{sha}.edgebundle", 0.0))
        for dev in ("a", "b"):
            reg.record_reported(ReportedState(dev, "idle", "pi", "t", current=BundleRef("digits", 1, "1" * 64)))
        plan_rollout(reg, "digits:2", devices=["a", "b"], stages=[100], stage_timeout=120,
                     source_url=base + "/bundles/{sha256}.edgebundle")
        driver = RolloutDriver(reg, Topics(), lambda topic, payload, _r: sent.__setitem__(topic.split("/")[2],
                                                                                        json.loads(payload)),
                               signer=UrlSigner(SECRET))
        driver.step(now=time.time())
    url_a, url_b = (sent[d]["source"]["url"] for d in ("a", "b"))
    assert url_a != url_b and parse_qs(urlsplit(url_a).query)["device"] == ["a"]
    got = http_download(url_a, tmp_path / "staging", sha, len(data))
    assert got.read_bytes() == data


def test_s3_templates_become_presigned_get_urls_that_expire(monkeypatch):
    """boto3's own credential chain and endpoint (env), as a user on S3 or an S3-compatible store has them."""
    for name, value in (("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"), ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/EXAMPLEKEY"),
                        ("AWS_DEFAULT_REGION", "eu-west-1"), ("AWS_ENDPOINT_URL", "https://s3.example.test")):
        monkeypatch.setenv(name, value)
    url = s3_presigned("s3://fleet-bundles/digits/abc.edgebundle", 600)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert url.startswith("https://") and "s3.example.test" in parts.netloc
    assert "fleet-bundles" in parts.netloc + parts.path and parts.path.endswith("/digits/abc.edgebundle")
    assert query["X-Amz-Expires"] == ["600"] and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert len(query["X-Amz-Signature"][0]) == 64 and query["X-Amz-Credential"][0].startswith("AKIDEXAMPLE/")
    long = parse_qs(urlsplit(s3_presigned("s3://b/k", 30 * 24 * 3600)).query)
    assert long["X-Amz-Expires"] == [str(7 * 24 * 3600)]  # SigV4's limit, not a refused request
