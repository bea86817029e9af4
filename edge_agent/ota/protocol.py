"""The OTA protocol over MQTT: topics and message schemas, shared by the agent and the fleet.

One subtree per device under a configurable prefix (default `edgekit`):

    {prefix}/devices/{id}/desired        fleet -> device, retained   DesiredState (JSON)
    {prefix}/devices/{id}/reported       device -> fleet, retained   ReportedState (JSON)
    {prefix}/devices/{id}/presence       device -> fleet, retained   Presence (JSON; last will = offline)
    {prefix}/devices/{id}/telemetry      device -> fleet             Telemetry (JSON)
    {prefix}/devices/{id}/blocks/get     device -> fleet             BlockRequest (JSON)
    {prefix}/devices/{id}/blocks/data    fleet -> device             block frames (binary, see block_frames.py)

Modelled on AWS IoT device shadows (desired/reported) and MQTT file streams (the device asks
for the blocks it still needs; each block carries its index and SHA-256), with Sparkplug/Homie
style presence through a retained last-will message. A device writes only below its own
subtree, so a broker ACL with `pattern write {prefix}/devices/%u/#` confines it.

Every parser here raises ProtocolError with a one-line reason on malformed input; receivers
log and ignore such messages. Receivers also check that a message's topic is inside the
subtree they subscribed to (some brokers deliver retained messages to non-matching filters).
"""

from __future__ import annotations

import base64
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..finite_json import dumps as finite_dumps
from .phases import Phase
from .protocol_fields import (_ID_RE, _SHA_RE, MAX_INT, MAX_JSON_BYTES, ProtocolError, _count, _counter,  # noqa: F401
                              _finite, _fraction, _get, _load, _numbers, _series_id)

DEFAULT_PREFIX = "edgekit"
DEFAULT_BLOCK_SIZE = 128 * 1024
MAX_BLOCKS_PER_REQUEST = 64
MIN_BLOCK_SIZE, MAX_BLOCK_SIZE = 1024, 16 * 1024 * 1024
MAX_BLOCKS = 1 << 16  # blocks of one download whatever a message announces: its bitmap and hash list stay bounded
BLOCK_HASH_BYTES = 32  # a SHA-256 per block in DesiredState.block_hashes

# The phase names a device reports: one enum (edge_agent.ota.phases), the whole update state machine.
PHASES: tuple[str, ...] = tuple(p.value for p in Phase)


# --- topics -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topics:
    """Topic names for one prefix. `device(id)` gives one device's topics."""

    prefix: str = DEFAULT_PREFIX

    def device_root(self, device_id: str) -> str:
        check_device_id(device_id)
        return f"{self.prefix}/devices/{device_id}"

    def desired(self, device_id: str) -> str:
        return f"{self.device_root(device_id)}/desired"

    def reported(self, device_id: str) -> str:
        return f"{self.device_root(device_id)}/reported"

    def presence(self, device_id: str) -> str:
        return f"{self.device_root(device_id)}/presence"

    def telemetry(self, device_id: str) -> str:
        return f"{self.device_root(device_id)}/telemetry"

    def block_request(self, device_id: str) -> str:
        return f"{self.device_root(device_id)}/blocks/get"

    def block_data(self, device_id: str) -> str:
        return f"{self.device_root(device_id)}/blocks/data"

    # wildcard subscriptions used by the fleet
    def all_reported(self) -> str:
        return f"{self.prefix}/devices/+/reported"

    def all_presence(self) -> str:
        return f"{self.prefix}/devices/+/presence"

    def all_telemetry(self) -> str:
        return f"{self.prefix}/devices/+/telemetry"

    def all_block_requests(self) -> str:
        return f"{self.prefix}/devices/+/blocks/get"

    def parse(self, topic: str) -> tuple[str, str]:
        """(device_id, kind) for a topic inside this prefix's device tree; ProtocolError otherwise.

        kind is one of desired, reported, presence, telemetry, blocks/get, blocks/data.
        """
        head = f"{self.prefix}/devices/"
        if not topic.startswith(head):
            raise ProtocolError(f"topic {topic!r} is outside {head}#")
        rest = topic[len(head) :]
        device_id, _, kind = rest.partition("/")
        check_device_id(device_id)
        if kind not in ("desired", "reported", "presence", "telemetry", "blocks/get", "blocks/data"):
            raise ProtocolError(f"topic {topic!r} has an unknown message kind {kind!r}")
        return device_id, kind


def check_deployment_id(deployment_id: str) -> str:
    if not 0 < len(deployment_id) <= 128 or not deployment_id.isprintable():
        raise ProtocolError("deployment id must be 1-128 printable characters")
    return deployment_id


def check_device_id(device_id: str) -> str:
    if not isinstance(device_id, str) or not _ID_RE.match(device_id):
        raise ProtocolError(f"device id {device_id!r} must be 1-64 of [A-Za-z0-9._-] and not start with a symbol")
    return device_id


# --- JSON messages ------------------------------------------------------------------------


