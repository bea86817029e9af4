"""The inference endpoint probed as its users' clients use it: curl-style JSON, tritonclient, TF Serving REST
clients, raw HTTP/1.1 (chunked bodies, Expect: 100-continue, HEAD, clients that vanish). Each test names what a
client saw before its fix; all run a real `edge-agent serve-model` process on the digits bundle.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest

from .serving_helpers import ServeModelProcess

INFER = "/v2/models/digits/infer"
PREDICT = "/v1/models/digits:predict"


@pytest.fixture(scope="module")
def server(int8_bundle, digits, tmp_path_factory):
    """One serve-model process for the module's tests (each test leaves it serving)."""
    proc = ServeModelProcess(int8_bundle, digits.pub, tmp_path_factory.mktemp("probe-home"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def tensor(datatype: str, shape: list, data: object) -> dict:
    return {"inputs": [{"name": "image", "shape": shape, "datatype": datatype, "data": data}]}


def assert_one_line_400(r: httpx.Response, words: str) -> None:
    assert r.status_code == 400, r.text
    assert words in r.json()["error"] and "\n" not in r.json()["error"], r.text


def blank_png(width: int, height: int) -> bytes:
    """A grey PNG of any size in a few hundred KB (all-zero rows deflate ~1000:1): what a decompression bomb is."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def still_serves(http: httpx.Client, digits) -> None:
    r = http.post(PREDICT, json={"instances": [digits.x_test[0].tolist()]})
    assert r.status_code == 200 and int(np.argmax(r.json()["predictions"][0])) == int(digits.float_predictions[0])


def test_kserve_values_the_datatype_cannot_hold_are_the_clients_400(server, http, digits):
    """Before: UINT8 300, INT8 200, a shape of [2**62, 4] with no data (numpy's product wrapped to 0), a shape of
    [true], and BYTES data holding null or a number (bytes(10**15): MemoryError) all answered 500 'internal error'."""
    cases = [
        (tensor("UINT8", [1, 1, 8, 8], [300] * 64), "data is not UINT8"),
        (tensor("INT8", [1, 1, 8, 8], [200] * 64), "data is not INT8"),
        (tensor("FP32", [2 ** 62, 4], []), f"needs {2 ** 64}"),
        ({"inputs": [{"name": "image", "shape": [2 ** 62, 4], "datatype": "FP32",
                      "parameters": {"binary_data_size": 0}}]}, "binary tensor has 0 bytes"),
        (tensor("FP32", [True], [1.0]), "shape must be non-negative integers"),
        (tensor("BYTES", [1], [None]), "BYTES data must be strings"),
        (tensor("BYTES", [1], [10 ** 15]), "BYTES data must be strings"),
    ]
    for body, words in cases:
        if "binary_data_size" in json.dumps(body):
            head = json.dumps(body).encode()
            r = http.post(INFER, content=head, headers={"Inference-Header-Content-Length": str(len(head))})
        else:
            r = http.post(INFER, json=body)
        assert_one_line_400(r, words)
    still_serves(http, digits)


def test_kserve_parameters_and_outputs_of_the_wrong_json_type_are_400(server, http, digits):
    """Before: `parameters` as a list or a string (on the request, an input or an output), a classification count
    that is not a number, answered 500 "'list' object has no attribute 'get'"; `outputs: ["logits"]` (names, not
    objects) said "unknown output None"; an input given twice under one name was silently taken once."""
    x = digits.x_test[0].reshape(-1).tolist()
    good = tensor("FP32", [1, 1, 8, 8], x)
    image = good["inputs"][0]
    cases = [
        ({**good, "parameters": [1]}, '"parameters" must be a JSON object'),
        ({**good, "parameters": "binary"}, '"parameters" must be a JSON object'),
        ({"inputs": [{**image, "parameters": ["x"]}]}, "input 'image' parameters must be a JSON object"),
        ({**good, "outputs": [{"name": "logits", "parameters": "zz"}]}, "output 'logits' parameters must be a JSON"),
        ({**good, "outputs": [{"name": "logits", "parameters": {"classification": "x"}}]}, "positive integer"),
        ({**good, "outputs": ["logits"]}, 'list of distinct {"name": ...} objects'),
        ({"inputs": [image, image]}, "input 'image' is given twice"),
    ]
    for body, words in cases:
        assert_one_line_400(http.post(INFER, json=body), words)
    r = http.post(INFER, json={**good, "id": "q-7", "parameters": {"custom": 1},
                               "outputs": [{"name": "logits", "parameters": {"classification": 2}}]})
    assert r.status_code == 200 and r.json()["id"] == "q-7"
    assert r.json()["outputs"][0]["data"][0].split(":")[1] == str(digits.float_predictions[0])


def test_tf_serving_unknown_signature_and_classify_regress_are_clear_400s(server, http, digits):
    """Before: a `signature_name` the model does not have was ignored (the client got serving_default's answer as
    if it were the signature it asked for), and :classify / :regress got 404 'no route', as if the model were not
    there. TF Serving answers both with 400 (INVALID_ARGUMENT)."""
    x = digits.x_test[0].tolist()
    r = http.post(PREDICT, json={"signature_name": "classify_v2", "instances": [x]})
    assert_one_line_400(r, 'signature name "classify_v2" not found')
    for method in ("classify", "regress"):
        r = http.post(f"/v1/models/digits:{method}", json={"examples": [{"x": 1.0}]})
        assert_one_line_400(r, f":{method} is not supported")
    assert http.post("/v1/models/other:classify", json={"examples": []}).status_code == 404
    r = http.post(PREDICT, json={"signature_name": "serving_default", "instances": [x]})
    assert r.status_code == 200 and int(np.argmax(r.json()["predictions"][0])) == int(digits.float_predictions[0])


def raw_exchange(server, request: bytes, read_s: float = 5.0) -> bytes:
    """Send raw bytes on a fresh connection; every byte the server sends back until it closes (or read_s passes)."""
    host, port = server.host_port.split(":")
    with socket.create_connection((host, int(port)), timeout=read_s) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except TimeoutError:
            pass
    return data


def read_response(s: socket.socket) -> bytes:
    """One response off a connection: its head and its Content-Length worth of body (a 100 Continue is a head alone)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536) or b"<EOF>"
        assert not data.endswith(b"<EOF>"), data
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def test_chunked_request_bodies_are_read_and_ambiguous_framing_is_refused(server, http, digits):
    """Before: a chunked body (httpx/requests with a generator, curl -H 'Transfer-Encoding: chunked') got 411; a
    request with both Transfer-Encoding and Content-Length was read by Content-Length and the rest of its bytes
    parsed as a second request (request smuggling); a body cut short by a client that left was still served."""
    x = digits.x_test[0].tolist()
    payload = json.dumps({"instances": [x]}).encode()
    r = http.post(PREDICT, content=iter([payload[:100], payload[100:]]))  # httpx sends an iterator chunked
    assert r.request.headers["Transfer-Encoding"] == "chunked"
    assert r.status_code == 200, r.text
    assert int(np.argmax(r.json()["predictions"][0])) == int(digits.float_predictions[0])
    r = http.post(PREDICT, content=iter([b"x" * (9 * 1024 * 1024)]))  # over --max-json-mb 8, chunked
    assert r.status_code == 413 and "limit" in r.json()["error"]

    smuggled = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    answer = raw_exchange(server, b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n"
                          b"\r\n%s" % (PREDICT.encode(), chunked))
    assert answer.startswith(b"HTTP/1.1 400 ") and b"ambiguous" in answer, answer
    assert answer.count(b"HTTP/1.1") == 1, answer  # the body is not parsed as a request of its own

    cut = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (PREDICT.encode(), len(payload) + 50, payload)
    assert raw_exchange(server, cut) == b""  # no answer to a request that never arrived whole
    still_serves(http, digits)


def test_expect_100_continue_gets_the_refusal_before_the_body_is_sent(server, digits):
    """curl sends `Expect: 100-continue` for bodies over 1 KB. Before: the server answered 100 Continue to a body it
    was going to refuse (over --max-json-mb, no length), so the client uploaded it all before its 413."""
    host, port = server.host_port.split(":")
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n" % PREDICT.encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head + b"Content-Length: %d\r\n\r\n" % (9 * 1024 * 1024))  # the body is never sent
        answer = read_response(s)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"limit" in answer, answer
    payload = json.dumps({"instances": [digits.x_test[0].tolist()]}).encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head + b"Content-Length: %d\r\n\r\n" % len(payload))
        assert read_response(s).startswith(b"HTTP/1.1 100 Continue\r\n")
        s.sendall(payload)
        answer = read_response(s)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"predictions" in answer, answer


def test_head_options_and_wrong_methods_get_http_answers_in_json(server, http):
    """Before: HEAD (uptime monitors, some load balancers' health checks) and OPTIONS got 501 HTML pages; GET on
    .../infer or DELETE on a model got 404 'no route' as if it did not exist; too many headers or an unknown
    method got http.server's HTML error page instead of one line of JSON."""
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/digits/ready", "/v1/models/digits", "/metrics"):
        got, head = http.get(path), http.head(path)
        assert head.status_code == 200 and head.content == b"", (path, head.status_code)
        if path != "/metrics":  # the scrape's text changes between two requests; its length may too
            assert head.headers["Content-Length"] == got.headers["Content-Length"] == str(len(got.content))
    assert http.get("/v2/health/live").json() == {"live": True}  # the connection stays usable after a HEAD
    r = http.options("/v2/models/digits/infer")
    assert r.status_code == 200 and r.headers["Allow"] == "OPTIONS, POST"
    r = http.get("/v2/models/digits/infer")
    assert r.status_code == 405 and r.headers["Allow"] == "OPTIONS, POST" and "GET is not allowed" in r.json()["error"]
    r = http.delete("/v2/models/digits")
    assert r.status_code == 405 and "GET" in r.headers["Allow"]
    assert http.get("/v2/nowhere").status_code == 404 and http.options("/v2/nowhere").status_code == 404
    many = b"".join(b"X-%d: y\r\n" % i for i in range(200))
    for request, status in ((b"GET /v2 HTTP/1.1\r\n%s\r\n" % many, b"431"), (b"BREW /v2 HTTP/1.1\r\nHost: x\r\n\r\n", b"501")):
        answer = raw_exchange(server, request)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 " + status) and b"application/json" in head, answer
        assert "error" in json.loads(body), answer


def test_clients_that_hang_up_mid_response_leave_no_tracebacks(int8_bundle, digits, tmp_path):
    """Before: every client that reset its connection before reading the answer (a timeout in an app, a killed
    process) printed a 20-line socketserver traceback (ConnectionResetError) to the agent's stderr and journal."""
    import signal
    import struct

    proc = ServeModelProcess(int8_bundle, digits.pub, tmp_path / "home")
    host, port = proc.host_port.split(":")
    payload = json.dumps({"instances": [digits.x_test[0].tolist()]}).encode()
    requests = [b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (PREDICT.encode(), len(payload), payload),
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"]
    try:
        for i in range(40):
            s = socket.create_connection((host, int(port)))
            s.sendall(requests[i % 2])
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
            s.close()
        with httpx.Client(base_url=proc.url) as http:
            still_serves(http, digits)
    finally:
        proc.proc.send_signal(signal.SIGTERM)
        _, err = proc.proc.communicate(timeout=20)
    assert proc.proc.returncode == 0
    assert "Traceback" not in err and "ConnectionResetError" not in err, err[-2000:]


def test_json_nested_too_deeply_is_400(server, http, digits):
    """Before: a body of 100000 nested arrays (a few hundred KB, well under --max-json-mb) hit the JSON decoder's
    recursion limit and answered 500 'internal error: maximum recursion depth exceeded'."""
    deep = "[" * 100_000 + "]" * 100_000
    for path, body in ((PREDICT, '{"instances": %s}' % deep), (INFER, '{"inputs": %s}' % deep)):
        assert_one_line_400(http.post(path, content=body.encode()), "nested too deeply")
    still_serves(http, digits)


def test_an_image_too_many_pixels_to_decode_safely_is_413_before_decoding(server, http, digits):
    """Before: Pillow's bomb guard only refuses 179 MP, so a ~100 KB grey PNG of 5800x5800 was decoded whole (a
    12000x12000 RGB one of 420 KB peaked the process at 3.9 GB: an OOM kill on a Pi). Now 413 from the header."""
    import base64

    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    bomb = blank_png(5800, 5800)
    assert len(bomb) < 200_000
    r = http.post(PREDICT, content=bomb, headers={"Content-Type": "image/png"})
    assert r.status_code == 413 and "5800x5800 pixels is over" in r.json()["error"], r.text
    r = http.post(PREDICT, json={"instances": [{"b64": base64.b64encode(bomb).decode()}]})
    assert r.status_code == 413, r.text
    client = triton.InferenceServerClient(server.host_port)
    inp = triton.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([bomb], dtype=object), binary_data=True)
    with pytest.raises(InferenceServerException, match="pixel limit"):
        client.infer("digits", [inp])
    r = http.post(PREDICT, content=blank_png(64, 48), headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.json()["predictions"][0]["kind"] == "classification"


def test_an_unreadable_image_is_named_without_a_python_object_address(server, http):
    """Before: 'not a readable image: cannot identify image file <_io.BytesIO object at 0x7f33aa21b600>': the
    server's own buffer, by memory address, in the client's error."""
    png = blank_png(8, 8)
    for body in (png[: len(png) // 2], b"\x89PNG not an image"):
        r = http.post(PREDICT, content=body, headers={"Content-Type": "image/png"})
        assert_one_line_400(r, "not a readable image: ")
        assert "BytesIO" not in r.text and " at 0x" not in r.text, r.text


def test_a_get_with_a_body_leaves_the_connection_in_step(server, digits):
    """Some clients send a body with GET. Before: the server left it in the stream, parsed it as the next request's
    line, and the client's next request on that keep-alive connection got 400 'Bad request syntax'."""
    host, port = server.host_port.split(":")
    body = b'{"verbose": true}'
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        first = read_response(s)
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        second = read_response(s)
    assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b'{"ready":true}'), first
    assert second.startswith(b"HTTP/1.1 200 ") and second.endswith(b'{"live":true}'), second


def test_json_labelled_octet_stream_gets_the_json_limit(server, http, digits):
    """Before: any application/octet-stream body got the 64 MB binary limit, though without the binary tensor
    header both protocols parse it as JSON whole: a 9 MB JSON body (over --max-json-mb 8) was parsed (a 20 MB one
    took the process from 80 to 420 MB). tritonclient's binary tensors (with the header) still get the big limit."""
    import tritonclient.http as triton

    big = b'{"instances": [' + b"0.5," * (9 * 1024 * 1024 // 4) + b"0.5]}"
    for path in (PREDICT, INFER):
        r = http.post(path, content=big, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 413 and "8388608-byte limit" in r.json()["error"], r.text
    client = triton.InferenceServerClient(server.host_port)
    inp = triton.InferInput("image", [1, 1, 8, 8], "FP32")
    inp.set_data_from_numpy(digits.x_test[:1].astype(np.float32), binary_data=True)
    assert int(client.infer("digits", [inp]).as_numpy("logits").argmax()) == int(digits.float_predictions[0])


def test_bytes_inputs_are_bounded_before_they_are_parsed(server, http, digits):
    """Before: a 60 MB binary body of 10 M two-byte BYTES elements was parsed whole (11 s holding the GIL, 830 MB)
    before the answer 'must hold encoded images'; a BYTES tensor declared as [1] but holding millions of elements
    was parsed to its end too. Now: at most 64 images a request (413), and parsing stops past the declared count."""
    import struct

    def post(shape: list[int], count: int) -> httpx.Response:
        binary = (struct.pack("<I", 2) + b"ab") * count
        head = json.dumps({"inputs": [{"name": "image", "shape": shape, "datatype": "BYTES",
                                       "parameters": {"binary_data_size": len(binary)}}]}).encode()
        return http.post(INFER, content=head + binary, headers={"Inference-Header-Content-Length": str(len(head))})

    r = post([2_000_000], 2_000_000)
    assert r.status_code == 413 and "at most 64 images" in r.json()["error"], r.text
    r = http.post(INFER, json=tensor("BYTES", [100_000], ["ab"] * 100_000))
    assert r.status_code == 413 and "at most 64 images" in r.json()["error"], r.text
    assert_one_line_400(post([1], 2_000_000), "BYTES tensor holds more than 1 elements; shape [1] needs 1")
    still_serves(http, digits)


def test_an_image_top_k_below_one_is_400(server, http):
    """Before: ?top_k=-1 on an image answered 9 of the 10 classes (a Python slice [:-1]) and ?top_k=0 the manifest's
    default 5, both 200; `edge-agent run --top-k` refuses anything below 1."""
    png = blank_png(8, 8)
    for k in ("-1", "0"):
        r = http.post(f"{INFER}?top_k={k}", content=png, headers={"Content-Type": "image/png"})
        assert_one_line_400(r, f"top_k must be 1 or more, got '{k}'")
    r = http.post(f"{INFER}?top_k=2", content=png, headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and len(json.loads(r.json()["outputs"][0]["data"][0])["top_k"]) == 2
