"""`edge-fleet publish`: verify a bundle against the fleet's trusted keys and store it."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from edge_agent.bundle import InsufficientSpace, TrustStore, sha256_file, verify_bundle
from edge_agent.bundle.archive import read_signature_doc

from .errors import FleetUsageError, VersionConflict
from .registry import BundleRecord, Registry

log = logging.getLogger(__name__)


@contextmanager
def store_space(store: Path, name: str) -> Iterator[None]:
    """A full bundle store was `[Errno 28] No space left on device`, exit 1 (an API 500): the disk-space error now."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise InsufficientSpace(f"no space left in the bundle store {store} for {name}: free space there "
                                "(or give the fleet a larger disk) and publish again") from None


def publish_bundle(registry: Registry, path: Path, trust: TrustStore) -> BundleRecord:
    """Verify `path` end to end (signature, hashes, manifest) and copy it into the fleet store.

    Raises the bundle's own BundleError subclass (SignatureError, HashMismatch, ...) when it
    does not verify; nothing is stored then. Publishing the same file again is a no-op.
    """
    path = Path(path)
    if not path.is_file():
        raise FleetUsageError(f"{path} does not exist or is not a file")
    registry.store_dir.mkdir(parents=True, exist_ok=True)
    # the copy keeps the file's own name, so verification errors name what the user gave us
    tmp_dir = Path(tempfile.mkdtemp(dir=registry.store_dir, prefix=".publish-"))
    tmp = tmp_dir / path.name
    try:
        with store_space(registry.store_dir, path.name):
            shutil.copyfile(path, tmp)  # verify the copy we keep, not a file that may still change
        verified = verify_bundle(tmp, trust)  # raises a typed BundleError on any problem
        size, sha = sha256_file(tmp)
        signature = read_signature_doc(tmp)
        m = verified.manifest
        clash = [b for b in registry.bundles_named(m.name, m.version) if b.profile == m.profile and b.sha256 != sha]
        if clash:
            raise VersionConflict.immutable(m.name, m.version, m.profile, clash[0].sha256)
        stored = registry.store_dir / f"{sha}.edgebundle"
        os.replace(tmp, stored)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    rec = BundleRecord(sha256=sha, name=m.name, version=m.version, profile=m.profile, size=size,
                       manifest=m.to_dict(), signature=signature, key_id=verified.key_id, path=stored,
                       published_at=time.time())
    try:
        registry.add_bundle(rec)
    except VersionConflict:  # another file won the race for NAME:VERSION since the check above
        stored.unlink(missing_ok=True)
        raise
    log.info("published %s v%d (%s) sha256=%s", m.name, m.version, m.profile, sha)
    return rec
