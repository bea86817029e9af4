"""A/B slots in the agent home, with RAUC-style good/bad marks and one atomic switch.

Layout under `<home>/slots/`:

    state.json          {"active": "a"|"b"|null, "previous": ...}  <- the ONE switch (os.replace)
    a/slot.json         status (installing|installed|good|bad), bundle ref, manifest, reason
    a/bundle/           the unpacked, verified bundle payload
    b/...

A slot is written only while it is inactive; `switch()` flips `state.json` atomically, so
after a power cut the agent boots either the old or the new slot, never a mix.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import Manifest, TrustStore, VerifiedBundle, verify_bundle
from .protocol import BundleRef
from .statefile import read_json, write_json_atomic

log = logging.getLogger(__name__)

SLOT_NAMES = ("a", "b")
STATUSES = ("empty", "installing", "installed", "good", "bad")


class SlotError(RuntimeError):
    """A slot operation is impossible (e.g. rollback with no good previous slot)."""

    exit_code = 50
    kind = "slot"


@dataclass
class SlotInfo:
    """What one slot holds."""

    name: str
    status: str
    bundle_dir: Path
    ref: BundleRef | None = None
    manifest: Manifest | None = None
    reason: str | None = None
    key_id: str | None = None

    @property
    def usable(self) -> bool:
        """Installed and not marked bad (a health-checked `good` slot, or `installed`)."""
        return self.status in ("installed", "good") and self.manifest is not None and self.bundle_dir.is_dir()

    def to_dict(self) -> dict[str, Any]:
        return {
            "slot": self.name,
            "status": self.status,
            "name": self.ref.name if self.ref else None,
            "version": self.ref.version if self.ref else None,
            "sha256": self.ref.sha256 if self.ref else None,
            "reason": self.reason,
        }


class Slots:
    """The two slots of one agent home."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # --- reading -------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def _state(self) -> dict[str, Any]:
        state = read_json(self.state_file, {}) or {}
        return state if isinstance(state, dict) else {}

    def active_name(self) -> str | None:
        name = self._state().get("active")
        return name if name in SLOT_NAMES else None

    def previous_name(self) -> str | None:
        name = self._state().get("previous")
        return name if name in SLOT_NAMES else None

    def inactive_name(self) -> str:
        """The slot to install into: the one that is not active."""
        return "b" if self.active_name() == "a" else "a"

    def other(self, name: str) -> str:
        return "b" if name == "a" else "a"

    def info(self, name: str) -> SlotInfo:
        folder = self.root / name
        meta = read_json(folder / "slot.json", {}) or {}
        status = meta.get("status", "empty") if meta.get("status") in STATUSES else "empty"
        ref = manifest = None
        try:
            if meta.get("ref"):
                ref = BundleRef(**meta["ref"])
            if meta.get("manifest"):
                manifest = Manifest.from_dict(meta["manifest"])
        except Exception as exc:  # noqa: BLE001 - a damaged slot is reported as bad, never crashes
            return SlotInfo(name, "bad", folder / "bundle", reason=f"slot metadata unreadable: {exc}")
        return SlotInfo(name, status, folder / "bundle", ref, manifest, meta.get("reason"), meta.get("key_id"))

    def active(self) -> SlotInfo | None:
        name = self.active_name()
        return self.info(name) if name else None

    def previous(self) -> SlotInfo | None:
        """The slot that was active before the last switch, if it still holds a usable bundle."""
        name = self.previous_name()
        if not name or name == self.active_name():
            return None
        info = self.info(name)
        return info if info.usable else None

    # --- writing -------------------------------------------------------------------------

    def _write_meta(self, name: str, **fields: Any) -> None:
        folder = self.root / name
        meta = read_json(folder / "slot.json", {}) or {}
        meta.update(fields, updated_at=time.time())
        write_json_atomic(folder / "slot.json", meta)

    def clear(self, name: str) -> None:
        """Empty an inactive slot (refuses the active one)."""
        if name == self.active_name():
            raise SlotError(f"slot {name} is active and cannot be cleared")
        folder = self.root / name
        if folder.exists():
            shutil.rmtree(folder)

    def install(
        self, name: str, bundle: Path, trust: TrustStore, profile: str | None, ref: BundleRef
    ) -> VerifiedBundle:
        """Verify `bundle` and unpack it into the (inactive) slot `name`; status `installed`."""
        self.clear(name)
        self._write_meta(name, status="installing", ref=ref.__dict__, manifest=None, reason=None)
        vb = verify_bundle(bundle, trust, profile=profile, unpack_to=self.root / name / "bundle")
        self._write_meta(name, status="installed", manifest=vb.manifest.to_dict(), key_id=vb.key_id,
                         installed_at=time.time())
        return vb

    def mark(self, name: str, status: str, reason: str | None = None) -> None:
        """Mark a slot good (health check passed) or bad (failed; never booted again)."""
        if status not in ("good", "bad"):
            raise ValueError(f"slot mark must be good or bad, not {status!r}")
        self._write_meta(name, status=status, reason=reason)
        log.info("slot %s marked %s%s", name, status, f" ({reason})" if reason else "")

    def switch(self, name: str) -> None:
        """Make `name` the active slot: one atomic replace of state.json."""
        info = self.info(name)
        if not info.usable:
            raise SlotError(f"slot {name} holds no usable bundle (status {info.status})")
        current = self.active_name()
        if current == name:
            return
        write_json_atomic(self.state_file, {"active": name, "previous": current, "switched_at": time.time()})
        log.info("active slot switched %s -> %s (%s v%s)", current, name, info.ref.name if info.ref else "?",
                 info.ref.version if info.ref else "?")

    def rollback(self) -> SlotInfo:
        """Switch back to the previous slot if it holds a usable bundle; SlotError otherwise."""
        prev = self.previous()
        if prev is None:
            raise SlotError("no previous slot with a usable bundle to roll back to")
        self.switch(prev.name)
        return prev
