"""TensorFlow Serving's REST API: model status, metadata (a `serving_default` signature) and `:predict`
in both request formats, row (`instances`) and columnar (`inputs`), answered as TF Serving does
(`predictions` / `outputs`). Images: `{"b64": "..."}` values (TF Serving's binary convention) or an
`image/*` body are preprocessed as the bundle says; their predictions are the CLI's JSON records (with every
named output under `outputs` when the model has several).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import numpy as np

from ..errors import BadRequest
from ..images import check_image_count
from ..tensors import metadata
from .base import ProtocolAdapter, Request, Response, is_image, route

_MODEL = r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
_TF_DTYPES = {"FP32": "DT_FLOAT", "FP16": "DT_HALF", "FP64": "DT_DOUBLE", "INT8": "DT_INT8", "UINT8": "DT_UINT8",
              "INT16": "DT_INT16", "UINT16": "DT_UINT16", "INT32": "DT_INT32", "UINT32": "DT_UINT32",
              "INT64": "DT_INT64", "UINT64": "DT_UINT64", "BOOL": "DT_BOOL", "BYTES": "DT_STRING"}


class TFServing(ProtocolAdapter):
    name = "tf_serving"

    def routes(self):  # noqa: ANN201 - see ProtocolAdapter
        return [
            ("GET", route(_MODEL + r"/?"), self.status),
            ("GET", route(_MODEL + r"/metadata"), self.metadata),
            ("POST", route(_MODEL + r":predict"), self.predict),
            ("POST", route(_MODEL + r":(?P<method>classify|regress)"), self.unsupported),
        ]

    def unsupported(self, req: Request, m: "re.Match[str]") -> Response:
        """TF Serving's Classify/Regress APIs need tf.Example signatures; this model only has a predict one
        (a client calling them used to get 404 'no route', as if the model were missing)."""
        self.service.model(m["name"], m["version"])
        raise BadRequest(f":{m['method']} is not supported: the serving_default signature's method is "
                         "tensorflow/serving/predict (use :predict)")

    def status(self, req: Request, m: "re.Match[str]") -> Response:
        model = self.service.model(m["name"], m["version"])
        return Response.of_json({"model_version_status": [{
            "version": str(model.manifest.version), "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""}}]})

    def metadata(self, req: Request, m: "re.Match[str]") -> Response:
        model = self.service.model(m["name"], m["version"])
        inputs, outputs = metadata(model.manifest)

        def info(t) -> dict[str, Any]:  # noqa: ANN001
            return {"dtype": _TF_DTYPES.get(t.datatype, "DT_INVALID"), "name": t.name,
                    "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in t.shape], "unknown_rank": False}}

        signature = {"inputs": {t.name: info(t) for t in inputs}, "outputs": {t.name: info(t) for t in outputs},
                     "method_name": "tensorflow/serving/predict"}
        return Response.of_json({
            "model_spec": {"name": model.manifest.name, "signature_name": "", "version": str(model.manifest.version)},
            "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}}})

    def predict(self, req: Request, m: "re.Match[str]") -> Response:
        name, version = m["name"], m["version"]
        if is_image(req):
            return Response.of_json({"predictions": [self._image(req.body, name, version)]})
        body = req.json()
        if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
            raise BadRequest('predict needs a JSON object with exactly one of "instances" or "inputs"')
        signature = body.get("signature_name")
        if signature not in (None, "", "serving_default"):  # was ignored: the client got another signature's answer
            raise BadRequest(f'serving signature name "{signature}" not found; this model has "serving_default"')
        row = "instances" in body
        data = body["instances"] if row else body["inputs"]
        images = _images(data)
        if images is not None:
            results = [self._image(x, name, version) for x in images]
            return Response.of_json({"predictions" if row else "outputs": results})
        arrays = _rows(data) if row else _columns(data)
        outputs, model = self.service.infer_tensors(arrays, name, version)
        names = [t.name for t in model.manifest.outputs]
        if row:
            n = outputs[0].shape[0] if outputs and outputs[0].ndim else 1
            if len(outputs) == 1:
                return Response.of_json({"predictions": outputs[0].tolist()})
            return Response.of_json({"predictions": [{k: o[i].tolist() for k, o in zip(names, outputs)} for i in range(n)]})
        if len(outputs) == 1:
            return Response.of_json({"outputs": outputs[0].tolist()})
        return Response.of_json({"outputs": {k: o.tolist() for k, o in zip(names, outputs)}})

    def _image(self, data: bytes, name: str, version: str | None) -> dict[str, Any]:
        """The CLI's record for one image; a model with several outputs also gives each named output under
        `outputs` (as TF Serving names a multi-output signature's values), not just the one the record decodes."""
        result, outputs, model = self.service.infer_image_outputs(data, name, version)
        if len(outputs) > 1:
            result = {**result, "outputs": {t.name: (o[0] if o.ndim else o).tolist()
                                            for t, o in zip(model.manifest.outputs, outputs)}}
        return result


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)


def _b64(value: Any) -> bytes | None:
    if _is_b64(value):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("a b64 value is not valid base64") from None
    return None


def _images(data: Any) -> list[bytes] | None:
    """The encoded images of a request whose values are all {"b64": ...} (None when it holds tensors)."""
    values = data if isinstance(data, list) else [data]
    values = [next(iter(v.values())) if isinstance(v, dict) and len(v) == 1 and "b64" not in v else v for v in values]
    if len(values) > 1 and _is_b64(values[0]):  # KServe's cap on images a request, before any is decoded
        check_image_count(len(values), "b64 images")
    found = [_b64(v) for v in values]
    if not found or any(x is None for x in found):
        return None
    return found  # type: ignore[return-value]


def _array(value: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged lists
        raise BadRequest(f"{what} is not a rectangular array: {exc}") from None
    if array.dtype.kind not in "biuf":
        raise BadRequest(f"{what} must hold numbers")
    return array


def _rows(instances: Any) -> dict[str, np.ndarray]:
    """Row format: a list of instances, each a value (one input) or {input: value}; stacked on a batch axis."""
    if not isinstance(instances, list) or not instances:
        raise BadRequest('"instances" must be a non-empty list')
    if all(isinstance(x, dict) for x in instances):
        keys = set(instances[0])
        if any(set(x) != keys for x in instances):
            raise BadRequest("every instance must name the same inputs")
        return {k: _array([x[k] for x in instances], f"input '{k}'") for k in keys}
    return {"": _array(instances, '"instances"')}


def _columns(inputs: Any) -> dict[str, np.ndarray]:
    """Columnar format: one value (one input) or {input: value}, each with its batch axis."""
    if isinstance(inputs, dict):
        return {k: _array(v, f"input '{k}'") for k, v in inputs.items()}
    return {"": _array(inputs, '"inputs"')}
