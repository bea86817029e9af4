"""One update job and its persisted record, `<home>/ota/update.json`.

The record carries a schema version and a store counter: every store increments
`state_stores`, and the runner ends a job whose phase has been stored more often than
`phases.store_limit` allows (a crash inside a phase would otherwise resume into the same
crash forever). Records written before the schema version existed are read as version 1
with the counter at 0; records from a newer agent are ignored with a warning.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..home import AgentHome
from .phases import Event, Phase, next_phase
from .protocol import BundleRef, DesiredState, ProtocolError, ShadowGate
from .statefile import read_json, write_json_atomic
from ..errors import AgentError

log = logging.getLogger(__name__)

JOB_SCHEMA_VERSION = 1


class StateLoopDetected(AgentError, RuntimeError):
    """The job was stored more often than its phase allows: a crash inside the phase, again and again."""

    code_name = "error"
    kind = "state-loop"


@dataclass
class UpdateJob:
    """One update attempt, as persisted in update.json."""

    deployment_id: str
    desired: dict[str, Any]  # DesiredState as a dict
    origin: str = "mqtt"  # mqtt | http | file
    phase: Phase = Phase.DOWNLOADING
    target_slot: str | None = None
    staged: str | None = None  # the downloaded/copied bundle file
    side_loaded_from: str | None = None
    last_error: str | None = None
    error_kind: str | None = None
    exit_code: int | None = None
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    state_stores: int = 0  # how many times this job was stored (see phases.MAX_STATE_STORES)
    shadow: dict[str, Any] | None = None  # the shadow run's report (phase shadowing), kept for reports after it
    progress: float = 0.0  # not persisted: the download resumes from its own bitmap
    # verifying or installing found the downloaded file damaged (it failed its signed check): downloading
    # hashes the stored blocks against the deployment's list and fetches the bad ones again (block_check.py)
    check_blocks: bool = False
    repairs: int = 0  # such rounds so far; at transfer.MAX_REPAIRS the check's own error fails the update

    @property
    def desired_state(self) -> DesiredState:
        d = dict(self.desired)
        d["bundle"] = BundleRef(**d["bundle"]) if isinstance(d["bundle"], dict) else d["bundle"]
        if isinstance(d.get("shadow"), dict):
            d["shadow"] = ShadowGate(**d["shadow"])
        return DesiredState(**d)

    @property
    def ref(self) -> BundleRef:
        return self.desired_state.bundle

    @classmethod
    def for_desired(cls, desired: DesiredState, origin: str | None = None, side_loaded_from: str | None = None,
                    phase: Phase = Phase.DOWNLOADING) -> "UpdateJob":
        return cls(deployment_id=desired.deployment_id, desired=asdict(desired), phase=phase,
                   origin=origin or desired.source.get("type", "mqtt"), side_loaded_from=side_loaded_from)

    def apply(self, event: Event) -> Phase:
        """Move to the phase the transition table gives for `event` (InvalidTransition if none)."""
        before, self.phase = self.phase, next_phase(self.phase, event)
        if self.phase is not before:
            log.debug("update %s: %s --%s--> %s", self.deployment_id, before, event, self.phase)
        return self.phase

    def record_failure(self, phase: Phase, exc: BaseException) -> None:
        """Keep what went wrong (one line, its kind and exit code) for the report and the CLI."""
        self.last_error = f"{phase}: {one_line(exc)}"
        self.error_kind = getattr(exc, "kind", exc.__class__.__name__)
        self.exit_code = getattr(exc, "exit_code", None) or 1

    def clear_failure(self) -> None:
        self.last_error = self.error_kind = self.exit_code = None

    def to_record(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("progress", None)
        data["phase"] = self.phase.value
        data["schema_version"] = JOB_SCHEMA_VERSION
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> "UpdateJob":
        """The job in a stored record (TypeError/KeyError/ValueError/ProtocolError if it is not one)."""
        fields = {k: v for k, v in data.items()
                  if k in cls.__dataclass_fields__ and k != "progress"}
        fields["phase"] = Phase(fields.get("phase", Phase.DOWNLOADING))
        if not isinstance(fields.get("state_stores", 0), int):
            raise TypeError("state_stores is not an integer")
        job = cls(**fields)
        job.desired_state  # validate
        return job


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def job_file(home: AgentHome) -> Path:
    return home.ota_dir / "update.json"


def load_job(home: AgentHome) -> UpdateJob | None:
    """The persisted job (any phase), or None (none, unreadable, or written by a newer agent)."""
    path = job_file(home)
    data = read_json(path, None)
    if not isinstance(data, dict):
        return None
    version = data.get("schema_version")
    if version is None:
        log.warning("%s has no schema version (written by an older agent): reading it as version %d, "
                    "store counter from 0", path, JOB_SCHEMA_VERSION)
    elif not isinstance(version, int) or version > JOB_SCHEMA_VERSION:
        log.warning("%s has schema version %r, which this agent (version %d) cannot read: the job it "
                    "describes is abandoned", path, version, JOB_SCHEMA_VERSION)
        return None
    try:
        return UpdateJob.from_record(data)
    except (TypeError, KeyError, ValueError, ProtocolError) as exc:
        log.warning("ignoring unreadable update job in %s: %s", path, one_line(exc))
        return None


def save_job(home: AgentHome, job: UpdateJob) -> None:
    """Store the job atomically; each store counts (the state-loop limit reads the count)."""
    job.state_stores += 1
    job.updated_at = time.time()
    write_json_atomic(job_file(home), job.to_record())
