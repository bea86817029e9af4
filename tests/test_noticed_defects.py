"""Defects noticed in a review session, each pinned by a test that failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from edge_agent.bundle import generate_keypair, load_private_key, write_bundle

from .serving_helpers import constant_image_classifier, dynamic_batch_model

INF, NAN = float("inf"), float("nan")


def strict_json(text: str | bytes) -> Any:
    """Parse as JavaScript's JSON.parse would: bare NaN / Infinity are not JSON."""

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def _rows() -> np.ndarray:
    """Three samples for y = x @ W + b: an infinite one (outputs ±inf), a NaN one (outputs NaN), a finite one."""
    return np.array([[INF, 0, 0, 0], [NAN, 0, 0, 0], [1, 2, 3, 4]], dtype=np.float32)


# ---- 1. NaN / Infinity in JSON answers -------------------------------------------------------------------------


def test_serving_answers_non_finite_outputs_as_null_with_a_count(tmp_path):
    """A model answering NaN or inf made the serving API write bare NaN/Infinity: JSON.parse refused the whole 200
    answer. Now they are null (strict JSON), the answer is still 200, and Edgekit-Non-Finite counts them; KServe's
    binary outputs keep the exact values."""
    import httpx

    from edge_agent.runtimes import load_session
    from edge_agent.serving import BatchPolicy, HttpOptions, ModelHolder, ServedModel, start_serving, stop_serving

    manifest, folder = dynamic_batch_model(tmp_path / "linear")
    session = load_session(folder, manifest, threads=1)
    rows = _rows()
    want = session.run({"x": rows})[0]
    non_finite = int((~np.isfinite(want)).sum())
    assert non_finite == 6 and np.isfinite(want[2]).all()
    server = start_serving(ModelHolder(ServedModel(manifest, session)), BatchPolicy(), HttpOptions(port=0))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            tensor = {"name": "x", "datatype": "FP32", "shape": [3, 4], "data": rows.ravel().tolist()}
            r = client.post("/v2/models/linear/infer", content=json.dumps({"inputs": [tensor]}))
            assert r.status_code == 200 and r.headers["Edgekit-Non-Finite"] == str(non_finite)
            data = strict_json(r.content)["outputs"][0]["data"]
            assert data == [None if not np.isfinite(v) else pytest.approx(float(v), rel=1e-5) for v in want.ravel()]

            r = client.post("/v1/models/linear:predict", content=json.dumps({"instances": rows.tolist()}))
            assert r.status_code == 200 and r.headers["Edgekit-Non-Finite"] == str(non_finite)
            predictions = strict_json(r.content)["predictions"]
            assert [v is None for row in predictions for v in row] == list(~np.isfinite(want.ravel()))

            binary = {"inputs": [tensor], "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
            r = client.post("/v2/models/linear/infer", content=json.dumps(binary))
            head = int(r.headers["Inference-Header-Content-Length"])
            strict_json(r.content[:head])
            assert "Edgekit-Non-Finite" not in r.headers
            np.testing.assert_array_equal(np.frombuffer(r.content[head:], np.float32).reshape(3, 3), want)

            r = client.post("/v1/models/linear:predict", content=json.dumps({"instances": rows[2:].tolist()}))
            assert r.status_code == 200 and "Edgekit-Non-Finite" not in r.headers
    finally:
        stop_serving(server)
        session.close()


def test_agent_json_results_are_strict_json_when_the_model_answers_nan(tmp_path, capsys):
    """`edge-agent run --json` printed "score": NaN for a sample whose scores were NaN: `jq` and JSON.parse refused
    the whole result. Now the score is null and the other samples are as before; the OTA protocol's messages
    (telemetry carrying per-frame results) are strict JSON too."""
    from edge_agent.cli import main as agent_main
    from edge_agent.ota.protocol import Telemetry, dumps

    manifest, folder = dynamic_batch_model(tmp_path / "linear")
    key, pub = generate_keypair(tmp_path / "keys")
    bundle = write_bundle(tmp_path / "linear.edgebundle", manifest, {"model.onnx": folder / "model.onnx"},
                          load_private_key(key))
    np.save(tmp_path / "rows.npy", _rows())
    capsys.readouterr()
    assert agent_main(["run", str(bundle), str(tmp_path / "rows.npy"), "--trust", str(pub), "--json"]) == 0
    results = strict_json(capsys.readouterr().out)
    assert [r["score"] is None for r in results] == [True, True, False]
    assert all(isinstance(t["score"], float) for t in results[2]["top_k"])

    odd = {"score": NAN, "top_k": [{"score": -INF}]}
    message = Telemetry(model=None, inferences=3, errors=0, extra={"results": results + [odd]})
    assert strict_json(dumps(message))["extra"]["results"][-1] == {"score": None, "top_k": [{"score": None}]}


def test_json_lines_sink_writes_null_for_nan(tmp_path):
    """`run --source ... --output FILE` (and stdout) wrote bare NaN in a frame's record: a JSON-lines reader stopped
    at that line."""
    from edge_agent.pipeline.sinks import JsonLinesSink

    sink = JsonLinesSink(tmp_path / "out.jsonl")
    sink.write({"frame": 0, "score": NAN, "top_k": [{"score": INF}, {"score": 0.5}]}, None)  # type: ignore[arg-type]
    sink.close()
    line = (tmp_path / "out.jsonl").read_text().splitlines()[0]
    assert strict_json(line) == {"frame": 0, "score": None, "top_k": [{"score": None}, {"score": 0.5}]}



def test_conversion_report_of_a_model_answering_nan_is_strict_json(tmp_path, capsys):
    """A model answering NaN on the eval data (here log of negative inputs) made `edge-convert convert --json` and the
    .report.json write "max_abs_diff": NaN: the report could not be read by anything but Python. Now those are null."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from converter.cli import main as convert_main

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    graph = helper.make_graph([helper.make_node("Log", ["x"], ["l"]), helper.make_node("MatMul", ["l", "W"], ["y"])],
                              "log", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "log.onnx")
    key, _ = generate_keypair(tmp_path / "keys")
    x = -np.abs(np.random.default_rng(0).normal(size=(8, 4))).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x, labels=np.zeros(8, np.int64))
    out = tmp_path / "log.edgebundle"
    capsys.readouterr()
    assert convert_main(["--quiet", "convert", str(tmp_path / "log.onnx"), "--profile", "x86-64-cpu", "--key", str(key),
                         "--out", str(out), "--bench-runs", "0", "--precision", "fp32", "--eval",
                         str(tmp_path / "eval.npz"), "--json", "--force"]) == 0  # the gate refuses NaN answers
    printed = strict_json(capsys.readouterr().out)
    report = strict_json(Path(str(out) + ".report.json").read_text())
    accuracy = report["measurements"]["accuracy"]
    assert printed == report and accuracy["max_abs_diff"] is None and accuracy["float_non_finite_samples"] == 8
    assert accuracy["passed"] is False and accuracy["forced"] is True

# ---- 2. Ctrl-C in `edge-agent run --source` --------------------------------------------------------------------


def _classifier_bundle(tmp: Path) -> tuple[Path, Path]:
    """(bundle, public key): a signed image classifier with constant scores (no model to train)."""
    manifest, folder = constant_image_classifier(tmp / "classifier")
    key, pub = generate_keypair(tmp / "keys")
    bundle = write_bundle(tmp / "constant.edgebundle", manifest, {"model.onnx": folder / "model.onnx"},
                          load_private_key(key))
    return bundle, pub


def test_ctrl_c_in_run_source_prints_the_summary_and_exits_130(tmp_path):
    """Ctrl-C (a real SIGINT) during `edge-agent run --source STREAM` stopped the pipeline and printed the summary, but
    exited 0, as if the run had ended by itself: docs/exit-codes.md says 130 for Ctrl-C. Now the summary still comes
    (flagged `interrupted`) and the exit code is 130."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    from edge_agent.pipeline.sinks import MjpegPreviewSink

    from .serving_helpers import REPO

    bundle, pub = _classifier_bundle(tmp_path)
    stream = MjpegPreviewSink()  # a live MJPEG stream that never ends, as an IP camera's
    done = threading.Event()

    def feed() -> None:
        frame = np.zeros((32, 32, 3), np.uint8)
        while not done.wait(0.02):
            stream.publish(frame)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    cmd = [sys.executable, "-m", "edge_agent.cli", "run", str(bundle), "--trust", str(pub), "--allow-profile-mismatch",
           "--source", stream.url, "--json"]
    def as_from_a_shell() -> None:
        """Ctrl-C as a terminal delivers it: a test worker may run with SIGINT ignored or blocked (both inherited
        across exec), which a user's shell never leaves the command it starts with."""
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    proc = subprocess.Popen([cmd[0], "-X", "faulthandler", *cmd[1:]], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_shell)
    try:
        first = json.loads(proc.stdout.readline())  # a frame went through the pipeline: it is running
        assert first["name"] == "c"
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # say where it hangs: faulthandler prints every thread's stack on SIGABRT
            status = [ln for ln in Path(f"/proc/{proc.pid}/status").read_text().splitlines() if ln.startswith("Sig")]
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=30)
            raise AssertionError(f"still running 60 s after Ctrl-C ({status}); its threads:\n{err[-6000:]}") from None
    finally:
        done.set()
        if proc.poll() is None:
            proc.kill()
        stream.close()
    summary = json.loads(out.splitlines()[-1])
    assert proc.returncode == 130, err
    assert summary["interrupted"] is True and summary["frames"] >= 1


