"""The inference endpoint's bounds on what one client can make it hold: images a request (in both protocols), and
connections (each holds a thread: neither a request head trickling in nor a crowd of idle ones may hold threads
without bound)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .serving_helpers import constant_image_classifier, dynamic_batch_model


@contextmanager
def _serving(model: tuple[Any, Path], **options: Any) -> Iterator[Any]:
    """A (manifest, bundle dir) served in process with these HttpOptions; yields the ServingServer."""
    from edge_agent.runtimes import load_session
    from edge_agent.serving import BatchPolicy, HttpOptions, ModelHolder, ServedModel, start_serving, stop_serving

    manifest, folder = model
    session = load_session(folder, manifest, threads=1)
    server = start_serving(ModelHolder(ServedModel(manifest, session)), BatchPolicy(), HttpOptions(port=0, **options))
    try:
        yield server
    finally:
        stop_serving(server)
        session.close()


def test_serving_drops_a_request_head_that_trickles_in(tmp_path):
    """The read timeout was per read: a client sending a header byte now and then (slowloris) held its connection's
    thread for ever. Now a request's head (request line and headers) is due within read_timeout_s as a whole."""
    import socket

    with _serving(dynamic_batch_model(tmp_path / "linear"), read_timeout_s=1.0) as server:
        with socket.create_connection((server.host, server.port)) as slow:  # a byte every 0.3 s: each read in time
            slow.sendall(b"GET /v2/health/live HTTP/1.1\r\nX-Slow: ")
            closed = False
            for _ in range(40):  # 12 s of trickling: ten times the 1 s the whole head may take
                try:
                    slow.sendall(b"a")
                    slow.settimeout(0.3)
                    closed = slow.recv(1024) == b""
                except socket.timeout:
                    continue
                except OSError:  # reset: closed too
                    closed = True
                if closed:
                    break
            assert closed, "the server still reads a request head trickling in after ten times read_timeout_s"


def test_serving_answers_503_past_its_connection_limit(tmp_path):
    """Each connection holds a thread, and idle connections grew threads without bound. Past max_connections a new
    connection now gets 503 at once, and a slot frees up when a connection ends."""
    import socket

    import httpx

    from .ota_helpers import wait_for

    with _serving(dynamic_batch_model(tmp_path / "linear"), max_connections=2) as server:
        idle = [socket.create_connection((server.host, server.port)) for _ in range(2)]
        try:
            with socket.create_connection((server.host, server.port)) as third:
                third.settimeout(10)
                answer = third.recv(4096)
            assert answer.startswith(b"HTTP/1.1 503 ") and b"too many connections" in answer, answer
        finally:
            for s in idle:
                s.close()
        with httpx.Client(base_url=server.url, timeout=10) as client:  # their threads end, their slots free up
            wait_for(lambda: _live(client), what="a connection slot to free up")


def _live(client: Any) -> bool:
    import httpx

    try:
        return client.get("/v2/health/live").status_code == 200
    except httpx.TransportError:
        return False


def test_tf_serving_b64_images_are_capped_per_request_like_kserve(tmp_path):
    """KServe BYTES inputs were capped at 64 images a request (413), but TF Serving's {"b64": ...} values were not:
    a body under the JSON limit holding thousands of tiny PNGs was decoded and run image by image, holding a worker
    for all of them. Both now share the one cap (images.MAX_IMAGES); the 32 MP per-image cap already held for b64."""
    import base64
    import io

    import httpx
    from PIL import Image

    limit = 64  # docs/serving.md: "at most 64 images a request"
    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, format="PNG")
    png = {"b64": base64.b64encode(buf.getvalue()).decode()}
    with _serving(constant_image_classifier(tmp_path / "constant")) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        for body in ({"instances": [png] * (limit + 1)}, {"inputs": [png] * (limit + 1)},
                     {"instances": [{"image": png}] * (limit + 1)}):
            r = client.post("/v1/models/constant:predict", json=body)
            assert r.status_code == 413 and f"at most {limit} images a request" in r.json()["error"], r.text[:300]
        r = client.post("/v1/models/constant:predict", json={"instances": [png] * limit})
        assert r.status_code == 200 and len(r.json()["predictions"]) == limit


