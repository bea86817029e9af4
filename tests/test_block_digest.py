"""One SHA-256 pass per update on the device: installing's check of every member against the signed manifest.

The downloader hashes nothing on the happy path and verifying reads only the signed manifest; a damaged
download is found by installing's check (or verifying's signature check), sent back to downloading with
`check_blocks`, where every block is hashed against the deployment's list and only the bad ones are fetched
again. What must hold: a corrupt block in transit is still repaired; a bundle that is bad at the source (its
blocks are what the fleet listed) fails with its own exit code; neither touches the working model nor the
inactive slot's previous bundle; a resume still fetches only what is missing; and the bytes hashed from
receipt to installed are one pass, counted, not timed."""

from __future__ import annotations

import hashlib
import os
import queue
import tarfile
import threading
from pathlib import Path

import pytest

from edge_agent.bundle import Manifest, TensorSpec, TrustStore, generate_keypair, load_private_key, write_bundle
from edge_agent.bundle.archive import read_signature_doc
from edge_agent.home import AgentHome
from edge_agent.ota.block_frames import Block, encode_block
from edge_agent.ota.installer import run_update
from edge_agent.ota.job import UpdateJob
from edge_agent.ota.phases import Event, Phase
from edge_agent.ota.protocol import BundleRef, DesiredState
from edge_agent.ota.slots import Health, Slots
from edge_agent.ota.damage import fetch_blocks
from edge_agent.ota.states import STATES, InstallContext, staging_dir
from edge_agent.ota.transfer import MAX_REPAIRS, BlockDownloader

from .test_block_download import BLOCK, WAIT, Feeder, bundle_file, download, listed, run_in_thread

PROFILE = "raspberry-pi-4"


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


def test_a_resumed_download_fetches_only_the_blocks_an_earlier_run_did_not_store(tmp_path):
    data, sha, digests = bundle_file(tmp_path, 50)
    dl, out = interrupted_download(tmp_path, data, sha, digests, serve=20, persist_blocks=4, stored=16)
    assert "error" in out
    saved = listed(dl.bitmap_path)
    again = Feeder(data, sha)
    dl2 = BlockDownloader(tmp_path, sha, len(data), BLOCK, send_request=again.send, block_digests=digests)
    assert dl2.stats.resumed_with == len(saved) >= 16
    download(dl2, again, sha)  # the file is the bundle: the earlier run's blocks are in it
    assert not set(again.asked) & saved


@pytest.mark.parametrize("listed_hashes", [True, False], ids=["deployment-list", "frame-claims"])
def test_a_stored_block_spoilt_before_a_resume_is_found_by_a_recheck(tmp_path, listed_hashes):
    """A block the bitmap lists but whose bytes on disk went bad between runs (a torn write, a bad sector): the
    install check fails, the re-check finds that block alone by the deployment's list; without a list the
    earlier run's frame claims are gone after a restart, so every block is fetched again."""
    data, sha, digests = bundle_file(tmp_path, 30)
    hashes = digests if listed_hashes else None
    dl, _ = interrupted_download(tmp_path, data, sha, hashes, serve=12, persist_blocks=2, stored=10)
    assert 5 in listed(dl.bitmap_path)
    with open(dl.part_path, "r+b") as fh:  # spoil block 5 on disk
        fh.seek(5 * BLOCK)
        fh.write(bytes(BLOCK))
    again = Feeder(data, sha)
    dl2 = BlockDownloader(tmp_path, sha, len(data), BLOCK, send_request=again.send, block_digests=hashes,
                          recheck=True)
    download(dl2, again, sha)
    assert sorted(again.asked) == ([5, *range(12, 30)] if listed_hashes else list(range(30)))


# --- the update's phases on a real signed bundle ---------------------------------------------------------------


