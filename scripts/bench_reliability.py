#!/usr/bin/env python3
"""Repeat the reliability probe of issue 12 on demand and print tries / survived / lost per kind.

Real parts only: a managed Mosquitto, `edge-agent serve` subprocesses killed with SIGKILL, a real
signed digits model (trained and converted here, about a minute), hand-made malicious bundles
signed with the real key, and (as root) a small tmpfs that really fills up.

    publish: KIND      malformed, mistyped, oversized or forged MQTT messages to one live agent; after
                       each kind's batch the agent must be alive, under +64 MiB RSS, and take an update
    bundle: KIND       malicious bundles; four runs each: verify_bundle, `edge-agent verify`,
                       `edge-agent install` (side-load onto a v1 device), `edge-fleet publish`;
                       survived = refused with its own exit code, v1 still served, nothing left behind
    kill -9 in PHASE   the agent is killed inside the phase, restarted, and must end on a working model
                       and then take the next update
    corrupt FILE       one persisted file damaged (4 ways) after a kill -9 mid-download, on a one-slot home
                       (v1 in a) and a two-slot one (v1 in a, v2 active in b): same checks
    disk full in PHASE as root: kill -9 in the phase, the disk fills, restart: a working model, and an
                       update once space is back
    fleet: stored bundle file GONE  a published bundle's file deleted or unreadable in the fleet's store: its
                       rollout must be refused (BUNDLE_MISSING, a clear reason) and the device sent nothing
    acl: ATTEMPT       what a device login tries against the fleet's embedded broker (must be denied)

`lost` counts runs that ended without a working model, with a stuck update, or with a bundle accepted.
Defaults repeat the probe's counts (4,378 publishes, 40 bundles x 4 runs) with 30 kill/corrupt runs (the probe: 25).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_agent.bundle import BundleError, TrustStore, generate_keypair, load_private_key, read_manifest_unverified, verify_bundle  # noqa: E402
from edge_agent.cli import main as agent_main  # noqa: E402
from edge_agent.home import AgentHome  # noqa: E402
from edge_agent.ota.protocol import Topics, dumps  # noqa: E402
from edge_agent.ota.slots import Health, Slots  # noqa: E402
from edge_fleet.broker import start_broker  # noqa: E402
from edge_fleet.cli import main as fleet_main  # noqa: E402
from tests.bundle_craft import craft_bundle  # noqa: E402
from tests.fuzz_cases import CORRUPTIONS, PUBLISH_KINDS, publishes  # noqa: E402
from tests.ota_helpers import AgentProcess, FleetStub, desired_for, login_client, repack, wait_for  # noqa: E402

PROFILE, BLOCK = "raspberry-pi-4", 2048
PHASES = ["downloading", "verifying", "installing", "health_check", "switching"]
Row = tuple[str, int, int, int]


class Rig:
    """Broker, fleet stand-in, signed digits bundles v1..vN, and fresh agent homes with v1 installed."""

    def __init__(self, work: Path) -> None:
        from converter.cli import main as convert
        from examples import digits_cnn

        self.work = work
        x_train, y_train, _x, _y = digits_cnn.load_split()
        onnx = digits_cnn.export_onnx(digits_cnn.train(x_train, y_train), work / "digits.onnx")
        calib = digits_cnn.save_data(work / "calib.npz", x_train[:256])
        self.key, self.pub = generate_keypair(work / "keys")
        self.v1 = work / "digits-v1.edgebundle"
        rc = convert(["--quiet", "convert", str(onnx), "--profile", PROFILE, "--calibration", str(calib),
                      "--key", str(self.key), "--out", str(self.v1), "--bench-runs", "3", "--min-speedup", "0"])
        assert rc == 0 and agent_main(["--home", str(work / "template"), "install", str(self.v1), "--trust",
                                       str(self.pub), "--profile", PROFILE]) == 0
        self.version = 1
        self.broker = start_broker(work / "mosq", prefer="mosquitto", fallback=False)
        self.fleet = FleetStub(self.broker.host, self.broker.port)
        self.template = work / "template"
        self.homes = 0

    def home(self, source: Path | None = None) -> Path:
        self.homes += 1
        home = self.work / f"home-{self.homes}"
        shutil.copytree(source or self.template, home)
        return home

    def next_bundle(self) -> Path:
        self.version += 1

        def bump(m):  # noqa: ANN001
            m.version = self.version
        return repack(self.v1, self.work / f"digits-v{self.version}.edgebundle", self.key, self.pub, bump)

    def update(self, dev: str, timeout: float = 60) -> bool:
        """Deploy the next version to `dev`: did it succeed?"""
        dep = f"dep-{dev}-v{self.version + 1}"
        self.fleet.deploy(dev, self.next_bundle(), dep, block_size=BLOCK)
        try:
            return self.fleet.wait_phase(dev, dep, timeout=timeout).phase == "succeeded"
        except AssertionError:
            return False

    def stop(self) -> None:
        self.fleet.close()
        self.broker.stop()


def good_model(home: Path) -> bool:
    active = Slots(AgentHome(home).slots_dir).active()
    return active is not None and active.usable and active.health is not Health.BAD


def rss(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def bench_publishes(rig: Rig, total: int) -> list[Row]:
    home, dev, rows = rig.home(), "bench-fuzz", []
    agent = AgentProcess(home, rig.broker.url, dev, rig.pub)
    try:
        wait_for(lambda: rig.fleet.last_reported(dev), what="the agent")
        base = rss(agent.proc.pid)
        valid = json.loads(dumps(desired_for(rig.v1, "dep-fuzz", block_size=BLOCK)))
        batches: dict[str, list] = {k: [] for k in PUBLISH_KINDS}
        for kind, topic_kind, payload in publishes(4378, valid, total):
            batches[kind].append((topic_kind, payload))
        for kind, batch in batches.items():
            info = None
            for topic_kind, payload in batch:
                topic = Topics().desired(dev) if topic_kind == "desired" else Topics().block_data(dev)
                info = rig.fleet.c.publish(topic, payload, qos=1)
            if info is not None:
                info.wait_for_publish(60)
            ok = rig.update(dev) and agent.proc.poll() is None and rss(agent.proc.pid) - base < 64 << 20
            rows.append((f"publish: {kind}", len(batch), len(batch) if ok else 0, 0 if ok else len(batch)))
    finally:
        agent.stop()
    return rows


def malicious_bundles(rig: Rig, folder: Path) -> dict[str, callable]:
    template, key = read_manifest_unverified(rig.v1), load_private_key(rig.key)
    other = load_private_key(generate_keypair(folder / "other-keys")[0])
    model = {"model.onnx": b"m" * 100}

    def raw(name: str, kind: bytes, link: str = "") -> list:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        return [(info, b"")]

    def make(**kw):  # noqa: ANN003 - reusable: each try of a kind gets the same malicious bundle
        rest = {k: v for k, v in kw.items() if k not in ("key", "members")}
        return lambda out: craft_bundle(out, template, kw.get("key", key), kw.get("members", model), **rest)

    def cut(out: Path) -> Path:
        craft_bundle(out, template, key, model)
        out.write_bytes(out.read_bytes()[:1500])
        return out

    return {
        "path traversal": make(members={"../evil": b"x"}), "absolute path": make(members={"/tmp/evil": b"x"}),
        "symlink": make(listed=model, raw=raw("link", tarfile.SYMTYPE, "/etc/passwd")),
        "hard link": make(listed=model, raw=raw("hl", tarfile.LNKTYPE, "model.onnx")),
        "device file": make(listed=model, raw=raw("dev", tarfile.CHRTYPE)),
        "fifo": make(listed=model, raw=raw("fifo", tarfile.FIFOTYPE)),
        "directory entry": make(listed=model, raw=raw("dir", tarfile.DIRTYPE)),
        "duplicate member": make(raw=[(tarfile.TarInfo("model.onnx"), b"")]),
        "reserved name": make(members={**model, "manifest.json": b"{}"}, listed=model),
        "unlisted member": make(members={**model, "extra": b"x"}, listed=model),
        "missing member": make(members={}, listed=model),
        "size mismatch": make(members={"model.onnx": b"m" * 101}, listed=model),
        "hash mismatch": make(members={"model.onnx": b"n" * 100}, listed=model),
        "sparse 2 GiB member": make(members={}, listed=model, sparse={"model.onnx": 2 << 30}),
        "file and folder clash": make(members={"model": b"f", "model/model.onnx": b"m"}),
        "non-string key_id": make(signature_edit=lambda d: d.update(key_id=["x"])),
        "untrusted signer": make(key=other),
        "bad signature": make(signature_edit=lambda d: d.update(signature="AAAA" * 22)),
        "no signature": make(signed=False),
        "wrong algorithm": make(signature_edit=lambda d: d.update(algorithm="rsa")),
        "newer schema": make(manifest_edit=lambda m: setattr(m, "schema_version", "9.0")),
        "other profile": make(manifest_edit=lambda m: setattr(m, "profile", "jetson-nano")),
        "truncated archive": cut,
        "not an archive": lambda out: (out.write_bytes(os.urandom(3000)), out)[1],
        "empty file": lambda out: (out.write_bytes(b""), out)[1],
    }


def bench_bundles(rig: Rig, count: int) -> list[Row]:
    folder = rig.work / "malicious"
    folder.mkdir()
    kinds = malicious_bundles(rig, folder)
    names = list(kinds)
    tally: dict[str, list[int]] = {k: [0, 0, 0] for k in names}
    home, fleet_home = rig.home(), rig.work / "fleet"
    trust = ["--trust", str(rig.pub)]
    for i in range(count):
        kind = names[i % len(names)]
        path = kinds[kind](folder / f"{i:02d}.edgebundle")
        try:
            verify_bundle(path, TrustStore.from_paths([rig.pub]), profile=PROFILE)
            lib = False
        except BundleError:
            lib = True
        typed = lambda rc: rc not in (0, 1)  # noqa: E731 - every refusal has its own code
        runs = [lib, typed(agent_main(["--home", str(home), "verify", str(path), *trust, "--profile", PROFILE])),
                typed(agent_main(["--home", str(home), "install", str(path), *trust, "--profile", PROFILE]))
                and good_model(home) and not any((home / "ota" / "staging").glob("*")),
                # the fleet keeps bundles for every profile: only that one is a bundle it must accept
                fleet_main(["publish", str(path), *trust, "--home", str(fleet_home)]) == 0 if kind == "other profile"
                else typed(fleet_main(["publish", str(path), *trust, "--home", str(fleet_home)]))]
        tally[kind][0] += 4
        tally[kind][1] += sum(runs)
        tally[kind][2] += 4 - sum(runs)
    return [(f"bundle: {k}", *v) for k, v in tally.items()]


def bench_bundle_file_gone(rig: Rig) -> list[Row]:
    """The fleet's rule for a published bundle whose stored file is gone or unreadable: its rollout is
    refused (the device's target fails with BUNDLE_MISSING, "bundle file unreadable") and the device is
    sent nothing; publishing it without block hashes would be a loss (devices could not check blocks)."""
    from edge_agent.ota.protocol import BundleRef, ReportedState
    from edge_fleet.registry import TargetStatus, open_registry
    from edge_fleet.rollout import RolloutDriver, plan_rollout

    def to_folder(path: Path) -> None:
        path.unlink()
        path.mkdir()

    rows, trust = [], ["--trust", str(rig.pub)]
    for how, damage in (("deleted", Path.unlink), ("replaced by a folder", to_folder)):
        fleet_home, bundle = rig.work / f"fleet-gone-{len(rows)}", rig.next_bundle()
        assert all(fleet_main(["publish", str(b), *trust, "--home", str(fleet_home)]) == 0 for b in (rig.v1, bundle))
        sent: list[bytes] = []  # what the rollout publishes (a halt may send v1 back; never the damaged bundle)
        with open_registry(fleet_home / "fleet.db", store_dir=fleet_home / "bundles") as reg:
            v1 = read_manifest_unverified(rig.v1)
            record = next(b for b in reg.bundles() if b.version == rig.version)
            reg.record_reported(ReportedState("gone", "idle", PROFILE, "t", current=BundleRef(
                v1.name, v1.version, next(b.sha256 for b in reg.bundles() if b.version == 1))))
            damage(Path(record.path))
            plan = plan_rollout(reg, f"{record.name}:{record.version}", devices=["gone"], stages=[100])
            driver = RolloutDriver(reg, Topics(), lambda _topic, payload, _retain: sent.append(payload or b""))
            driver.step(now=1000.0)
            driver.step(now=1001.0)
            target = reg.rollout(plan.id).target("gone")
        ok = (target.status is TargetStatus.FAILED and "bundle file unreadable" in (target.reason or "")
              and not any(record.sha256.encode() in payload for payload in sent))
        rows.append((f"fleet: stored bundle file {how}", 1, int(ok), int(not ok)))
    return rows


def _killed_in(rig: Rig, home: Path, dev: str, point: str) -> str:
    """Deploy the next version, let the agent pause at `point`, kill -9 it; the deployment id."""
    env = {"EDGEKIT_TEST_PAUSE_AFTER_BLOCKS": point[7:]} if point.startswith("blocks:") else {"EDGEKIT_TEST_PAUSE_PHASE": point}
    agent = AgentProcess(home, rig.broker.url, dev, rig.pub, env=env)
    dep = f"dep-{dev}"
    try:
        rig.fleet.deploy(dev, rig.next_bundle(), dep, block_size=BLOCK)
        wait_for(lambda: agent.paused_at() == point, what=f"a pause at {point}")
        agent.kill9()
    finally:
        agent.stop()
    (home / "ota" / "paused-at").unlink()
    return dep


def _recovers(rig: Rig, home: Path, dev: str, dep: str | None) -> bool:
    agent = AgentProcess(home, rig.broker.url, dev, rig.pub)
    try:
        if dep is not None:
            rig.fleet.wait_phase(dev, dep, timeout=60)
        else:
            wait_for(lambda: rig.fleet.last_reported(dev), what="a report", timeout=60)
        return good_model(home) and rig.update(dev) and good_model(home)
    except AssertionError:
        return False
    finally:
        agent.stop()


def bench_kills(rig: Rig) -> list[Row]:
    rows = []
    for point in ["blocks:4", *PHASES]:
        home, dev = rig.home(), f"kill-{point.replace(':', '-').replace('_', '-')}"
        ok = _recovers(rig, home, dev, _killed_in(rig, home, dev, point))
        rows.append((f"kill -9 in {point}", 1, int(ok), int(not ok)))
    one = rig.home()  # v1 in slot a only, a download killed mid-way
    _killed_in(rig, one, "corrupt-one", "blocks:4")
    two = rig.home()  # v1 in slot a, v2 active in slot b, a download killed mid-way
    assert agent_main(["--home", str(two), "install", str(rig.next_bundle()), "--trust", str(rig.pub),
                       "--profile", PROFILE]) == 0
    _killed_in(rig, two, "corrupt-two", "blocks:4")
    for base, slots, patterns in ((one, "one slot", ["ota/update.json", "slots/state.json", "slots/a/slot.json",
                                                      "ota/staging/*.blocks.json"]),
                                  (two, "two slots", ["slots/a/slot.json", "slots/b/slot.json"])):
        for pattern in patterns:
            tries = survived = 0
            for damage in CORRUPTIONS.values():
                home = rig.home(base)
                (path,) = home.glob(pattern)  # a try damages a file that is there
                path.write_bytes(damage(path.read_bytes()))
                tries += 1
                survived += _recovers(rig, home, f"corrupt-{rig.homes}", None)
            rows.append((f"corrupt {pattern} ({slots})", tries, survived, tries - survived))
    return rows


def bench_disk_full(rig: Rig) -> list[Row]:
    from tests.fault_helpers import fill, small_disk

    rows = []
    for phase in PHASES:
        with small_disk(rig.work / f"disk-{phase}") as disk:
            home, dev = disk / "home", f"full-{phase.replace('_', '-')}"
            shutil.copytree(rig.template, home)
            dep = _killed_in(rig, home, dev, phase)
            filler = fill(disk)
            agent = AgentProcess(home, rig.broker.url, dev, rig.pub)
            try:
                rig.fleet.wait_phase(dev, dep, timeout=60)
                ok = good_model(home)
                filler.unlink()
                ok = ok and rig.update(dev) and good_model(home)
            except AssertionError:
                ok = False
            finally:
                agent.stop()
        rows.append((f"disk full in {phase}", 1, int(ok), int(not ok)))
    return rows


def bench_acl(rig: Rig) -> list[Row]:
    """A device login against the fleet's embedded broker (logins + generated ACL)."""
    from edge_fleet.registry import open_registry
    from edge_fleet.server import FleetServer

    reg = open_registry(rig.work / "acl" / "fleet.db")
    server = FleetServer(reg, None, embedded="mosquitto").start()
    t, rows, clients = Topics(), [], []
    try:
        anon, _, ok = login_client(server.url, None, None, "anon")
        clients.append(anon)
        rows.append(("acl: anonymous client", 1, int(not ok), int(ok)))
        (u1, p1), (u2, p2) = server.add_device("d1"), server.add_device("d2")
        watch, seen, _ = login_client(server.url, "fleet", server.logins.fleet_password, "watch")
        d1, _, _ = login_client(server.url, u1, p1, "edgekit-agent-d1")
        clients += [watch, d1]
        watch.subscribe("edgekit/#", qos=1)
        time.sleep(0.3)
        for what, topic in (("own desired", t.desired("d1")), ("own blocks/data", t.block_data("d1")),
                            ("another device's reported", t.reported("d2"))):
            d1.publish(topic, b"forged", qos=1).wait_for_publish(10)
            d1.publish(t.telemetry("d1"), what.encode(), qos=1).wait_for_publish(10)  # a marker after it
            wait_for(lambda: t.telemetry("d1") in {x for x, _ in seen}, what="the marker")
            got = {x for x, _ in seen}
            rows.append((f"acl: device writes its {what}" if "own" in what else f"acl: device writes {what}", 1,
                         int(topic not in got), int(topic in got)))
            seen.clear()
        d2, _, _ = login_client(server.url, u2, p2, "edgekit-agent-d1")
        clients.append(d2)
        time.sleep(0.5)
        rows.append(("acl: another login takes the device's client id", 1, int(d1.is_connected()),
                     int(not d1.is_connected())))
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
        server.stop()
        reg.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--publishes", type=int, default=4378, help="malformed MQTT publishes (default %(default)s)")
    ap.add_argument("--bundles", type=int, default=40, help="malicious bundles, 4 runs each (default %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as tmp:
        print("bench_reliability: training and converting the digits model...", file=sys.stderr, flush=True)
        with contextlib.redirect_stdout(sys.stderr):  # what the CLIs print; stdout is the table
            rig = Rig(Path(tmp))
            try:
                rows = (bench_publishes(rig, args.publishes) + bench_bundles(rig, args.bundles)
                        + bench_bundle_file_gone(rig) + bench_kills(rig))
                if os.geteuid() == 0:
                    rows += bench_disk_full(rig)
                rows += bench_acl(rig)
            finally:
                rig.stop()
    total = ("total", *(sum(r[i] for r in rows) for i in (1, 2, 3)))
    if args.json:
        print(json.dumps([dict(zip(("kind", "tries", "survived", "lost"), r)) for r in [*rows, total]], indent=2))
    else:
        width = max(len(r[0]) for r in rows)
        print(f"{'kind':<{width}}  {'tries':>6} {'survived':>8} {'lost':>5}")
        for r in [*rows, total]:
            print(f"{r[0]:<{width}}  {r[1]:>6} {r[2]:>8} {r[3]:>5}")
        print(f"({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    return 0 if total[3] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
