"""The inference endpoint's safety and mechanics, in process on real bundles and runtimes: malformed and
oversize requests get one-line 4xx answers and the server keeps serving, a bearer token, a full queue
answers 503, a LiteRT session shared by concurrent requests stays correct, the dynamic batcher stacks
requests, metrics reach /metrics, observers see served inputs, and a swap lets in-flight requests finish.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from edge_agent.bundle import TrustStore
from edge_agent.home import unpacked_bundle
from edge_agent.runtimes import load_session
from edge_agent.serving import BatchPolicy, HttpOptions, ModelHolder, ServedModel, start_serving, stop_serving

from .ota_helpers import wait_for
from .serving_helpers import channel_sum_model, dynamic_batch_model
from .test_serving import tflite_bundle  # noqa: F401 - pytest fixture, used by name

PREDICT = "/v1/models/digits:predict"


@contextmanager
def loaded(bundle: Path, pub: Path, threads: int = 1):
    with unpacked_bundle(bundle, TrustStore.from_paths([pub]), None, True) as vb:
        session = load_session(vb.unpacked_to, vb.manifest, threads=threads)
        try:
            yield ServedModel(vb.manifest, session)
        finally:
            session.close()


@contextmanager
def serving(model, policy: BatchPolicy = BatchPolicy(), **http):  # noqa: ANN001
    holder = ModelHolder(model)
    server = start_serving(holder, policy, HttpOptions(port=0, **http))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield server, client, holder
    finally:
        stop_serving(server)


class GatedSession:
    """A real session whose runs wait for a gate: holds requests in flight for as long as a test needs."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner, self.manifest, self.info = inner, inner.manifest, inner.info
        self.gate, self.entered = threading.Event(), threading.Semaphore(0)

    def run(self, feeds):  # noqa: ANN001, ANN201
        self.entered.release()
        self.gate.wait(30)
        return self.inner.run(feeds)

    def close(self) -> None:
        pass


def test_malformed_oversize_and_unauthorized_requests_get_one_line_4xx(int8_bundle, digits, tmp_path):
    x = digits.x_test[0].tolist()
    with loaded(int8_bundle, digits.pub) as model, serving(model, token="s3cret", max_json_bytes=4096) as (server, client, _):
        auth = {"Authorization": "Bearer s3cret"}
        assert client.post(PREDICT, json={"instances": [x]}).status_code == 401
        assert client.post(PREDICT, json={"instances": [x]}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        cases = [
            (PREDICT, b"{not json", 400, "not valid JSON"),
            (PREDICT, b'{"instances": [[1, 2]]}', 400, "expects [1, 1, 8, 8]"),
            (PREDICT, b'{"instances": [[[1]], [[1, 2]]]}', 400, "rectangular"),
            (PREDICT, b'{"instances": ["a"]}', 400, "numbers"),
            (PREDICT, b'{"instances": [], "inputs": []}', 400, "exactly one"),
            ("/v1/models/other:predict", b'{"instances": [1]}', 404, "serves 'digits'"),
            ("/v1/models/digits/versions/7:predict", b'{"instances": [1]}', 404, "active version is 1"),
            ("/v2/models/digits/infer", b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1]}]}',
             400, "needs 2"),
            ("/v2/models/digits/infer", b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP99", "data": [1]}]}',
             400, "unknown datatype"),
            ("/v2/models/digits/infer", b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}', 400,
             "neither data"),
            ("/v2/models/digits/infer", b"\x89PNG garbage", 400, "not valid JSON"),
            ("/v2/nowhere", b"{}", 404, "no route"),
            (PREDICT, b"[" + b"0," * 4096 + b"0]", 413, "limit"),
        ]
        for path, body, status, words in cases:
            r = client.post(path, content=body, headers={**auth, "Content-Type": "application/json"})
            assert r.status_code == status, (path, body[:40], r.text)
            assert words in r.json()["error"] and "\n" not in r.json()["error"], r.text
        r = client.post(PREDICT, content=b"\x89PNG not an image", headers={**auth, "Content-Type": "image/png"})
        assert r.status_code == 400 and "not a readable image" in r.json()["error"]
        r = client.post("/v2/models/digits/infer", content=b"{}",
                        headers={**auth, "Inference-Header-Content-Length": "99999999", "Content-Type": "application/octet-stream"})
        assert r.status_code == 413
        # after all that, the server still answers correctly
        good = client.post(PREDICT, json={"instances": [x]}, headers=auth)
        assert good.status_code == 200 and np.argmax(good.json()["predictions"][0]) == digits.float_predictions[0]