# ---- 3. one name rule for bundles, profiles and uploads ---------------------------------------------------------

GOOD_NAMES = ["a", "digits", "digits-v1.edgebundle", "Mobile_Net.2", "x" * 128]
BAD_NAMES = ["", ".hidden", "-dash", "_under", "a b", "x" * 129, "caf\u00e9", "digits\n", "a:b"]


def _accepts(check: Callable[[str], Any], refusal: type[Exception], name: str) -> bool:
    try:
        check(name)
    except refusal:
        return False
    return True


def _local_checks() -> list[tuple[Callable[[str], Any], type[Exception]]]:
    """(check, its refusal) of the bundle manifest, edge-convert's --name and a device profile's name."""
    import argparse
    import tomllib

    from converter.passes.package import model_name
    from device_profiles import ProfileError, builtin_profile_dir, profile_from_dict
    from edge_agent.bundle import FileEntry, Manifest, ManifestError, TensorSpec

    m = Manifest(name="ok", version=1, profile="x86-64-cpu", format="onnx", runtime="onnxruntime", precision="fp32",
                 model_file="model.onnx", inputs=[TensorSpec("x", "float32", [1, 4])],
                 outputs=[TensorSpec("y", "float32", [1, 2])], files=[FileEntry("model.onnx", 1, "0" * 64)])
    profile = tomllib.loads((builtin_profile_dir() / "x86-64-cpu.toml").read_text())
    return [(lambda n: Manifest.from_dict({**m.to_dict(), "name": n}), ManifestError),
            (model_name, argparse.ArgumentTypeError),
            (lambda n: profile_from_dict({**profile, "name": n}), ProfileError)]


