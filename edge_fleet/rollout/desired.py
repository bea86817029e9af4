"""The DesiredState message a rollout publishes, and where it tells devices to download from."""

from __future__ import annotations

import base64
import hashlib
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from edge_agent.ota.protocol import (BLOCK_HASH_BYTES, DEFAULT_BLOCK_SIZE, MAX_BLOCKS, MAX_JSON_BYTES, DesiredState,
                                     ShadowGate)

from ..errors import FleetUsageError
from ..registry.records import BundleRecord
from .signed_urls import UrlSigner


def source_for(bundle: BundleRecord, url_template: str | None) -> dict[str, str]:
    """Where devices fetch `bundle`: MQTT blocks from the fleet, or an HTTP(S) URL made from the
    template's {sha256}, {name}, {version} and {profile} (e.g. a CDN or an nginx in front of the store;
    s3://bucket/key becomes a pre-signed URL per device, signed_urls.py)."""
    if not url_template:
        return {"type": "mqtt"}
    try:
        url = url_template.format(sha256=bundle.sha256, name=bundle.name, version=bundle.version,
                                  profile=bundle.profile)
    except (KeyError, IndexError, AttributeError, ValueError) as exc:  # {nope}, {0}, {name.x}, a lone {
        raise FleetUsageError(f"--source-url {url_template!r} is not a usable template ({type(exc).__name__}: {exc}): "
                         "use {sha256}, {name}, {version} and {profile}; double a literal brace ({{ }})") from None
    if not url.startswith(("http://", "https://", "s3://")):
        raise FleetUsageError(f"--source-url must make an http(s) URL or s3://BUCKET/KEY, got {url!r}")
    return {"type": "http", "url": url}


def shadow_gate(min_agreement: float | None, frames: int = 300, timeout_s: float = 300.0) -> dict[str, Any] | None:
    """The shadow gate a rollout stores and sends (None without --min-shadow-agreement); FleetUsageError if invalid."""
    if min_agreement is None:
        return None
    if not (0.0 <= min_agreement <= 1.0 and frames >= 1 and 0 < timeout_s < math.inf):  # `not`: NaN too
        raise FleetUsageError("--min-shadow-agreement must be within 0..1, --shadow-frames >= 1, --shadow-timeout > 0")
    return {"min_agreement": min_agreement, "frames": frames, "timeout_s": timeout_s}


def block_size_for(size: int) -> int:
    """The default block size, doubled until the block count and its hash list fit the protocol's limits."""
    block_size = DEFAULT_BLOCK_SIZE
    while (count := -(-size // block_size)) > MAX_BLOCKS or count * BLOCK_HASH_BYTES * 4 // 3 > MAX_JSON_BYTES // 2:
        block_size *= 2
    return block_size


@lru_cache(maxsize=64)
def block_digests(path: Path, sha256: str, block_size: int) -> list[bytes]:
    """The SHA-256 of each block of the stored bundle file (cached per file and block size; the block
    server frames blocks with them too)."""
    digests = []
    with open(path, "rb") as fh:
        while chunk := fh.read(block_size):
            digests.append(hashlib.sha256(chunk).digest())
    return digests or [hashlib.sha256(b"").digest()]


@lru_cache(maxsize=64)
def block_hashes(path: Path, sha256: str, block_size: int) -> str:
    """base64 of the SHA-256 of each block, as DesiredState.block_hashes carries them."""
    return base64.b64encode(b"".join(block_digests(path, sha256, block_size))).decode("ascii")


def desired_for(bundle: BundleRecord, deployment_id: str, allow_downgrade: bool = False,
                url_template: str | None = None, *, device_id: str = "", signer: UrlSigner | None = None,
                now: float = 0.0, lifetime: float = 0.0, shadow: dict[str, Any] | None = None) -> DesiredState:
    """The DesiredState message that asks `device_id` to run `bundle`. MQTT downloads carry the block
    hashes, so a device refuses a forged block before writing it; an HTTP source is signed for that
    device, valid `lifetime` seconds from `now` (when the server has a URL secret, or for s3://). With
    `shadow`, the device runs the new model in shadow before it switches."""
    source = source_for(bundle, url_template)
    if source["type"] == "http" and (signer is not None or source["url"].startswith("s3://")):
        source = {"type": "http", "url": (signer or UrlSigner()).sign(source["url"], device_id, now, lifetime)}
    block_size = block_size_for(bundle.size)
    hashes = block_hashes(Path(bundle.path), bundle.sha256, block_size) if source["type"] == "mqtt" else None
    return DesiredState(deployment_id=deployment_id, bundle=bundle.ref, size=bundle.size, profile=bundle.profile,
                        signature=bundle.signature, allow_downgrade=allow_downgrade, source=source,
                        block_size=block_size, block_hashes=hashes,
                        shadow=ShadowGate.from_obj(shadow) if shadow else None)
