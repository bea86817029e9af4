"""The fleet as the CLI sees it: one interface, two implementations.

LocalFleet works on the registry file (the server's own shell, acting as `local:USER`);
RemoteFleet (remote.py) goes through the management API of a fleet elsewhere (`--api URL
--token T`). Both return the same JSON shapes (edge_fleet.views), so each command renders
one result whichever way it came, and every change goes through edge_fleet.actions (roles,
audit) on whichever side holds the registry.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from edge_agent.bundle import TrustStore

from .. import actions
from ..access import local_actor
from ..errors import FleetUsageError, WaitTimeout
from ..registry import ACTIVE_ROLLOUT, Registry, RolloutStatus
from ..rollout import parse_max_failures, parse_stages, shadow_gate
from ..views import audit_view, bundle_detail, bundle_view, device_view, rollout_shadows, rollout_summary, rollout_view

Json = dict[str, Any]


class Fleet(ABC):
    """What the commands need of a fleet; results are JSON-ready dicts and lists."""

    @abstractmethod
    def status(self, group: str | None) -> Json: ...

    @abstractmethod
    def devices(self, group: str | None) -> list[Json]: ...

    @abstractmethod
    def set_group(self, device_id: str, group: str | None) -> Json: ...

    @abstractmethod
    def bundles(self) -> list[Json]: ...

    @abstractmethod
    def publish(self, path: Path, trust: list[str] | None) -> Json: ...

    @abstractmethod
    def deploy(self, body: Json) -> Json:
        """`body` is the API's DeployBody: bundle, devices|group, stages, max_failures, ..."""

    @abstractmethod
    def rollout(self, rollout_id: str) -> Json: ...

    @abstractmethod
    def rollouts(self) -> list[Json]: ...

    @abstractmethod
    def act(self, rollout_id: str, action: str) -> Json: ...

    @abstractmethod
    def create_token(self, name: str, role: str) -> Json: ...

    @abstractmethod
    def tokens(self) -> list[Json]: ...

    @abstractmethod
    def revoke_token(self, name: str) -> Json: ...

    @abstractmethod
    def audit(self, limit: int) -> list[Json]: ...

    def close(self) -> None:
        """Release what the backend holds (the registry connection)."""

    def follow(self, rollout_id: str, timeout: float) -> Json:
        """Poll until the rollout is no longer active (the running server drives it)."""
        deadline = time.monotonic() + timeout if timeout else None
        while (r := self.rollout(rollout_id))["status"] in ACTIVE_ROLLOUT:
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"rollout {rollout_id} still {r['status']} after {timeout:.0f}s "
                                  "(is `edge-fleet serve` running?); it goes on: `edge-fleet rollouts "
                                  f"{rollout_id}` follows it")
            time.sleep(0.2)
        return r


class LocalFleet(Fleet):
    """The registry file itself; changes are audited as local:USER (admin)."""

    def __init__(self, reg: Registry, home: Path) -> None:
        self.reg, self.home, self.actor = reg, home, local_actor()

    def close(self) -> None:
        self.reg.close()

    def status(self, group: str | None) -> Json:
        devices = [device_view(d) for d in self.reg.devices(group)]
        active = self.reg.rollouts((RolloutStatus.PENDING, RolloutStatus.RUNNING, RolloutStatus.PAUSED))
        shown = [rollout_summary(r) for r in [*active, *self.reg.rollouts_page(1, 0).items]]  # + the newest one
        return {"devices": devices, "active_rollouts": [r.id for r in active], "rollout_shadows": rollout_shadows(shown)}

    def devices(self, group: str | None) -> list[Json]:
        return [device_view(d) for d in self.reg.devices(group)]

    def set_group(self, device_id: str, group: str | None) -> Json:
        return device_view(actions.set_group(self.reg, self.actor, device_id, group))

    def bundles(self) -> list[Json]:
        return [bundle_view(b) for b in self.reg.bundles()]

    def publish(self, path: Path, trust: list[str] | None) -> Json:
        return bundle_detail(actions.publish(self.reg, self.actor, path, trust_store(self.home, trust, required=True)))

    def deploy(self, body: Json) -> Json:
        r = actions.deploy(self.reg, self.actor, body["bundle"], devices=body.get("devices"), group=body.get("group"),
                           stages=parse_stages(body["stages"]), max_failures=parse_max_failures(body["max_failures"]),
                           stage_timeout=body["stage_timeout"], stage_soak=body["stage_soak"],
                           source_url=body.get("source_url"),
                           shadow=shadow_gate(body.get("min_shadow_agreement"), body.get("shadow_frames", 300),
                                              body.get("shadow_timeout", 300.0)))
        return rollout_view(r)

    def rollout(self, rollout_id: str) -> Json:
        return rollout_view(actions.rollout_or_404(self.reg, rollout_id))

    def rollouts(self) -> list[Json]:
        return [rollout_summary(r) for r in self.reg.rollouts()]

    def act(self, rollout_id: str, action: str) -> Json:
        return rollout_view(actions.request_action(self.reg, self.actor, rollout_id, action))

    def create_token(self, name: str, role: str) -> Json:
        secret, rec = actions.new_token(self.reg, self.actor, name, role)
        return {**rec.to_json(), "token": secret}

    def tokens(self) -> list[Json]:
        return [t.to_json() for t in self.reg.tokens()]

    def revoke_token(self, name: str) -> Json:
        actions.drop_token(self.reg, self.actor, name)
        return {"revoked": name}

    def audit(self, limit: int) -> list[Json]:
        return [audit_view(e) for e in self.reg.audit_page(limit, 0).items]


def trust_store(home: Path, paths: list[str] | None, required: bool) -> TrustStore | None:
    """--trust PATHs, else HOME/trusted/*.pub; None (or an error when `required`) without either."""
    chosen = list(paths or [])
    default = home / "trusted"
    if not chosen and default.is_dir() and any(default.glob("*.pub")):
        chosen = [str(default)]
    if not chosen:
        if required:
            raise FleetUsageError(f"no trusted keys: pass --trust PUBKEY (or put *.pub files in {default})")
        return None
    return TrustStore.from_paths(chosen)