def dumps(message: Any) -> bytes:
    """Serialise a protocol dataclass as compact, strict JSON (finite_json: a NaN in per-frame results is null)."""
    return finite_dumps(asdict(message), separators=(",", ":"), sort_keys=True).encode("utf-8")


@dataclass
class BundleRef:
    """Which bundle: name, version and the SHA-256 of the whole .edgebundle file."""

    name: str
    version: int
    sha256: str

    @classmethod
    def from_obj(cls, obj: Any, what: str) -> "BundleRef":
        if not isinstance(obj, dict):
            raise ProtocolError(f"{what} must be an object")
        sha = _get(obj, "sha256", str, what)
        if not _SHA_RE.match(sha):
            raise ProtocolError(f"{what}.sha256 is not a lowercase hex SHA-256")
        version = _get(obj, "version", int, what)
        if not 1 <= version <= MAX_INT:
            raise ProtocolError(f"{what}.version must be between 1 and {MAX_INT}")
        return cls(name=_get(obj, "name", str, what), version=version, sha256=sha)


@dataclass
class ShadowGate:
    """A deployment's shadow gate (edge-fleet deploy --min-shadow-agreement/--shadow-frames): before the
    switch the new model answers `frames` live frames beside the active one and is switched to only if
    it agrees on at least `min_agreement` of them (edge_agent.monitor.shadow). `every`: offer every
    n-th live frame; `timeout_s`: how long to wait for live frames."""

    min_agreement: float
    frames: int = 300
    timeout_s: float = 300.0
    every: int = 1

    @classmethod
    def from_obj(cls, obj: Any, what: str = "desired.shadow") -> "ShadowGate":
        if not isinstance(obj, dict):
            raise ProtocolError(f"{what} must be an object")
        def opt(key: str, kind: type | tuple, default: Any) -> Any:
            value = _get(obj, key, kind, what, optional=True)
            return default if value is None else value

        gate = cls(min_agreement=_finite(_get(obj, "min_agreement", (int, float), what), f"{what}.min_agreement"),
                   frames=opt("frames", int, 300), timeout_s=_finite(opt("timeout_s", (int, float), 300.0), what),
                   every=opt("every", int, 1))
        if not (0.0 <= gate.min_agreement <= 1.0 and gate.frames >= 1 and 0 < gate.timeout_s < 1e9
                and gate.every >= 1):  # written with `not`: NaN fails too
            raise ProtocolError(f"{what} needs 0 <= min_agreement <= 1, frames >= 1, timeout_s > 0, every >= 1")
        return gate