def test_full_queue_answers_503_and_a_swap_lets_in_flight_requests_finish(int8_bundle, digits):
    x = digits.x_test[0].tolist()
    with loaded(int8_bundle, digits.pub) as model:
        gated = GatedSession(model.session)
        old = ServedModel(model.manifest, gated)
        with serving(old, BatchPolicy(max_batch=1, queue_size=1, workers=1)) as (server, client, holder), \
                ThreadPoolExecutor(4) as pool:
            running = pool.submit(client.post, PREDICT, json={"instances": [x]})
            assert gated.entered.acquire(timeout=10)  # the worker is inside the old model
            queued = pool.submit(client.post, PREDICT, json={"instances": [x]})
            wait_for(lambda: server.service.batcher.depth() == 1, what="one queued request")
            refused = client.post(PREDICT, json={"instances": [x]})
            assert refused.status_code == 503 and "busy" in refused.json()["error"]
            # an update swaps the model: swap() returns only once the in-flight request has finished on the old one
            new = ServedModel(model.manifest, model.session)
            swapped = pool.submit(holder.swap, new)
            time.sleep(0.2)
            assert not swapped.done()  # still waiting for the request on the old model
            gated.gate.set()
            assert swapped.result(timeout=10) is old
            assert running.result(10).status_code == 200 and queued.result(10).status_code == 200
            assert holder.current is new and not holder.inflight()
        assert server.stats.snapshot()["errors"] == 1


def test_litert_session_shared_by_concurrent_requests_stays_correct(tflite_bundle, digits):  # noqa: F811
    """Four workers and eight threads of the caller run one LiteRT interpreter at once (its lock serialises them).

    A tiny switch interval makes Python change threads between set_tensor, invoke and get_tensor, as a
    slower device does: without the session's lock, answers get swapped between requests."""
    import sys

    old_interval = sys.getswitchinterval()
    xs = digits.x_test[:24]
    with loaded(tflite_bundle, digits.pub) as model:
        name = model.manifest.inputs[0].name
        from edge_agent.pipeline.inputs import tensor_to_feed

        expected = [model.session.run({name: tensor_to_feed(x, model.manifest.inputs[0])})[0] for x in xs]
        with serving(model, BatchPolicy(max_batch=1, workers=4, queue_size=256)) as (server, client, _):
            def call(i: int) -> np.ndarray:
                r = client.post(PREDICT, json={"instances": [xs[i % len(xs)].tolist()]})
                assert r.status_code == 200, r.text
                return np.array(r.json()["predictions"])

            def direct(i: int) -> np.ndarray:  # the agent's own inference loop runs beside the endpoint
                return model.session.run({name: tensor_to_feed(xs[i % len(xs)], model.manifest.inputs[0])})[0]

            sys.setswitchinterval(1e-6)
            try:
                with ThreadPoolExecutor(12) as pool:
                    served_f = [pool.submit(call, i) for i in range(96)]
                    own = list(pool.map(direct, range(400)))
                    served = [f.result() for f in served_f]
            finally:
                sys.setswitchinterval(old_interval)
        for i, (a, b) in enumerate(zip(served, own)):
            np.testing.assert_allclose(a, expected[i % len(xs)], atol=1e-6)
            np.testing.assert_allclose(b, expected[i % len(xs)], atol=1e-6)


def test_a_shape_the_litert_model_cannot_take_leaves_its_interpreter_working(tflite_bundle, digits):  # noqa: F811
    """A feed in the wrong layout ([1, 1, 8, 8] for the NHWC [1, 8, 8, 1]) is the input's error, and the next good
    feed still runs: the failed resize used to leave the interpreter at the bad shape, so every later run of the
    model (the agent's own loop, every request) failed with 'Cannot set tensor: Dimension mismatch'."""
    from edge_agent.pipeline.inputs import InputError, tensor_to_feed

    with loaded(tflite_bundle, digits.pub) as model:
        spec = model.manifest.inputs[0]
        good = {spec.name: tensor_to_feed(digits.x_test[0], spec)}
        before = model.session.run(good)[0]
        with pytest.raises(InputError, match=r"expects shape \[1, 8, 8, 1\], got \[1, 1, 8, 8\]"):
            model.session.run({spec.name: digits.x_test[:1].astype(np.float32)})
        np.testing.assert_array_equal(model.session.run(good)[0], before)


@pytest.mark.parametrize("max_batch", [1, 4])  # a request run on its own thread, or queued for a worker
def test_a_request_checked_against_the_old_model_runs_with_feeds_made_for_the_new_one(max_batch, tmp_path):
    """An update swaps an NCHW model for an NHWC one (an ONNX bundle for a TFLite one) while a request made
    for the old model waits for its turn: it runs on the new model with the client tensor transposed for it
    (the old model's feeds fed to the new one fail: [1, 3, 2, 2] where [1, 2, 2, 3] is expected)."""
    from edge_agent.serving.service import InferenceService

    sessions = []
    for layout, version in (("NCHW", 1), ("NHWC", 2)):
        manifest, folder = channel_sum_model(tmp_path / layout, layout, version)
        sessions.append(ServedModel(manifest, load_session(folder, manifest, threads=1)))
    v1, v2 = sessions
    gated = GatedSession(v1.session)
    holder = ModelHolder(ServedModel(v1.manifest, gated))
    service = InferenceService(holder, BatchPolicy(max_batch=max_batch, max_delay_ms=0, workers=1))
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)  # the client's tensor, in the source (NCHW) layout
    try:
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(service.infer_tensors, {"x": x})
            assert gated.entered.acquire(timeout=10)  # the only worker slot runs the old model
            waiting = pool.submit(service.infer_tensors, {"x": x})  # checked and made for v1, waits for the slot
            wait_for(lambda: service.batcher.depth() == 1, what="a request waiting for the model")
            swapped = pool.submit(holder.swap, v2)
            wait_for(lambda: holder.current is v2, what="the swap")
            gated.gate.set()
            swapped.result(timeout=10)
            (out1,), m1 = first.result(timeout=10)
            (out2,), m2 = waiting.result(timeout=10)
    finally:
        service.close()
        for m in sessions:
            m.session.close()
    assert m1.manifest.version == 1 and m2.manifest.version == 2
    np.testing.assert_allclose(out1, [[6, 22, 38]])
    np.testing.assert_allclose(out2, out1)  # the same answer from the NHWC model: the feeds were made for it


