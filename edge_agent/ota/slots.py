"""A/B slots in the agent home, RAUC-style: a slot's lifecycle and its health are two enums.

Layout under `<home>/slots/`:

    state.json          {"active": "a"|"b"|null, "previous": ...}  <- the ONE switch (os.replace)
    a/slot.json         lifecycle (empty|installing|installed), health (unknown|good|bad), bundle ref,
                        manifest, reason, schema_version
    a/bundle/           the unpacked, verified bundle payload
    a/signed/           the bundle's manifest.json and signature.json, byte for byte
    b/...

`Lifecycle.ACTIVE` is never written into slot.json: a slot is active because state.json
names it (one source of truth). When state.json is unreadable (or missing after a switch),
it is rebuilt from the slots themselves, never guessed: the active slot is the good slot
whose files match its own manifest and that was activated last (`activated_at`, written
before every switch); the other one, if usable, is the previous slot. A slot is written only while it is inactive; `switch()`
flips `state.json` atomically, so after a power cut the agent boots either the old or the
new slot, never a mix. slot.json files from before the split (one `status` of
empty|installing|installed|good|bad) are read as the two enums and rewritten on the next change.
When the ACTIVE slot's slot.json is missing or damaged, it is rebuilt from the slot itself (given the
trusted keys): the kept signed manifest verified against them and every file re-hashed
(edge_agent.bundle.unpacked); health becomes `unknown`, so the boot health check runs before serving.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ..bundle import BundleError, Manifest, TrustStore, VerifiedBundle, verify_bundle
from ..bundle.unpacked import keep_signed, verify_unpacked
from .protocol import BundleRef
from .statefile import read_json, write_json_atomic
from ..errors import AgentError

log = logging.getLogger(__name__)

SLOT_NAMES = ("a", "b")
SLOT_SCHEMA_VERSION = 2  # 1 = the single `status` field


class Lifecycle(str, Enum):
    """What a slot holds and whether it is the one being served."""

    EMPTY = "empty"
    INSTALLING = "installing"  # being unpacked (or the unpack was interrupted)
    INSTALLED = "installed"  # a complete, verified bundle, not active
    ACTIVE = "active"  # installed and named by state.json (derived, never stored)

    def __str__(self) -> str:
        return self.value


class Health(str, Enum):
    """What the agent knows about the slot's model: checked good, proven bad, or not checked yet."""

    UNKNOWN = "unknown"
    GOOD = "good"  # passed its health check on this device
    BAD = "bad"  # failed a health check, a boot or its probation: never booted again

    def __str__(self) -> str:
        return self.value


# slot.json schema 1 kept one `status`; how each value reads as (lifecycle, health)
_OLD_STATUS = {
    "empty": (Lifecycle.EMPTY, Health.UNKNOWN),
    "installing": (Lifecycle.INSTALLING, Health.UNKNOWN),
    "installed": (Lifecycle.INSTALLED, Health.UNKNOWN),
    "good": (Lifecycle.INSTALLED, Health.GOOD),
    "bad": (Lifecycle.INSTALLED, Health.BAD),
}


def migrate_slot_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """slot.json content in the current schema (a schema-1 `status` becomes lifecycle + health)."""
    if "status" not in meta or "lifecycle" in meta:
        return meta
    meta = dict(meta)
    lifecycle, health = _OLD_STATUS.get(meta.pop("status"), (Lifecycle.EMPTY, Health.UNKNOWN))
    if lifecycle is Lifecycle.INSTALLED and not meta.get("manifest"):  # marked bad half-way through an install
        lifecycle = Lifecycle.INSTALLING
    return {**meta, "lifecycle": lifecycle.value, "health": health.value}


class SlotError(AgentError, RuntimeError):
    """A slot operation is impossible (e.g. rollback with no good previous slot)."""

    code_name = "slot"
    kind = "slot"