def _fleet_upload_accepts(client: Any, token: str, name: str) -> bool:
    r = client.post("/api/v1/bundles", params={"filename": name}, content=b"not a bundle",
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"})
    assert r.status_code in (400, 422), r.text  # the name refused (422), or the body as not a bundle
    return r.status_code != 422


def test_bundle_profile_and_upload_names_follow_one_rule(tmp_path):
    """The name pattern was written out three times (bundle manifest, device profiles, the fleet's upload route), so
    they could drift apart; and `$` let a name end in a newline ("digits\\n" was a valid bundle name). Now they (and
    edge-convert's --name, which imported the manifest's private copy) use device_profiles.NAME_RE, re-exported as
    edge_agent.bundle.NAME_RE, and agree on every name."""
    from starlette.testclient import TestClient

    import device_profiles
    from edge_agent import bundle
    from edge_fleet.access import create_token, local_actor
    from edge_fleet.api import routes_bundles
    from edge_fleet.api.app import create_app
    from edge_fleet.api.deps import ApiState
    from edge_fleet.registry import open_registry

    assert bundle.NAME_RE is device_profiles.NAME_RE
    rule = bundle.NAME_RE
    copies = [v for mod in (bundle.manifest, device_profiles, routes_bundles) for v in vars(mod).values()
              if isinstance(v, type(rule)) and v.pattern == rule.pattern and v is not rule]
    assert not copies
    reg = open_registry(tmp_path / "fleet.db", store_dir=tmp_path / "bundles")
    token = create_token(reg, local_actor(), "admin", "admin")[0]
    with TestClient(create_app(ApiState(reg, max_upload=1_000_000), console=False)) as client:
        for name in GOOD_NAMES + BAD_NAMES:
            answers = [_accepts(check, refusal, name) for check, refusal in _local_checks()]
            answers.append(_fleet_upload_accepts(client, token, name))
            assert answers == [name in GOOD_NAMES] * 4, name
    reg.close()


# ---- 4. broker passwords in printed output ----------------------------------------------------------------------


def test_edge_device_unit_never_prints_a_broker_password(capsys):
    """`edge-device unit --broker mqtt://user:PASS@host` printed the password in ExecStart, into a unit file Ansible
    installs world-readable (and the process list). `unit` now refuses it as setup does (exit 2, the URL shown with
    ***), pointing at --credentials; without a password it renders the unit as before."""
    from edge_device.cli import main as device_main

    assert device_main(["unit", "--broker", "mqtt://dev:s3cret@fleet:1883", "--device-id", "pi-1"]) == 2
    out, err = capsys.readouterr()
    assert "s3cret" not in out + err and "mqtt://dev:***@fleet:1883" in err and "--credentials" in err
    assert device_main(["unit", "--broker", "mqtt://dev@fleet:1883", "--device-id", "pi-1", "--credentials"]) == 0
    out = capsys.readouterr().out
    assert "serve --broker mqtt://dev@fleet:1883 --device-id pi-1 --credentials /opt/edgekit/credentials.env" in out


@pytest.mark.parametrize("url", ["mqtt://dev:s3cret@fleet:notaport", "http://dev:s3cret@fleet:1883"])
def test_a_malformed_broker_url_is_named_without_its_password(url):
    """A malformed broker URL was quoted whole in its one-line error, password included: `edge-agent serve`,
    `run --mqtt-telemetry` and `edge-fleet serve` printed it on the terminal and in the journal."""
    from edge_agent.ota.broker_url import parse_broker_url

    with pytest.raises(ValueError) as exc:
        parse_broker_url(url)
    assert "s3cret" not in str(exc.value) and "dev:***@fleet" in str(exc.value)


# ---- 5. edge-device flash verifies on the host first -------------------------------------------------------------


def _loopback_device(tmp: Path, trusted_pub: Path) -> tuple[Any, Path]:
    """(sshd, remote dir): an sshd "device" whose REMOTE_DIR holds what setup leaves (service.json, the agent home
    trusting `trusted_pub`, venv/bin/edge-agent: this checkout's agent) without setup's pip install."""
    import os
    import sys

    from edge_agent.bundle import key_id, load_public_key

    from .serving_helpers import REPO
    from .sshd_helpers import start_sshd

    remote = tmp / "opt-edgekit"
    (remote / "agent" / "trusted").mkdir(parents=True)
    (remote / "venv" / "bin").mkdir(parents=True)
    kid = key_id(load_public_key(trusted_pub))
    (remote / "agent" / "trusted" / f"{kid}.pub").write_bytes(trusted_pub.read_bytes())
    agent = remote / "venv" / "bin" / "edge-agent"
    agent.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m edge_agent.cli \"$@\"\n")
    os.chmod(agent, 0o755)
    (remote / "service.json").write_text(json.dumps({"broker": "mqtt://127.0.0.1:1", "device_id": "loop",
                                                     "profile": "x86-64-cpu", "user": "root", "systemd": False}))
    return start_sshd(tmp / "sshd"), remote


