"""The DesiredState message a rollout publishes, and where it tells devices to download from."""

from __future__ import annotations

import math
from typing import Any

from edge_agent.ota.protocol import DesiredState, ShadowGate

from ..errors import FleetError
from ..registry.records import BundleRecord


def source_for(bundle: BundleRecord, url_template: str | None) -> dict[str, str]:
    """Where devices fetch `bundle`: MQTT blocks from the fleet, or an HTTP(S) URL made from the
    template's {sha256}, {name}, {version} and {profile} (e.g. a CDN or an nginx in front of the store)."""
    if not url_template:
        return {"type": "mqtt"}
    url = url_template.format(sha256=bundle.sha256, name=bundle.name, version=bundle.version, profile=bundle.profile)
    if not url.startswith(("http://", "https://")):
        raise FleetError(f"--source-url must make an http(s) URL, got {url!r}")
    return {"type": "http", "url": url}


def shadow_gate(min_agreement: float | None, frames: int = 300, timeout_s: float = 300.0) -> dict[str, Any] | None:
    """The shadow gate a rollout stores and sends (None without --min-shadow-agreement); FleetError if invalid."""
    if min_agreement is None:
        return None
    if not (0.0 <= min_agreement <= 1.0 and frames >= 1 and 0 < timeout_s < math.inf):  # `not`: NaN too
        raise FleetError("--min-shadow-agreement must be within 0..1, --shadow-frames >= 1, --shadow-timeout > 0")
    return {"min_agreement": min_agreement, "frames": frames, "timeout_s": timeout_s}


def desired_for(bundle: BundleRecord, deployment_id: str, allow_downgrade: bool = False,
                url_template: str | None = None, shadow: dict[str, Any] | None = None) -> DesiredState:
    """The DesiredState message that asks a device to run `bundle` (after a shadow run when `shadow` is set)."""
    return DesiredState(deployment_id=deployment_id, bundle=bundle.ref, size=bundle.size, profile=bundle.profile,
                        signature=bundle.signature, allow_downgrade=allow_downgrade,
                        source=source_for(bundle, url_template),
                        shadow=ShadowGate.from_obj(shadow) if shadow else None)