@dataclass
class DesiredState:
    """What the fleet wants a device to run (retained on .../desired).

    `source` is {"type": "mqtt"} (blocks over this broker) or {"type": "http", "url": ...}.
    `signature` is the bundle's signature.json content (algorithm, key_id, signature), so a
    device can refuse an untrusted signer before downloading. `allow_downgrade` is set only
    when the fleet explicitly rolls a device back to a lower version. `block_hashes` (base64 of
    one 32-byte SHA-256 per block, in order) lets a device find which stored blocks spoilt the
    file's SHA-256 and fetch only those again: only the fleet may write `desired` (broker ACL), so a
    forged block frame costs one block, not the whole file (transfer.py). Every field is parsed strictly by type.
    """

    deployment_id: str
    bundle: BundleRef
    size: int
    profile: str
    signature: dict[str, Any]
    source: dict[str, Any] = field(default_factory=lambda: {"type": "mqtt"})
    block_size: int = DEFAULT_BLOCK_SIZE
    allow_downgrade: bool = False
    issued_at: float = field(default_factory=time.time)
    block_hashes: str | None = None
    shadow: ShadowGate | None = None  # run the new model in shadow before the switch (None: switch after the health check)

    @property
    def block_count(self) -> int:
        return max(1, -(-self.size // self.block_size))

    def block_digests(self) -> list[bytes] | None:
        """The fleet's per-block SHA-256 digests (None when the deployment carries none)."""
        if self.block_hashes is None:
            return None
        raw = base64.b64decode(self.block_hashes)
        return [raw[i : i + BLOCK_HASH_BYTES] for i in range(0, len(raw), BLOCK_HASH_BYTES)]

    @classmethod
    def parse(cls, payload: bytes) -> "DesiredState":
        w = "desired"
        o = _load(payload, w)
        size = _get(o, "size", int, w)
        block_size = _get(o, "block_size", int, w)
        if size <= 0 or not (MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE):
            raise ProtocolError("desired message has an invalid size or block_size")
        if -(-size // block_size) > MAX_BLOCKS:
            raise ProtocolError(f"desired message announces {-(-size // block_size)} blocks, over the "
                                f"{MAX_BLOCKS}-block limit (use a larger block_size)")
        source = _get(o, "source", dict, w)
        if source.get("type") not in ("mqtt", "http"):
            raise ProtocolError("desired.source.type must be 'mqtt' or 'http'")
        if source["type"] == "http" and not _get(source, "url", str, "desired.source").startswith(("http://", "https://")):
            raise ProtocolError("desired.source.url must be an http(s) URL")
        signature = _get(o, "signature", dict, w)
        for key in ("algorithm", "key_id", "signature"):
            _get(signature, key, str, "desired.signature")
        issued_at = _finite(_get(o, "issued_at", (int, float), w), "desired.issued_at")
        desired = cls(
            deployment_id=check_deployment_id(_get(o, "deployment_id", str, w)),
            bundle=BundleRef.from_obj(o.get("bundle"), "desired.bundle"),
            size=size,
            profile=_get(o, "profile", str, w),
            signature=signature,
            source=source,
            block_size=block_size,
            allow_downgrade=_get(o, "allow_downgrade", bool, w, optional=True) or False,
            issued_at=issued_at,
            block_hashes=_get(o, "block_hashes", str, w, optional=True),
            shadow=ShadowGate.from_obj(o["shadow"]) if o.get("shadow") is not None else None,
        )
        if desired.block_hashes is not None:
            try:
                raw = base64.b64decode(desired.block_hashes, validate=True)
            except ValueError:
                raise ProtocolError("desired.block_hashes is not base64") from None
            if len(raw) != desired.block_count * BLOCK_HASH_BYTES:
                raise ProtocolError(f"desired.block_hashes holds {len(raw) // BLOCK_HASH_BYTES} hashes for "
                                    f"{desired.block_count} blocks")
        return desired


@dataclass
class ReportedState:
    """What a device says about itself (retained on .../reported)."""

    device_id: str
    phase: str
    profile: str
    agent_version: str
    current: BundleRef | None = None
    previous: BundleRef | None = None
    deployment_id: str | None = None
    target: BundleRef | None = None  # the bundle being installed, during an update
    progress: float = 0.0  # 0..1 of the download
    last_error: str | None = None
    updated_at: float = field(default_factory=time.time)
    shadow: dict[str, Any] | None = None  # the last shadow run's figures (edge_agent.monitor.shadow.ShadowReport)
    drift: dict[str, Any] | None = None  # the served model's drift state and PSI scores (edge_agent.monitor.drift)
    boot_id: str | None = None  # with seq: the order of this device's reports (report_order.py; older agents omit them)
    seq: int | None = None

    @classmethod
    def parse(cls, payload: bytes) -> "ReportedState":
        w = "reported"
        o = _load(payload, w)
        phase = _get(o, "phase", str, w)
        if phase not in PHASES:
            raise ProtocolError(f"reported.phase {phase!r} is not one of {', '.join(PHASES)}")

        def ref(key: str) -> BundleRef | None:
            return BundleRef.from_obj(o[key], f"reported.{key}") if o.get(key) is not None else None

        return cls(
            device_id=check_device_id(_get(o, "device_id", str, w)),
            phase=phase,
            profile=_get(o, "profile", str, w),
            agent_version=_get(o, "agent_version", str, w),
            current=ref("current"),
            previous=ref("previous"),
            deployment_id=_get(o, "deployment_id", str, w, optional=True),
            target=ref("target"),
            progress=_fraction(_get(o, "progress", (int, float), w, optional=True) or 0.0, "reported.progress"),
            last_error=_get(o, "last_error", str, w, optional=True),
            updated_at=_finite(_get(o, "updated_at", (int, float), w), "reported.updated_at"),
            shadow=_get(o, "shadow", dict, w, optional=True),
            drift=_get(o, "drift", dict, w, optional=True),
            boot_id=_series_id(_get(o, "boot_id", str, w, optional=True)),
            seq=_counter(_get(o, "seq", int, w, optional=True), "reported.seq"),
        )


@dataclass
class Presence:
    """online/offline (retained on .../presence; the offline form is the MQTT last will)."""

    state: str  # online | offline
    at: float = field(default_factory=time.time)

    @classmethod
    def parse(cls, payload: bytes) -> "Presence":
        o = _load(payload, "presence")
        state = _get(o, "state", str, "presence")
        if state not in ("online", "offline"):
            raise ProtocolError("presence.state must be 'online' or 'offline'")
        return cls(state=state, at=_finite(_get(o, "at", (int, float), "presence", optional=True) or 0.0, "presence.at"))


@dataclass
class Telemetry:
    """Periodic figures from a device: latency percentiles (ms), counts, model."""

    model: BundleRef | None
    inferences: int
    errors: int
    latency: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    @classmethod
    def parse(cls, payload: bytes) -> "Telemetry":
        w = "telemetry"
        o = _load(payload, w)
        return cls(
            model=BundleRef.from_obj(o["model"], "telemetry.model") if o.get("model") else None,
            inferences=_count(o, "inferences"), errors=_count(o, "errors"),
            latency=_numbers(_get(o, "latency", dict, w, optional=True) or {}, "telemetry.latency"),
            extra=_get(o, "extra", dict, w, optional=True) or {},
            at=_finite(_get(o, "at", (int, float), w, optional=True) or 0.0, "telemetry.at"),
        )