def test_flash_verifies_the_bundle_on_the_host_before_pushing_it(tmp_path, capsys, monkeypatch):
    """`edge-device flash` copied the bundle to the device, then let the device's `edge-agent verify` refuse it: an
    altered or untrusted bundle left the host. Now it is verified here first, against the keys the device trusts:
    one line, the bundle's own code (13 untrusted, 14 altered), nothing pushed. The copy hook stops any push after
    one byte, so a push would show as 84 and a .part file on the device; a good bundle still gets pushed."""
    from edge_agent.errors import exit_code
    from edge_device.cli import main as device_main

    from .test_bundle_tamper import members, repack

    manifest, folder = dynamic_batch_model(tmp_path / "linear")
    key, pub = generate_keypair(tmp_path / "keys")
    other_key, _ = generate_keypair(tmp_path / "other")
    good = write_bundle(tmp_path / "good.edgebundle", manifest, {"model.onnx": folder / "model.onnx"},
                        load_private_key(key))
    untrusted = write_bundle(tmp_path / "untrusted.edgebundle", manifest, {"model.onnx": folder / "model.onnx"},
                             load_private_key(other_key))
    altered = repack(tmp_path / "altered.edgebundle",
                     [(i, d[:-1] + bytes([d[-1] ^ 1]) if i.name == "model.onnx" else d) for i, d in members(good)])
    server, remote = _loopback_device(tmp_path, pub)
    monkeypatch.setenv("EDGEKIT_TEST_STOP_COPY_AFTER", "1")
    try:
        for bundle, code in ((untrusted, exit_code("signature")), (altered, exit_code("hash-mismatch")),
                             (good, exit_code("copy-interrupted"))):
            capsys.readouterr()
            got = device_main(["flash", str(bundle), server.target, *server.cli_args(), "--remote-dir", str(remote)])
            err = capsys.readouterr().err
            assert got == code, err
            pushed = [p.name for p in (remote / "incoming").glob("*edgebundle*")]
            if bundle is not good:
                assert err.count("\n") == 1 and "not pushed" in err and not pushed, err
            else:
                assert pushed  # the interrupted copy's .part: a good bundle goes on to the device
    finally:
        server.stop()