class Frames:
    """Answers BlockRequests with frames encoded up front (so the fleet side's hashing is not counted), from one
    thread as paho's network thread does; `damaged` blocks get a wrong last data byte (once, or `always`)."""

    def __init__(self, data: bytes, sha: str, damaged: set[int] = frozenset(), always: bool = False) -> None:
        total = -(-len(data) // BLOCK)
        self.frames = [encode_block(Block(sha, i, total, data[i * BLOCK:(i + 1) * BLOCK])) for i in range(total)]
        self.damaged, self.always, self.asked = set(damaged), always, []
        self.dl: BlockDownloader | None = None
        self.requests: "queue.Queue[list[int]]" = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def send(self, req) -> None:
        self.asked.extend(req.blocks)
        self.requests.put(list(req.blocks))

    def _run(self) -> None:
        while True:
            for i in self.requests.get():
                frame = self.frames[i]
                if i in self.damaged:
                    if not self.always:
                        self.damaged.discard(i)
                    frame = frame[:-1] + bytes([frame[-1] ^ 0x01])
                self.dl.on_frame(frame)


def make_bundle(folder: Path, version: int, payload: bytes) -> tuple[Path, Path]:
    """A real signed bundle (random model bytes: the states up to installing never load it); (bundle, public key)."""
    key, pub = generate_keypair(folder / "keys") if not (folder / "keys").exists() else \
        (folder / "keys" / "signing.key", folder / "keys" / "signing.pub")
    model = folder / f"model-v{version}.onnx"
    model.write_bytes(payload)
    m = Manifest(name="pass", version=version, profile=PROFILE, format="onnx", runtime="onnxruntime",
                 precision="fp32", model_file="model.onnx", inputs=[TensorSpec("x", "float32", [1, 4])],
                 outputs=[TensorSpec("y", "float32", [1, 2])])
    return write_bundle(folder / f"pass-v{version}.edgebundle", m, {"model.onnx": model}, load_private_key(key)), pub


def context(home: AgentHome, bundle: Path, pub: Path, frames: Frames) -> InstallContext:
    """An MQTT update job for `bundle` whose fetch is the real downloader (as the daemon wires it) fed by `frames`."""
    data = bundle.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    digests = [hashlib.sha256(data[i:i + BLOCK]).digest() for i in range(0, len(data), BLOCK)]
    desired = DesiredState(deployment_id=f"dep-{sha[:8]}", bundle=BundleRef("pass", int(bundle.stem[-1]), sha),
                           size=len(data), profile=PROFILE, signature=read_signature_doc(bundle), block_size=BLOCK)

    def fetch(ctx: InstallContext) -> Path:
        dl = BlockDownloader(staging_dir(home), sha, len(data), BLOCK, send_request=frames.send, block_digests=digests,
                             recheck=ctx.job.check_blocks)
        frames.dl = dl
        try:
            return fetch_blocks(dl, ctx.job)
        finally:
            dl.close()

    return InstallContext(home=home, trust=TrustStore.from_paths([pub]), profile_name=PROFILE, latency_budget_ms=None,
                          job=UpdateJob.for_desired(desired), fetch=fetch)


def until_health_check(ctx: InstallContext) -> list[Event]:
    """Run the real states from downloading to the health check (which would load the model); the events."""
    events = []
    while ctx.job.phase is not Phase.HEALTH_CHECK:
        events.append(STATES[ctx.job.phase].run(ctx))
        ctx.job.apply(events[-1])
    return events


@pytest.fixture
def hashed_bytes(monkeypatch) -> list[int]:
    """Every byte fed to hashlib.sha256 from here on, whoever hashes it (the injected counter)."""
    real, count = hashlib.sha256, [0]

    class Counting:
        def __init__(self, data: bytes = b"", **kw) -> None:
            self._h = real(**kw)
            self.update(data)

        def update(self, data) -> None:
            count[0] += memoryview(data).nbytes
            self._h.update(data)

        def digest(self) -> bytes:
            return self._h.digest()

        def hexdigest(self) -> str:
            return self._h.hexdigest()

    monkeypatch.setattr(hashlib, "sha256", Counting)
    return count


def test_receipt_to_installed_hashes_each_byte_of_the_bundle_once(tmp_path, hashed_bytes):
    """The whole-file digest behind the blocks and verifying's member pass are gone: only installing hashes, as it
    unpacks. Before this branch the same update hashed about three times the bundle (file, verify, install)."""
    payload = os.urandom(40 * BLOCK + 123)
    bundle, pub = make_bundle(tmp_path, 2, payload)
    home = AgentHome(tmp_path / "home")
    frames = Frames(bundle.read_bytes(), hashlib.sha256(bundle.read_bytes()).hexdigest())
    ctx = context(home, bundle, pub, frames)
    hashed_bytes[0] = 0
    assert until_health_check(ctx) == [Event.DONE, Event.DONE, Event.DONE]
    size = bundle.stat().st_size
    assert len(payload) <= hashed_bytes[0] <= size + 4096, (hashed_bytes[0], size)  # one pass (+ keys, manifest)
    assert (Slots(home.slots_dir, ctx.trust).info(ctx.job.target_slot).bundle_dir / "model.onnx").read_bytes() == payload


def test_a_corrupt_block_in_transit_is_found_by_the_install_check_and_only_it_is_fetched_again(tmp_path):
    payload = os.urandom(40 * BLOCK)
    bundle, pub = make_bundle(tmp_path, 2, payload)
    data = bundle.read_bytes()
    home = AgentHome(tmp_path / "home")
    frames = Frames(data, hashlib.sha256(data).hexdigest(), damaged={20})  # inside model.onnx
    ctx = context(home, bundle, pub, frames)
    events = until_health_check(ctx)
    assert events == [Event.DONE, Event.DONE, Event.DAMAGED, Event.DONE, Event.DONE, Event.DONE]
    total = -(-len(data) // BLOCK)
    assert sorted(frames.asked) == sorted([*range(total), 20]) and ctx.job.repairs == 1
    assert (Slots(home.slots_dir, ctx.trust).info(ctx.job.target_slot).bundle_dir / "model.onnx").read_bytes() == payload


def test_a_block_bad_every_time_or_a_bundle_bad_at_the_source_fails_with_its_code_and_keeps_both_slots(tmp_path):
    """A block damaged on every copy: MAX_REPAIRS rounds, then the member's HashMismatch (exit 14). A bundle
    tampered at the source (one member byte changed, manifest and signature intact: its blocks are what the fleet
    lists): one re-check finds nothing to fetch, then the same refusal. The working model stays active and
    the inactive slot keeps its previous bundle (installing unpacks beside the slot first)."""
    home = AgentHome(tmp_path / "home")
    v1, pub = make_bundle(tmp_path, 1, os.urandom(2 * BLOCK))
    v2, _ = make_bundle(tmp_path, 2, os.urandom(3 * BLOCK))
    slots = Slots(home.slots_dir, TrustStore.from_paths([pub]))
    for name, old in (("b", v1), ("a", v2)):  # a: the working model, b: the previous one (the rollback target)
        slots.install(name, old, slots.trust, PROFILE, BundleRef("pass", int(old.stem[-1]),
                                                                 hashlib.sha256(old.read_bytes()).hexdigest()))
        slots.mark_health(name, Health.GOOD)
        slots.switch(name)
    v3, _ = make_bundle(tmp_path, 3, os.urandom(20 * BLOCK))
    good = v3.read_bytes()
    with tarfile.open(v3) as tar:
        at = tar.getmember("model.onnx").offset_data
    tampered = good[:at + 5] + bytes([good[at + 5] ^ 0xFF]) + good[at + 6:]
    for content, damaged, asked_again in ((good, {3}, MAX_REPAIRS), (tampered, set(), 0)):
        v3.write_bytes(content)
        frames = Frames(content, hashlib.sha256(content).hexdigest(), damaged=damaged, always=True)
        ctx = context(home, v3, pub, frames)
        job = run_update(ctx)
        assert job.phase is Phase.FAILED and job.exit_code == 14 and "model.onnx: SHA-256" in job.last_error, job
        assert job.repairs == MAX_REPAIRS
        assert len(frames.asked) == -(-len(content) // BLOCK) + asked_again
        active, previous = slots.active(), slots.info("b")
        assert active.name == "a" and active.ref.version == 2 and active.health is Health.GOOD
        assert previous.ref.version == 1 and previous.usable  # untouched, not marked bad
        assert not any(staging_dir(home).glob("*.part"))  # a bad file is not kept
