"""The whole-file SHA-256 the downloader computes while the download runs, and verifying's use of it.

What must hold: a corrupt block is still found and fetched again, the file's digest equals the SHA-256 of
the file however the blocks arrived (in order, out of order, after a restart), and verifying refuses the
file when that digest is not the deployment's (and reads the file itself when there is none)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from edge_agent.bundle import HashMismatch, TrustStore
from edge_agent.home import AgentHome
from edge_agent.ota.file_digest import InOrderDigest
from edge_agent.ota.job import UpdateJob
from edge_agent.ota.protocol import BundleRef, DesiredState
from edge_agent.ota.states import InstallContext, Verifying, staging_dir
from edge_agent.ota.transfer import BlockDownloader

from .test_block_download import BLOCK, WAIT, Feeder, bundle_file, download, listed, run_in_thread


def test_the_file_digest_is_the_files_and_is_computed_while_storing(tmp_path):
    data, sha, digests = bundle_file(tmp_path, 60)
    feeder = Feeder(data, sha, gap_s=0.0005, as_view=True)
    dl = BlockDownloader(tmp_path, sha, len(data), BLOCK, send_request=feeder.send, block_digests=digests, window=16)
    download(dl, feeder, sha)
    assert dl.stats.received == 60 and dl.file_sha256 == sha


def test_a_corrupt_block_is_refused_fetched_again_and_the_digest_still_matches(tmp_path):
    data, sha, digests = bundle_file(tmp_path, 40)
    feeder = Feeder(data, sha, corrupt=frozenset({0, 17}), as_view=True)  # block 0 comes last: a gap at the start
    dl = BlockDownloader(tmp_path, sha, len(data), BLOCK, send_request=feeder.send, block_digests=digests,
                         retry_timeout_s=0.3)
    download(dl, feeder, sha)
    assert dl.stats.forged == 2 and dl.stats.received == 42  # stored, found by the file's hash, stored again
    assert feeder.asked.count(0) == 2 and feeder.asked.count(17) == 2
    assert dl.file_sha256 == sha


def interrupted_download(tmp_path, data: bytes, sha: str, hashes, serve: int, persist_blocks: int,
                         stored: int) -> tuple[BlockDownloader, dict]:
    """A first run that stalls after `serve` blocks, cancelled (as when the agent is killed) once the bitmap lists
    at least `stored` blocks: what a restart resumes from."""
    first = Feeder(data, sha, serve=serve)
    dl = BlockDownloader(tmp_path, sha, len(data), BLOCK, send_request=first.send, block_digests=hashes,
                         persist_bytes=persist_blocks * BLOCK, stall_timeout_s=WAIT)
    first.start(dl)
    thread, out = run_in_thread(dl)
    try:
        while len(listed(dl.bitmap_path)) < stored and thread.is_alive():
            thread.join(0.01)
    finally:
        dl._cancel.set()  # noqa: SLF001 - the agent's cancel event
        thread.join(WAIT)
        first.stop()
        dl.close()
    return dl, out


def test_a_resumed_download_digests_the_blocks_an_earlier_run_stored(tmp_path):
    data, sha, digests = bundle_file(tmp_path, 50)
    _, out = interrupted_download(tmp_path, data, sha, digests, serve=20, persist_blocks=4, stored=16)
    assert "error" in out
    again = Feeder(data, sha)
    dl2 = BlockDownloader(tmp_path, sha, len(data), BLOCK, send_request=again.send, block_digests=digests)
    assert dl2.stats.resumed_with >= 16
    download(dl2, again, sha)
    assert dl2.file_sha256 == sha  # the earlier run's blocks are in it


@pytest.mark.parametrize("listed_hashes", [True, False], ids=["deployment-list", "frame-claims"])
def test_a_stored_block_spoilt_before_a_resume_is_found_and_fetched_again(tmp_path, listed_hashes):
    """A block the bitmap lists but whose bytes on disk went bad between runs (a torn write, a bad sector):
    the file's SHA-256 is wrong, the deployment's list finds that block alone; without a list the earlier run's
    blocks have no claim in this run, so all of them are fetched again (never the whole file as before)."""
    data, sha, digests = bundle_file(tmp_path, 30)
    hashes = digests if listed_hashes else None
    dl, _ = interrupted_download(tmp_path, data, sha, hashes, serve=12, persist_blocks=2, stored=10)
    saved = listed(dl.bitmap_path)
    assert 5 in saved
    with open(dl.part_path, "r+b") as fh:  # spoil block 5 on disk
        fh.seek(5 * BLOCK)
        fh.write(bytes(BLOCK))
    again = Feeder(data, sha)
    dl2 = BlockDownloader(tmp_path, sha, len(data), BLOCK, send_request=again.send, block_digests=hashes)
    download(dl2, again, sha)
    assert dl2.file_sha256 == sha and dl2.stats.repairs == 1
    refetched = sorted(again.asked[30 - len(saved):])
    assert refetched == ([5] if listed_hashes else sorted(saved))


def test_the_digest_hashes_in_file_order_up_to_the_first_gap_and_wrong_bytes_give_another_digest():
    blocks = [os.urandom(100) for _ in range(4)]
    file = b"".join(blocks)
    reads: list[tuple[int, int]] = []

    def read(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return file[offset:offset + length]

    digest = InOrderDigest(4, 100, 400, read)
    done = [True, True, False, True]  # block 2 not stored yet
    assert digest.ready(done, 2) and not digest.ready(done, 3)
    assert digest.catch_up(done, 10**9) == 200 and digest.next == 2 and digest.hexdigest() is None
    assert reads == [(0, 200)]  # contiguous blocks in one read
    done[2] = True
    assert digest.catch_up(done, 10**9) == 200 and digest.hexdigest() == hashlib.sha256(file).hexdigest()
    assert not digest.ready(done, 1) and digest.catch_up(done, 10**9) == 0
    other = InOrderDigest(4, 100, 400, lambda offset, length: bytes(length))  # not the file's bytes
    other.catch_up([True] * 4, 10**9)
    assert other.hexdigest() is not None and other.hexdigest() != hashlib.sha256(file).hexdigest()


def _verify_context(tmp_path: Path, content: bytes, staged_sha256: str | None) -> InstallContext:
    home = AgentHome(tmp_path / "home")
    sha = hashlib.sha256(content).hexdigest()
    staged = staging_dir(home) / f"{sha}.part"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(content)
    desired = DesiredState(deployment_id="dep-1", bundle=BundleRef("digits", 2, sha), size=len(content),
                           profile="raspberry-pi-4", signature={})
    job = UpdateJob.for_desired(desired)
    job.staged, job.staged_sha256 = str(staged), staged_sha256
    return InstallContext(home=home, trust=TrustStore({}), profile_name="raspberry-pi-4", latency_budget_ms=None,
                          job=job, fetch=lambda ctx: staged)


def test_verifying_refuses_the_file_when_the_downloaders_digest_is_not_the_deployments(tmp_path):
    ctx = _verify_context(tmp_path, os.urandom(5000), staged_sha256="00" * 32)  # the file itself would match
    with pytest.raises(HashMismatch, match="SHA-256 000000000000"):
        Verifying().run(ctx)
    assert not Path(ctx.job.staged).exists()  # discarded: fetched again on the next attempt


def test_verifying_without_the_downloaders_digest_hashes_the_file(tmp_path):
    """After a restart (the digest is not persisted) or an HTTP download: the file is read; here it matches,
    so verifying goes on to the bundle's signature, which these random bytes do not have."""
    ctx = _verify_context(tmp_path, os.urandom(5000), staged_sha256=None)
    with pytest.raises(Exception) as caught:
        Verifying().run(ctx)
    assert not isinstance(caught.value, HashMismatch), caught.value
    assert "staged_sha256" not in ctx.job.to_record()  # never persisted
