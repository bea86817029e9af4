"""Encoded images in, the CLI's answers out: the bundle's own preprocessing and postprocessing.

An app posts a JPEG/PNG and gets what `edge-agent run IMAGE --json` prints (classification top-k with
labels, or detections in the image's pixels), so it does not re-implement the bundle's preprocessing.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bundle import Manifest
from ..pipeline.detection import FrameGeometry
from ..pipeline.postprocess import raw_outputs
from ..pipeline.preprocess import preprocess_image, read_image
from ..pipeline.stages import Postprocessor
from .errors import BadRequest, TooLarge

# The largest image a request may hold: 8K UHD (7680x4320) fits. Pillow's own bomb guard only refuses 179 MP,
# and a 420 KB PNG of 12000x12000 made the process peak at 3.9 GB on its way to an 8x8 model: an OOM kill on a Pi.
MAX_IMAGE_PIXELS = 32 * 1024 * 1024
# The most encoded images one request may hold (each is decoded and run on its own), in both protocols: KServe
# BYTES inputs (a 60 MB body of 10 M two-byte strings took 11 s of the GIL and 830 MB to parse before being refused
# as 'not images') and TF Serving's {"b64": ...} values (thousands of tiny PNGs under the JSON limit held a worker).
MAX_IMAGES = 64

# Magic numbers of the image formats Pillow reads here: what `looks_like_image` accepts in a BYTES tensor.
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*", b"P5", b"P6")


def check_image_count(count: int, what: str) -> None:
    """413 for a request holding more than MAX_IMAGES images, before any of them is decoded."""
    if count > MAX_IMAGES:
        raise TooLarge(f"{what}: at most {MAX_IMAGES} images a request, got {count}")


def looks_like_image(data: bytes) -> bool:
    return data.startswith(_MAGIC)


def image_feeds(data: bytes, manifest: Manifest) -> tuple[dict[str, np.ndarray], FrameGeometry]:
    """Decode one encoded image and preprocess it exactly as `edge-agent run IMAGE` does."""
    pre, spec = manifest.preprocess, manifest.inputs[0]
    if pre is None or pre.kind != "image":
        raise BadRequest(f"this model has no image preprocessing: send '{spec.name}' as a tensor")
    _check_pixels(data)
    try:
        image = read_image(io.BytesIO(data))  # type: ignore[arg-type] - Pillow opens file objects too
    except Exception as exc:  # noqa: BLE001 - Pillow raises several types for bad data
        text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        text = re.sub(r" <[\w.]+ object at 0x[0-9a-f]+>", "", text)  # Pillow names our BytesIO: '<_io.BytesIO object at 0x7f..>'
        raise BadRequest(f"not a readable image: {text}") from None
    tensor, box = preprocess_image(image, pre, spec)
    h, w = image.shape[:2]
    geometry = FrameGeometry.from_preprocess((h, w), (pre.size[0], pre.size[1]), pre.resize, box)
    return {spec.name: tensor}, geometry


def _check_pixels(data: bytes) -> None:
    """413 for an image over MAX_IMAGE_PIXELS, from its header alone (nothing is decoded)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except Exception:  # noqa: BLE001 - not an image Pillow can open: read_image says why
        return
    if width * height > MAX_IMAGE_PIXELS:
        raise TooLarge(f"image of {width}x{height} pixels is over this endpoint's {MAX_IMAGE_PIXELS}-pixel limit: "
                       "send it resized")


@dataclass(frozen=True)
class ImageInput:
    """A request's encoded image as a pipeline.observe.LiveInput: decoded and preprocessed for another model."""

    data: bytes

    def prepare(self, manifest: Manifest) -> tuple[dict[str, np.ndarray], FrameGeometry]:
        return image_feeds(self.data, manifest)


def image_answer(outputs: list[np.ndarray], manifest: Manifest, geometry: FrameGeometry,
                 top_k: int | None = None) -> dict[str, Any]:
    """The CLI's record for one image: {kind, label, name, score, top_k}, {kind, detections}, or for a bundle
    without a postprocess (maps, sequences) {kind: none, outputs: [{name, shape, dtype, data}]}."""
    if manifest.postprocess is not None and manifest.postprocess.kind == "none":
        return {"kind": "none", "outputs": raw_outputs(outputs, manifest)}
    return Postprocessor(manifest, top_k)(outputs, geometry)
