"""A damaged download, found by the update's one SHA-256 pass: what counts as damage, the re-check rounds, the error.

Verifying checks the signed manifest (a flipped bit in the first blocks breaks the signature) and installing
hashes every member against it as it unpacks: the only pass over the bundle's bytes on the device (docs/fleet.md,
"One device, one bundle"). An MQTT download that fails either goes back to downloading with `check_blocks`,
where the stored blocks are hashed against the deployment's list and the bad ones fetched again
(transfer.BlockDownloader `recheck`); after MAX_REPAIRS rounds, or once a re-check finds every block as listed,
`refusal` is the error that fails the update.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..bundle.errors import BundleError, CorruptBundle, HashMismatch, SignatureError, UnsafeMember
from .job import UpdateJob, one_line
from .phases import Event
from .transfer import MAX_REPAIRS, BlockDownloader

log = logging.getLogger(__name__)

# What a damaged download looks like to verifying and installing (a bad signature too: a flipped bit in the first
# blocks breaks it). Refusals of an authentic bundle (profile, schema, disk space) are not damage.
DAMAGE = (CorruptBundle, HashMismatch, SignatureError, UnsafeMember)


def damaged(job: UpdateJob, exc: BaseException) -> bool:
    """Whether `exc` sends an MQTT download back to have its blocks re-checked (job.check_blocks) rather than
    failing the update: at most MAX_REPAIRS rounds; a round whose blocks all match ends them (transfer.py)."""
    if job.origin != "mqtt" or not isinstance(exc, DAMAGE) or job.repairs >= MAX_REPAIRS:
        return False
    job.repairs += 1
    job.check_blocks = True
    log.warning("update %s: the downloaded bundle failed its signed check (%s): re-checking its blocks (round %d "
                "of %d)", job.deployment_id, one_line(exc), job.repairs, MAX_REPAIRS)
    return True


def refusal(job: UpdateJob, exc: BundleError) -> BundleError:
    """The error that fails an update whose file stays damaged: a side-loaded file's own; for a download a
    HashMismatch (exit 14, as a wrong file hash always was), naming the check that failed and the re-checks."""
    if job.origin == "file":
        return exc
    rounds = f" after {job.repairs} re-check(s) of its blocks" if job.repairs else ""
    return HashMismatch(f"the downloaded bundle is not the deployment's (SHA-256 {job.ref.sha256[:12]}...){rounds}: "
                        f"{one_line(exc)}")


def damage_event(job: UpdateJob, exc: BundleError) -> Event:
    """What verifying or installing does with a damaged file: Event.DAMAGED (re-check its blocks) while rounds
    remain, else raise the error that fails the update (`refusal`)."""
    if damaged(job, exc):
        return Event.DAMAGED
    err = refusal(job, exc)
    if err is exc:
        raise exc
    raise err from exc


def fetch_blocks(dl: BlockDownloader, job: UpdateJob) -> Path:
    """Run an MQTT download for `job` (the daemon's fetch): after a re-check that found every block as listed, the
    file is what the fleet sent, another round cannot help, and the next failed check ends the update (refusal)."""
    path = dl.run()
    if job.check_blocks and not dl.stats.forged:
        job.repairs = MAX_REPAIRS
    return path


def signature_doc(raw: bytes) -> object:
    """The staged bundle's signature.json as JSON (None when unreadable), to compare with the deployment's."""
    try:
        return json.loads(raw)
    except ValueError:
        return None


__all__ = ["DAMAGE", "damage_event", "damaged", "fetch_blocks", "refusal", "signature_doc"]