@dataclass
class SlotInfo:
    """What one slot holds."""

    name: str
    lifecycle: Lifecycle
    health: Health
    bundle_dir: Path
    ref: BundleRef | None = None
    manifest: Manifest | None = None
    reason: str | None = None
    key_id: str | None = None

    @property
    def usable(self) -> bool:
        """A complete bundle not proven bad (health good, or not checked yet)."""
        return (self.lifecycle in (Lifecycle.INSTALLED, Lifecycle.ACTIVE) and self.health is not Health.BAD
                and self.manifest is not None and self.bundle_dir.is_dir())

    @property
    def status(self) -> str:
        """One word for people (and the `status` key of `edge-agent status --json`): the health once
        known, the lifecycle before that."""
        if self.health is not Health.UNKNOWN:
            return self.health.value
        return Lifecycle.INSTALLED.value if self.lifecycle is Lifecycle.ACTIVE else self.lifecycle.value

    def to_dict(self) -> dict[str, Any]:
        return {
            "slot": self.name,
            "status": self.status,
            "lifecycle": self.lifecycle.value,
            "health": self.health.value,
            "name": self.ref.name if self.ref else None,
            "version": self.ref.version if self.ref else None,
            "sha256": self.ref.sha256 if self.ref else None,
            "reason": self.reason,
        }


_UNREADABLE = object()


def files_match_manifest(info: SlotInfo) -> bool:
    """Every file the slot's manifest lists is in its bundle folder with that size and SHA-256."""
    from ..bundle import sha256_file

    if info.manifest is None:
        return False
    for entry in info.manifest.files:
        path = info.bundle_dir / entry.path
        try:
            if path.stat().st_size != entry.size or sha256_file(path) != (entry.size, entry.sha256):
                return False
        except OSError:
            return False
    return True


