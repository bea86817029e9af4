"""KServe v2 / Open Inference Protocol REST (what Triton, KServe and MLServer speak; `tritonclient.http`).

Health, server and model metadata, model readiness and `infer` with JSON tensors and the binary tensor
data extension (`Inference-Header-Content-Length`), plus Triton's classification extension
(`parameters.classification: K` on a requested output -> "score:index:label" strings).
Images: a BYTES input holding encoded images, or an `image/*` body, is preprocessed as the bundle says
and answered with an extra BYTES output `result` holding the CLI's JSON record per image.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ... import __version__
from ...finite_json import dumps as finite_dumps
from ..errors import BadRequest
from ..holder import Served
from ..images import check_image_count, looks_like_image
from ..tensors import batchable, datatype_of, element_count, from_bytes, from_json_data, metadata, to_bytes
from .base import ProtocolAdapter, Request, Response, is_image, json_body, route

_MODEL = r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
HEADER_LENGTH = "Inference-Header-Content-Length"


class KServeV2(ProtocolAdapter):
    name = "kserve_v2"

    def routes(self):  # noqa: ANN201 - see ProtocolAdapter
        return [
            ("GET", route(r"/v2/?"), self.server_metadata),
            ("GET", route(r"/v2/health/live"), lambda req, m: Response.of_json({"live": True})),
            ("GET", route(r"/v2/health/ready"), self.server_ready),
            ("GET", route(_MODEL + r"/?"), self.model_metadata),
            ("GET", route(_MODEL + r"/ready"), self.model_ready),
            ("GET", route(_MODEL + r"/config"), self.model_config),
            ("POST", route(_MODEL + r"/infer"), self.infer),
        ]

    def server_metadata(self, req: Request, m: "re.Match[str]") -> Response:
        return Response.of_json({"name": "edgekit", "version": __version__,
                                 "extensions": ["binary_tensor_data", "classification", "model_configuration"]})

    def server_ready(self, req: Request, m: "re.Match[str]") -> Response:
        ready = self.service.holder.current is not None
        return Response.of_json({"ready": ready}, 200 if ready else 503)

    def model_ready(self, req: Request, m: "re.Match[str]") -> Response:
        self.service.model(m["name"], m["version"])  # 404 / 503 when not served
        return Response.of_json({"name": m["name"], "ready": True})

    def model_metadata(self, req: Request, m: "re.Match[str]") -> Response:
        model = self.service.model(m["name"], m["version"])
        man = model.manifest
        inputs, outputs = metadata(man)

        def tensor(t) -> dict[str, Any]:  # noqa: ANN001
            return {"name": t.name, "datatype": t.datatype, "shape": t.shape, "parameters": {"layout": t.layout}}

        params: dict[str, Any] = {"format": man.format, "runtime": man.runtime, "precision": man.precision,
                                  "profile": man.profile, "labels": man.labels or []}
        if man.preprocess is not None:
            params["preprocess"] = man.preprocess.__dict__
        if man.postprocess is not None:
            params["postprocess"] = {"kind": man.postprocess.kind, "top_k": man.postprocess.top_k}
        return Response.of_json({"name": man.name, "versions": [str(man.version)], "platform": f"{man.runtime}_{man.format}",
                                 "inputs": [tensor(t) for t in inputs], "outputs": [tensor(t) for t in outputs],
                                 "parameters": params})

    def model_config(self, req: Request, m: "re.Match[str]") -> Response:
        """Triton's model configuration (`tritonclient`'s get_model_config): perf_analyzer and Triton's own client
        examples read max_batch_size, dims and format from it and stopped at a 404 'no route'. Dims leave out the
        batch axis when the model batches (max_batch_size > 0), as Triton's do."""
        model = self.service.model(m["name"], m["version"])
        man = model.manifest
        inputs, outputs = metadata(man)
        max_batch = self.service.batcher.policy.max_batch if batchable(man) else 0

        def tensor(t, is_input: bool) -> dict[str, Any]:  # noqa: ANN001 - TensorMeta
            dims = t.shape[1:] if max_batch and t.shape else t.shape
            out = {"name": t.name, "data_type": "TYPE_STRING" if t.datatype == "BYTES" else f"TYPE_{t.datatype}",
                   "dims": dims}
            if is_input:
                image = t.layout in ("NCHW", "NHWC") and len(dims) == 3
                out["format"] = f"FORMAT_{t.layout}" if image else "FORMAT_NONE"
            return out

        return Response.of_json({"name": man.name, "platform": f"{man.runtime}_{man.format}", "backend": man.runtime,
                                 "version_policy": {"specific": {"versions": [man.version]}},
                                 "max_batch_size": max_batch, "input": [tensor(t, True) for t in inputs],
                                 "output": [tensor(t, False) for t in outputs]})

    # --- infer ---------------------------------------------------------------------------------

    def infer(self, req: Request, m: "re.Match[str]") -> Response:
        if is_image(req):
            result, model = self.service.infer_image(req.body, m["name"], m["version"], _top_k(req.query.get("top_k")))
            return Response.of_json({"model_name": model.manifest.name, "model_version": str(model.manifest.version),
                                     "outputs": [{"name": "result", "datatype": "BYTES", "shape": [1],
                                                  "data": [finite_dumps(result)]}]})
        header, binary = _split(req)
        body = req.json(header)
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
            raise BadRequest('infer request needs "inputs": a non-empty list of tensors')
        arrays = _read_inputs(body["inputs"], binary)
        if len(arrays) == 1 and next(iter(arrays.values())).dtype == object:
            return self._infer_images(body, next(iter(arrays.values())), m)
        outputs, model = self.service.infer_tensors(arrays, m["name"], m["version"])
        return _respond(body, model, {t.name: o for t, o in zip(model.manifest.outputs, outputs)})

    def _infer_images(self, body: dict[str, Any], images: np.ndarray, m: "re.Match[str]") -> Response:
        items = [bytes(x) for x in images.reshape(-1)]
        if not all(looks_like_image(x) for x in items):
            raise BadRequest("a BYTES input must hold encoded images (PNG, JPEG, ...)")
        results, model = [], None
        for item in items:
            result, model = self.service.infer_image(item, m["name"], m["version"])
            results.append(result)
        assert model is not None
        return _respond(body, model, {"result": np.array([finite_dumps(r).encode() for r in results], dtype=object)})


