"""The DesiredState message a rollout publishes, and where it tells devices to download from."""

from __future__ import annotations

from edge_agent.ota.protocol import DesiredState

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


def desired_for(bundle: BundleRecord, deployment_id: str, allow_downgrade: bool = False,
                url_template: str | None = None) -> DesiredState:
    """The DesiredState message that asks a device to run `bundle`."""
    return DesiredState(deployment_id=deployment_id, bundle=bundle.ref, size=bundle.size, profile=bundle.profile,
                        signature=bundle.signature, allow_downgrade=allow_downgrade,
                        source=source_for(bundle, url_template))