class Slots:
    """The two slots of one agent home. With `trust`, a damaged slot.json of the active slot is rebuilt."""

    def __init__(self, root: Path, trust: TrustStore | None = None) -> None:
        self.root = Path(root)
        self.trust = trust

    # --- reading -------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def _state(self) -> dict[str, Any]:
        state = read_json(self.state_file, _UNREADABLE)
        if state is _UNREADABLE:
            missing = not self.state_file.exists()
            if missing and not any(self._meta(n).get("activated_at") for n in SLOT_NAMES):
                return {}  # nothing was ever switched: a fresh home
            return self._rebuild_state("missing" if missing else "unreadable")
        if not isinstance(state, dict) or any(state.get(k) not in (*SLOT_NAMES, None) for k in ("active", "previous")):
            return self._rebuild_state("not a slot state")
        return state

    def _meta(self, name: str) -> dict[str, Any]:
        meta = read_json(self.root / name / "slot.json", {})
        return migrate_slot_meta(meta) if isinstance(meta, dict) else {}

    def _rebuild_meta(self, name: str) -> bool:
        """slot.json again from the slot's kept signed manifest and its files (False if they do not verify)."""
        folder = self.root / name
        try:
            checked = verify_unpacked(folder / "signed", folder / "bundle", self.trust or TrustStore({}))
        except BundleError as exc:
            log.error("slot %s: slot.json is damaged and the slot cannot be rebuilt: %s", name, exc)
            return False
        m = checked.manifest
        meta = {"lifecycle": Lifecycle.INSTALLED.value, "health": Health.UNKNOWN.value, "manifest": m.to_dict(),
                "ref": BundleRef(m.name, m.version, checked.sha256).__dict__, "key_id": checked.key_id,
                "reason": "slot.json rebuilt from the slot's signed manifest", "rebuilt_at": time.time()}
        log.warning("slot %s: slot.json was damaged: rebuilt from its signed manifest (%s v%s, key %s)", name,
                    m.name, m.version, checked.key_id)
        try:
            write_json_atomic(folder / "slot.json", {**meta, "schema_version": SLOT_SCHEMA_VERSION})
        except OSError as exc:
            log.error("could not store the rebuilt slot.json of slot %s: %s", name, exc)
        return True

    def _rebuild_state(self, why: str) -> dict[str, Any]:
        """state.json again, from each slot's own manifest (files re-hashed) and health mark."""
        usable = {}
        for name in SLOT_NAMES:
            info = self._read_info(name, active=None)
            if info.usable and files_match_manifest(info):
                usable[name] = float(self._meta(name).get("activated_at") or 0.0)
        good = [n for n in usable if self._read_info(n, active=None).health is Health.GOOD]
        active = max(good, key=lambda n: usable[n]) if good else None
        previous = next((n for n in usable if n != active), None) if active else None
        state = {"active": active, "previous": previous, "rebuilt_at": time.time()}
        log.warning("slot state %s was %s: rebuilt from the slots (active %s, previous %s)", self.state_file, why,
                    active, previous)
        try:
            write_json_atomic(self.state_file, state)
        except OSError as exc:
            log.error("could not store the rebuilt slot state: %s", exc)
        return state

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
        active = self.active_name()
        info = self._read_info(name, active=active)
        if name == active and self.trust and not info.usable and self._damaged(name) and self._rebuild_meta(name):
            info = self._read_info(name, active=active)
        return info

    def _damaged(self, name: str) -> bool:
        """slot.json is missing, unreadable or not slot metadata (the active slot always has a valid one)."""
        meta = read_json(self.root / name / "slot.json", None)
        if not isinstance(meta, dict):
            return True
        meta = migrate_slot_meta(meta)
        try:
            lifecycle, _ = Lifecycle(meta.get("lifecycle")), Health(meta.get("health"))
            Manifest.from_dict(meta["manifest"])
            BundleRef(**meta["ref"])
        except Exception:  # noqa: BLE001 - any missing or wrong field
            return True
        return lifecycle is not Lifecycle.INSTALLED

    def _read_info(self, name: str, active: str | None) -> SlotInfo:
        folder = self.root / name
        meta = self._meta(name)
        try:
            lifecycle = Lifecycle(meta.get("lifecycle", "empty"))
            health = Health(meta.get("health", "unknown"))
            if lifecycle is Lifecycle.ACTIVE:
                raise ValueError("lifecycle `active` is never stored (state.json says which slot is active)")
            ref = BundleRef(**meta["ref"]) if meta.get("ref") else None
            manifest = Manifest.from_dict(meta["manifest"]) if meta.get("manifest") else None
        except Exception as exc:  # noqa: BLE001 - a damaged slot is reported as bad, never crashes
            return SlotInfo(name, Lifecycle.INSTALLING, Health.BAD, folder / "bundle",
                            reason=f"slot metadata unreadable: {exc}")
        if lifecycle is Lifecycle.INSTALLED and name == active:
            lifecycle = Lifecycle.ACTIVE
        return SlotInfo(name, lifecycle, health, folder / "bundle", ref, manifest, meta.get("reason"),
                        meta.get("key_id"))

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
        meta = self._meta(name)
        meta.update(fields, schema_version=SLOT_SCHEMA_VERSION, updated_at=time.time())
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
        """Verify `bundle` and unpack it into the (inactive) slot `name`: lifecycle `installed`, health `unknown`.
        It is unpacked beside the slot first, so a bundle that fails its check (a damaged download, found here
        since this is the one pass that hashes it) leaves the slot's previous bundle as it was."""
        incoming = self.root / f".incoming-{name}"
        shutil.rmtree(incoming, ignore_errors=True)
        try:
            vb = verify_bundle(bundle, trust, profile=profile, unpack_to=incoming)
            self.clear(name)
            self._write_meta(name, lifecycle=Lifecycle.INSTALLING.value, health=Health.UNKNOWN.value,
                             ref=ref.__dict__, manifest=None, reason=None)
            os.replace(incoming, self.root / name / "bundle")
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
        keep_signed(vb, self.root / name / "signed")  # lets a damaged slot.json be rebuilt
        self._write_meta(name, lifecycle=Lifecycle.INSTALLED.value, manifest=vb.manifest.to_dict(), key_id=vb.key_id,
                         installed_at=time.time())
        return vb

    def mark_health(self, name: str, health: Health, reason: str | None = None) -> None:
        """Mark a slot good (health check passed) or bad (failed; never booted again)."""
        if health is Health.UNKNOWN:
            raise ValueError("a slot is marked good or bad; `unknown` comes only from a fresh install")
        self._write_meta(name, health=Health(health).value, reason=reason)
        log.info("slot %s marked %s%s", name, health, f" ({reason})" if reason else "")

    def switch(self, name: str) -> None:
        """Make `name` the active slot: one atomic replace of state.json."""
        info = self.info(name)
        if not info.usable:
            raise SlotError(f"slot {name} holds no usable bundle ({info.lifecycle}, health {info.health})")
        current = self.active_name()
        if current == name:
            return
        self._write_meta(name, activated_at=time.time())  # lets a lost state.json be rebuilt
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
