"""Short-lived, per-device download URLs, so 1,000 downloads come from storage built for it.

Two kinds, chosen by the rollout's `--source-url` template:

* `https://host/path/{sha256}.edgebundle` with the server's URL secret (`serve --url-secret-file`):
  nginx's secure_link. The fleet appends `device=ID&expires=T&md5=H` where
  H = base64url(MD5("{T}{path}{ID} {secret}")); nginx recomputes it (config in docs/fleet.md) and
  answers 403 to a changed URL or another device's, 410 once it expired. Without a secret the URL
  goes out as it is (a public CDN).
* `s3://bucket/key/{sha256}.edgebundle`: an S3 pre-signed GET URL (boto3, SigV4), credentials and
  endpoint from boto3's usual chain (AWS_* variables, ~/.aws, AWS_ENDPOINT_URL for an
  S3-compatible store). S3 signs the object, not the device: it is short-lived, not per device.

A URL lives as long as its device may use it in the stage: `stage_timeout` after it was sent
(after that the device counts as timed out anyway), plus a margin for clock skew.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import FleetError, FleetUsageError

MARGIN_S = 300  # clock skew between the fleet and the web server / S3
S3_MAX_S = 7 * 24 * 3600  # SigV4 pre-signed URLs live at most 7 days


def nginx_secure_link(url: str, device_id: str, expires: int, secret: str) -> str:
    """`url` + device, expiry and the MD5 nginx's `secure_link_md5 "$secure_link_expires$uri$arg_device SECRET"` checks."""
    path = urlsplit(url).path
    digest = hashlib.md5(f"{expires}{path}{device_id} {secret}".encode(), usedforsecurity=False).digest()
    token = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return f"{url}{'&' if '?' in url else '?'}device={device_id}&expires={expires}&md5={token}"


def s3_presigned(url: str, expires_in: int, client: Any = None) -> str:
    """A pre-signed HTTPS GET URL for `s3://bucket/key`."""
    parts = urlsplit(url)
    if not parts.netloc or not parts.path.strip("/"):
        raise FleetUsageError(f"--source-url s3://BUCKET/KEY needed, got {url!r}")
    if client is None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise FleetError("s3:// download URLs need boto3: pip install 'edgekit[s3]'") from exc
        client = boto3.client("s3", config=Config(signature_version="s3v4"))
    return client.generate_presigned_url("get_object", Params={"Bucket": parts.netloc, "Key": parts.path.lstrip("/")},
                                         ExpiresIn=min(expires_in, S3_MAX_S))


class UrlSigner:
    """Turns a rollout's formatted download URL into the one a device gets (see the module doc)."""

    def __init__(self, secret: str | None = None, s3_client: Any = None) -> None:
        self.secret = secret
        self.s3_client = s3_client

    @classmethod
    def from_secret_file(cls, path: Path | None) -> "UrlSigner":
        if path is None:
            return cls()
        try:
            secret = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise FleetUsageError(f"cannot read the URL secret {path}: {exc.strerror}") from exc
        if len(secret) < 16:
            raise FleetUsageError(f"the URL secret in {path} is shorter than 16 characters: use a long random one")
        return cls(secret)

    def sign(self, url: str, device_id: str, now: float, lifetime: float) -> str:
        expires_in = int(lifetime) + MARGIN_S
        if url.startswith("s3://"):
            return s3_presigned(url, expires_in, self.s3_client)
        if self.secret is None:
            return url
        return nginx_secure_link(url, device_id, int(now) + expires_in, self.secret)