def test_compressed_request_bodies_are_inflated_within_the_body_limit(tmp_path):
    """tritonclient's request_compression_algorithm ('gzip', 'deflate', which Triton takes) got 400 'compressed request
    bodies are not supported'. Such bodies are now inflated, at most to the body limit: a bomb is 413, not gigabytes."""
    import gzip

    import httpx
    import numpy as np
    import tritonclient.http as triton

    manifest, folder = dynamic_batch_model(tmp_path / "linear")
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    with _serving((manifest, folder), max_json_bytes=100_000) as server:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        x = triton.InferInput("x", [2, 4], "FP32")
        x.set_data_from_numpy(rows, binary_data=True)
        plain = client.infer("linear", [x]).as_numpy("y")
        for algorithm in ("gzip", "deflate"):
            x.set_data_from_numpy(rows, binary_data=algorithm == "gzip")  # binary and JSON tensors
            got = client.infer("linear", [x], request_compression_algorithm=algorithm).as_numpy("y")
            assert np.array_equal(got, plain), algorithm
        with httpx.Client(base_url=server.url, timeout=30) as http:
            bomb = gzip.compress(b'{"instances": [' + b" " * 1_000_000 + b"[1, 2, 3, 4]]}")  # ~1 KB inflating to 1 MB
            r = http.post("/v1/models/linear:predict", content=bomb, headers={"Content-Encoding": "gzip"})
            assert r.status_code == 413 and "inflates past" in r.json()["error"], r.text
            r = http.post("/v1/models/linear:predict", content=bomb[:-8], headers={"Content-Encoding": "gzip"})
            assert r.status_code in (400, 413), r.text  # cut short: never served
            r = http.post("/v1/models/linear:predict", content=b"{}", headers={"Content-Encoding": "br"})
            assert r.status_code == 415 and "'br'" in r.json()["error"], r.text


def test_a_401_names_its_scheme_and_the_scheme_is_case_insensitive(tmp_path):
    """A 401 had no WWW-Authenticate (RFC 9110 §11.6.1: it must say the scheme), and 'bearer TOKEN' was refused though
    an auth scheme is case-insensitive (§11.1)."""
    import httpx

    with _serving(dynamic_batch_model(tmp_path / "linear"), token="s3cret") as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.get("/v2/health/ready")
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer "), r.headers
        assert client.get("/v2/health/ready", headers={"Authorization": "bearer s3cret"}).status_code == 200
        assert client.get("/v2/health/ready", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/v2/health/ready", headers={"Authorization": "Bearer s3cre"}).status_code == 401
        assert client.get("/v2/health/ready", headers={"Authorization": "Basic s3cret"}).status_code == 401


def test_serving_latency_is_the_inference_requests_only(tmp_path):
    """Health probes, metadata and /metrics scrapes (0.2 ms each) went into edgekit_serving_latency_seconds with the
    inferences: a probed endpoint's p50 showed a tenth of any inference's time. Only infer/predict are in it now."""
    import httpx

    from .ota_helpers import wait_for

    with _serving(dynamic_batch_model(tmp_path / "linear")) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/linear", "/v1/models/linear/metadata", "/metrics"):
            assert client.get(path).status_code == 200, path
        assert server.stats.snapshot()["latency_ms"]["count"] == 0
        assert client.post("/v1/models/linear:predict", json={"instances": [[1, 2, 3, 4]]}).status_code == 200
        infer = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        assert client.post("/v2/models/linear/infer", json=infer).status_code == 200
        wait_for(lambda: server.stats.snapshot()["latency_ms"]["count"] == 2,  # recorded just after the answer is sent
                 what="the two inferences' latencies")
        assert server.stats.snapshot()["latency_ms"]["count"] == 2
        assert 'edgekit_serving_latency_seconds{quantile="0.5"}' in client.get("/metrics").text


def test_an_unauthorized_body_is_refused_before_it_is_read(tmp_path):
    """The token was checked after the body was read: a client without it was invited (100 Continue) to upload up to
    --max-body-mb, held in memory, before its 401 (64 connections x 64 MB on a Pi). Now the 401 comes first."""
    import socket

    head = ("POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n"
            "Inference-Header-Content-Length: 10\r\nExpect: 100-continue\r\n{auth}\r\n")
    with _serving(dynamic_batch_model(tmp_path / "linear"), token="s3cret") as server:
        for auth, status in (("", b"401"), ("Authorization: Bearer nope\r\n", b"401"),
                             ("Authorization: Bearer s3cret\r\n", b"100")):
            with socket.create_connection((server.host, server.port)) as s:
                s.settimeout(30)
                s.sendall(head.format(auth=auth).encode())
                answer = s.recv(4096)
            assert answer.startswith(b"HTTP/1.1 " + status), (auth, answer)
            if status == b"401":
                assert b"WWW-Authenticate: Bearer" in answer and b"Connection: close" in answer, answer