def test_dynamic_batcher_stacks_concurrent_requests_and_metrics_show_it(tmp_path):
    import tritonclient.http as triton

    manifest, folder = dynamic_batch_model(tmp_path / "linear")
    session = load_session(folder, manifest, threads=1)
    model = ServedModel(manifest, session)
    rows = np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32)
    expected = session.run({"x": rows})[0]
    seen = []
    with serving(model, BatchPolicy(max_batch=8, max_delay_ms=50, workers=1)) as (server, client, _):
        server.service.add_observer(lambda e: seen.append(e.feeds["x"].shape[0]))
        server.service.add_observer(lambda e: 1 / 0)  # a broken observer never breaks a request
        meta = client.get("/v2/models/linear").json()
        assert meta["inputs"][0]["shape"] == [-1, 4]

        def call(i: int) -> np.ndarray:
            c = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
            inp = triton.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(rows[i:i + 1], binary_data=True)
            return c.infer("linear", [inp]).as_numpy("y")

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(call, range(32)))
        metrics = client.get("/metrics").text
    session.close()
    np.testing.assert_allclose(np.concatenate(answers), expected, rtol=1e-5, atol=1e-6)
    batches = server.stats.snapshot()["batches"]
    assert sum(int(k) * v for k, v in batches.items()) == 32 and max(map(int, batches)) > 1, batches
    assert sorted(seen) == [1] * 32  # observers see each request's own rows
    assert 'edgekit_serving_requests_total{code="200",protocol="kserve_v2"}' in metrics
    assert "edgekit_serving_batch_size_bucket" in metrics and "edgekit_serving_latency_seconds" in metrics
    assert "edgekit_serving_queue_depth" in metrics


def test_serve_model_refuses_a_taken_port_with_its_exit_code(int8_bundle, digits, tmp_path, capsys):
    import socket

    from edge_agent.cli import main as agent_main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        code = agent_main(["--home", str(tmp_path), "serve-model", str(int8_bundle), "--trust", str(digits.pub),
                           "--http", str(port)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 74 and len(err) == 1 and f"127.0.0.1:{port}" in err[0]
    code = agent_main(["--home", str(tmp_path), "serve-model", str(int8_bundle), "--trust", str(digits.pub),
                       "--http", "0", "--queue-size", "0"])
    assert code == 2 and "--queue-size" in capsys.readouterr().err


def test_serve_model_takes_its_token_from_a_file(int8_bundle, digits, tmp_path):
    from .serving_helpers import ServeModelProcess

    token = tmp_path / "token"
    token.write_text("t0ken\n")
    server = ServeModelProcess(int8_bundle, digits.pub, tmp_path / "home", "--http-token-file", str(token))
    try:
        with httpx.Client(base_url=server.url) as client:
            assert client.get("/v2/health/live").status_code == 401
            assert client.get("/metrics").status_code == 401
            ok = client.get("/v2/health/live", headers={"Authorization": "Bearer t0ken"})
            assert ok.status_code == 200 and ok.json() == {"live": True}
    finally:
        code, summary = server.stop()
    assert code == 0 and summary["errors"] == 2


def test_a_token_no_client_can_send_is_refused_at_start(tmp_path, capsys, monkeypatch):
    """A token with non-ASCII characters ('pässwörd') started the endpoint, but no request could ever match it (curl
    sends UTF-8 that the server reads as Latin-1, httpx refuses to send it): every request was 401."""
    from edge_agent.cli import main as agent_main

    token = tmp_path / "token"
    token.write_text("pässwörd\n")
    base = ["--home", str(tmp_path / "home"), "serve-model", str(tmp_path / "any.edgebundle"), "--http", "0"]
    assert agent_main([*base, "--http-token-file", str(token)]) == 2
    assert "must be printable ASCII" in capsys.readouterr().err
    monkeypatch.setenv("EDGE_AGENT_SERVE_TOKEN", "tab\tinside")
    assert agent_main(base) == 2
    assert "EDGE_AGENT_SERVE_TOKEN must be printable ASCII" in capsys.readouterr().err