# ---- 7. the fleet server's "registry away" state -----------------------------------------------------------------


def test_fleet_server_takes_only_database_outages_for_registry_away(tmp_path, caplog):
    """FleetServer._record took any exception for "the registry is away": a bug (or data the registry refuses) was
    logged without its traceback, once, and set the catch-up flag, so the same message was refused again at every
    catch-up. Now a real outage (here the file locked by another writer past the busy timeout) still sets it, and
    anything else is logged with its traceback and leaves the server's state alone."""
    import logging
    import sqlite3

    from edge_agent.ota.protocol import Telemetry, dumps
    from edge_fleet.registry import open_registry
    from edge_fleet.server import FleetServer

    reg = open_registry(tmp_path / "fleet.db", store_dir=tmp_path / "bundles")
    server = FleetServer(reg, "mqtt://127.0.0.1:1")  # not started: _record is the registry writer's step
    topic, payload = server.topics.telemetry("pi-1"), dumps(Telemetry(model=None, inferences=3, errors=0))
    server._record(topic, payload)
    assert not server._missed.is_set()

    reg._db.execute("PRAGMA busy_timeout=50")  # type: ignore[attr-defined] - not 30 s for the lock below
    other = sqlite3.connect(tmp_path / "fleet.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process writing for longer than the busy timeout
    try:
        server._record(topic, payload)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert server._missed.is_set()
    server._missed.clear()

    reg.close()  # a bug: the registry used after it was closed (sqlite3.ProgrammingError)
    with caplog.at_level(logging.WARNING, logger="edge_fleet.server"):
        server._record(topic, payload)
    assert not server._missed.is_set()
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.levelno == logging.ERROR and isinstance(record.exc_info[1], sqlite3.ProgrammingError)

