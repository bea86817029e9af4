"""Image preprocessing as the manifest describes it: colour, resize/letterbox, scale, mean/std, layout."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..bundle import Manifest, Preprocess, TensorSpec

log = logging.getLogger(__name__)
PAD = 114  # letterbox fill (Ultralytics)


@dataclass(frozen=True)
class Letterbox:
    """How a letterboxed frame maps back to the original: orig = (model - pad) / scale."""

    scale: float
    pad_x: float
    pad_y: float


def to_layout(chw_or_hwc: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Transpose a batched 4-D array between NCHW and NHWC (no-op when equal or not 4-D)."""
    if src == dst or chw_or_hwc.ndim != 4 or {src, dst} != {"NCHW", "NHWC"}:
        return chw_or_hwc
    axes = (0, 2, 3, 1) if src == "NCHW" else (0, 3, 1, 2)
    return np.ascontiguousarray(chw_or_hwc.transpose(axes))


def _letterbox_geometry(width: int, height: int, size: tuple[int, int]) -> tuple[int, int, Letterbox]:
    """Ultralytics' letterbox: keep the aspect ratio, pad evenly (the same numbers for both resamplers)."""
    h, w = size
    scale = min(w / width, h / height)
    nw, nh = max(1, round(width * scale)), max(1, round(height * scale))
    return nw, nh, Letterbox(scale, (w - nw) // 2, (h - nh) // 2)


def _resize_pillow(image: np.ndarray, size: tuple[int, int], mode: str, pad: bool = True) -> tuple[np.ndarray, Letterbox]:
    """Resize an HxWxC uint8 image to (height, width) with Pillow (BILINEAR, antialiased when shrinking).
    pad=False: a letterbox is returned unpadded (the caller writes the border)."""
    from PIL import Image

    h, w = size
    squeeze = image.shape[2] == 1
    pil = Image.fromarray(image[:, :, 0] if squeeze else image)
    method = Image.Resampling.NEAREST if mode == "nearest" else Image.Resampling.BILINEAR
    if mode == "letterbox":
        nw, nh, box = _letterbox_geometry(pil.width, pil.height, size)
        if not pad:
            arr = np.asarray(pil.resize((nw, nh), Image.Resampling.BILINEAR))
            return (arr[:, :, None] if arr.ndim == 2 else arr), box
        canvas = Image.new(pil.mode, (w, h), color=(PAD,) * len(pil.getbands()) if len(pil.getbands()) > 1 else PAD)
        canvas.paste(pil.resize((nw, nh), Image.Resampling.BILINEAR), (int(box.pad_x), int(box.pad_y)))
        out = canvas
    else:
        out = pil.resize((w, h), method) if (pil.width, pil.height) != (w, h) else pil
        box = Letterbox(1.0, 0.0, 0.0)
    arr = np.asarray(out)
    return (arr[:, :, None] if arr.ndim == 2 else arr), box


def _resize_opencv(image: np.ndarray, size: tuple[int, int], mode: str, pad: bool = True) -> tuple[np.ndarray, Letterbox]:
    """Resize with cv2.resize INTER_LINEAR (INTER_NEAREST for `nearest`); letterbox into a 114-filled canvas
    (pad=False: unpadded). Native code, no copy through Pillow: a few hundred microseconds for a VGA frame."""
    import cv2

    h, w = size
    c = image.shape[2]
    interp = cv2.INTER_NEAREST if mode == "nearest" else cv2.INTER_LINEAR
    if mode == "letterbox":
        nw, nh, box = _letterbox_geometry(image.shape[1], image.shape[0], size)
        resized = cv2.resize(image, (nw, nh), interpolation=interp)
        if not pad:
            return resized.reshape(nh, nw, c), box
        out = np.full((h, w, c), PAD, dtype=np.uint8)
        out[int(box.pad_y):int(box.pad_y) + nh, int(box.pad_x):int(box.pad_x) + nw] = resized.reshape(nh, nw, c)
        return out, box
    if image.shape[:2] == (h, w):
        return image, Letterbox(1.0, 0.0, 0.0)
    return cv2.resize(image, (w, h), interpolation=interp).reshape(h, w, c), Letterbox(1.0, 0.0, 0.0)


_warned_no_opencv = False


def _resize(image: np.ndarray, size: tuple[int, int], mode: str, resampler: str = "pillow",
            pad: bool = True) -> tuple[np.ndarray, Letterbox]:
    """Resize as the manifest says (mode and resampler); a bundle built with OpenCV on a device without it
    falls back to Pillow, once with a warning (pixels then differ slightly from the converter's)."""
    global _warned_no_opencv
    if resampler == "opencv":
        try:
            return _resize_opencv(image, size, mode, pad)
        except ImportError:
            if not _warned_no_opencv:
                _warned_no_opencv = True
                log.warning("the bundle was calibrated with OpenCV resizing but OpenCV is not installed here "
                            "(pip install 'edgekit[camera]'): resizing with Pillow, results may differ slightly")
    return _resize_pillow(image, size, mode, pad)


def convert_color(image: np.ndarray, source_order: str, target_order: str) -> np.ndarray:
    """HxWxC uint8 image from `source_order` (RGB/BGR/GRAY) into `target_order`."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if image.shape[2] == 1 and target_order in ("RGB", "BGR"):
        return np.repeat(image, 3, axis=2)  # a grayscale picture among colour ones: same three channels
    if source_order == target_order:
        return image
    if target_order == "GRAY":
        rgb = image[:, :, ::-1] if source_order == "BGR" else image
        if rgb.shape[2] == 1:
            return rgb
        gray = rgb[:, :, 0] * 0.299 + rgb[:, :, 1] * 0.587 + rgb[:, :, 2] * 0.114
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)[:, :, None]
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[:, :, ::-1]  # RGB <-> BGR


def preprocess_image(
    image: np.ndarray, spec: Preprocess, tensor: TensorSpec, color_order: str = "RGB"
) -> tuple[np.ndarray, Letterbox]:
    """An HxWxC uint8 image -> a batched float32 tensor in the model input's layout.

    Per frame on the camera path, so every step is native or contiguous: an RGB<->BGR swap happens after the
    resize, on the small image (resizing is per channel, so the result is the same); a letterbox is resized
    unpadded and its border written as constants; scale/mean/std go from contiguous uint8 planes into the output
    tensor in one pass (a strided read, e.g. a reversed channel axis, cost 6x more). The same float32 operations
    in the same order as `(pixel * scale - mean) / std`, bit for bit (tests/test_preprocess_exact.py).
    """
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 4:
        image = image[:, :, :3]
    swap = image.shape[2] == 3 and {color_order, spec.color} == {"RGB", "BGR"}
    if not swap:
        image = convert_color(image, color_order, spec.color)
    if not image.flags.c_contiguous:
        image = np.ascontiguousarray(image)
    size = (spec.size[0], spec.size[1])
    layout = tensor.layout if tensor.layout in ("NCHW", "NHWC") else "NCHW"
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    channels = image.shape[2]
    if mean.size not in (1, channels) or std.size not in (1, channels):  # broadcasting widens the image: as before
        resized, box = _resize(image, size, spec.resize, spec.resampler)
        x = (resized.astype(np.float32) * np.float32(spec.scale) - mean) / std
        return to_layout(x[None], "NHWC", layout), box
    resized, box = _resize(image, size, spec.resize, spec.resampler, pad=False)
    if swap and layout == "NHWC":  # NCHW: the planes are written in the other order instead (no pass over the image)
        resized = _swap_rb(resized)
    normalise = _normaliser(np.float32(spec.scale), mean.reshape(-1), std.reshape(-1))
    out = np.empty((1, size[0], size[1], channels) if layout == "NHWC" else (1, channels, size[0], size[1]), np.float32)
    y, x = int(box.pad_y), int(box.pad_x)
    rh, rw = resized.shape[:2]
    if (rh, rw) != size:  # the letterbox border: the pad grey through the same arithmetic
        border = normalise(np.full((1, 1, channels), PAD, np.uint8), np.empty((1, 1, channels), np.float32))[0, 0]
        if layout == "NHWC" and bool(np.all(border == border[0])):  # one value: four fills of whole bands, not 12
            img = out[0]  # strided per-channel ones (35 us against 8 for a 320x320 letterbox)
            img[:y].fill(border[0]), img[y + rh:].fill(border[0])
            img[y:y + rh, :x].fill(border[0]), img[y:y + rh, x + rw:].fill(border[0])
        else:
            planes = out[0] if layout == "NCHW" else out[0].transpose(2, 0, 1)
            for c in range(channels):
                plane = planes[c]
                plane[:y].fill(border[c]), plane[y + rh:].fill(border[c])
                plane[y:y + rh, :x].fill(border[c]), plane[y:y + rh, x + rw:].fill(border[c])
    if layout == "NHWC":
        normalise(resized, out[0, y:y + rh, x:x + rw])
    else:
        planes = _planes(resized)
        for c, plane in enumerate(planes[::-1] if swap else planes):
            normalise(plane, out[0, c, y:y + rh, x:x + rw], c)
    return out, box


def _normaliser(scale: np.float32, mean: np.ndarray, std: np.ndarray):
    """(pixels, out[, channel]) -> out = (pixels * scale - mean) / std in float32, skipping the no-op steps."""
    sub, div = bool(np.any(mean != 0)), bool(np.any(std != 1))

    def run(src: np.ndarray, out: np.ndarray, channel: int | None = None) -> np.ndarray:
        m = mean if channel is None or mean.size == 1 else mean[channel:channel + 1]
        s = std if channel is None or std.size == 1 else std[channel:channel + 1]
        np.multiply(src, scale, out=out)
        if sub:
            np.subtract(out, m, out=out)
        if div:
            np.divide(out, s, out=out)
        return out

    return run


def _cv2_or_none():
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def _swap_rb(image: np.ndarray) -> np.ndarray:
    """RGB <-> BGR of a small HxWx3 uint8 image, contiguous (cv2.cvtColor: 40x faster than a numpy reversed copy)."""
    cv2 = _cv2_or_none()
    if cv2 is not None:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image[:, :, ::-1])


def _planes(image: np.ndarray) -> list[np.ndarray]:
    """The channels of an HxWxC uint8 image as contiguous HxW planes (for NCHW)."""
    cv2 = _cv2_or_none()
    if cv2 is not None and image.shape[2] > 1:
        return list(cv2.split(image))
    return [np.ascontiguousarray(image[:, :, c]) for c in range(image.shape[2])]


def _upright(im):
    """`im` turned per its EXIF orientation, as OpenCV's imread does. Not ImageOps.exif_transpose: it also rewrites
    the EXIF block, and raises on malformed tags elsewhere in it (a signed rational over 0: struct.error) that
    OpenCV ignores; an unreadable orientation leaves the image as it is."""
    from PIL import Image

    methods = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_90}
    try:
        method = methods.get(im.getexif().get(0x0112, 1))  # 0x0112: Orientation
    except Exception:  # noqa: BLE001 - any malformed EXIF (Pillow's parser): no orientation
        return im
    return im if method is None else im.transpose(method)


def read_image(path: str) -> np.ndarray:
    """An image file as an HxWxC uint8 RGB (or HxWx1 gray) array, as OpenCV's imread (the camera pipeline's image
    sources) reads it: upright per the EXIF orientation (phone photos), 16-bit grey levels reduced to their top 8
    bits (Pillow's convert("RGB") saturated them to white)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        im = _upright(im)  # a transposed copy, or the file's image (closed when the `with` ends)
        if im.mode.startswith("I;16") or im.mode == "I":
            arr = (np.clip(np.asarray(im).astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        else:
            arr = np.asarray(im if im.mode in ("L", "RGB") else im.convert("RGB"))
    return arr[:, :, None] if arr.ndim == 2 else arr


def input_for_manifest(manifest: Manifest) -> TensorSpec:
    return manifest.inputs[0]