def _object(value: Any, what: str) -> dict[str, Any]:
    """A `parameters` field: an object, or absent (a list or string there was a 500 'has no attribute get')."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        raise BadRequest(f"not an integer: {text!r}") from None


def _top_k(text: str | None) -> int | None:
    """`?top_k=K` as `edge-agent run --top-k` takes it: 1 or more (-1 sliced [:-1] and answered 9 of 10 classes)."""
    k = _int(text)
    if text and (k is None or k < 1):
        raise BadRequest(f"top_k must be 1 or more, got {text!r}")
    return k


def _split(req: Request) -> tuple[bytes, memoryview]:
    """(JSON header, binary tail) of an infer body."""
    length = req.headers.get(HEADER_LENGTH)
    if length is None:
        return req.body, memoryview(b"")
    n = _int(length)
    if n is None or not 0 <= n <= len(req.body):
        raise BadRequest(f"{HEADER_LENGTH} {length!r} does not fit a {len(req.body)}-byte body")
    view = memoryview(req.body)
    return bytes(view[:n]), view[n:]


def _read_inputs(specs: list[Any], binary: memoryview) -> dict[str, np.ndarray]:
    arrays, offset = {}, 0
    for t in specs:
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not isinstance(t.get("shape"), list) \
                or not isinstance(t.get("datatype"), str):
            raise BadRequest("each input needs name, shape and datatype")
        shape = t["shape"]
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise BadRequest(f"input '{t['name']}': shape must be non-negative integers, got {shape}")
        if t["name"] in arrays:
            raise BadRequest(f"input '{t['name']}' is given twice")
        if t["datatype"] == "BYTES":  # encoded images, each run on its own: bounded before the data is parsed
            check_image_count(element_count(shape), f"input '{t['name']}' of shape {shape}")
        size = _object(t.get("parameters"), f"input '{t['name']}' parameters").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise BadRequest(f"input '{t['name']}': binary_data_size {size} runs past the body")
            arrays[t["name"]] = from_bytes(binary[offset:offset + size], t["datatype"], shape)
            offset += size
        elif "data" in t:
            arrays[t["name"]] = from_json_data(t["data"], t["datatype"], shape, t["name"])
        else:
            raise BadRequest(f"input '{t['name']}' has neither data nor binary_data_size")
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data belong to no input")
    return arrays


def _respond(body: dict[str, Any], model: Served, produced: dict[str, np.ndarray]) -> Response:
    """The infer response: requested outputs (all by default), JSON or binary, classification when asked."""
    all_binary = bool(_object(body.get("parameters"), '"parameters"').get("binary_data_output", False))
    requested = body.get("outputs")
    if requested is None or requested == []:
        requested = [{"name": n} for n in produced]
    if not isinstance(requested, list) or not all(isinstance(w, dict) and isinstance(w.get("name"), str) for w in requested) \
            or len({w["name"] for w in requested}) != len(requested):
        raise BadRequest('"outputs" must be a list of distinct {"name": ...} objects')
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for want in requested:
        name = want["name"]
        if name not in produced:
            raise BadRequest(f"unknown output {name!r}; outputs are {list(produced)}")
        p = _object(want.get("parameters"), f"output '{name}' parameters")
        array = produced[name]
        k = p.get("classification")
        if k:
            if not isinstance(k, int) or k < 0:
                raise BadRequest(f"output '{name}': classification must be a positive integer, got {k!r}")
            array = _classification(array, k, model.manifest.labels or [])
        binary = bool(p.get("binary_data", all_binary))
        out: dict[str, Any] = {"name": name, "datatype": datatype_of(array.dtype), "shape": list(array.shape)}
        if binary:
            raw = to_bytes(array)
            out["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            out["data"] = [x.decode() if isinstance(x, bytes) else x for x in array.reshape(-1).tolist()]
        tensors.append(out)
    doc: dict[str, Any] = {"model_name": model.manifest.name, "model_version": str(model.manifest.version),
                           "outputs": tensors}
    if "id" in body:
        doc["id"] = body["id"]
    head, headers = json_body(doc)  # JSON outputs' NaN/inf as null, counted in a header; binary ones stay exact
    if not chunks:
        return Response(200, head, headers=headers)
    headers[HEADER_LENGTH] = str(len(head))
    return Response(200, head + b"".join(chunks), "application/octet-stream", headers)


def _classification(array: np.ndarray, k: int, labels: list[str]) -> np.ndarray:
    """Triton's classification extension: top-k per batch row as "score:index[:label]" strings."""
    rows = np.asarray(array, dtype=np.float32).reshape(array.shape[0] if array.ndim > 1 else 1, -1)
    k = max(1, min(k, rows.shape[1]))
    out = []
    for row in rows:
        order = np.argsort(-row, kind="stable")[:k]
        out.append([f"{row[i]:f}:{i}" + (f":{labels[i]}" if i < len(labels) else "") for i in order])
    return np.array([[s.encode() for s in r] for r in out], dtype=object)

