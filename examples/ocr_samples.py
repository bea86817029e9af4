"""Real OCR models and real text images for accuracy tests and benchmarks (no downloads).

The PP-OCR ONNX models come from the `rapidocr-onnxruntime==1.4.4` wheel (installed with
--no-deps), the images from scikit-image's bundled sample data (page.png, text.png and photos).
Inputs are prepared like RapidOCR does: BGR, (x/255 - 0.5)/0.5, NCHW float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLS_SHAPE = (3, 48, 192)
REC_SHAPE = (3, 48, 320)


def model_path(kind: str) -> Path:
    """Path of a PP-OCR model shipped in the rapidocr wheel: kind = cls | det | rec."""
    from importlib.util import find_spec

    spec = find_spec("rapidocr_onnxruntime")  # locate without importing (its __init__ needs pyclipper etc.)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pip install --no-deps rapidocr-onnxruntime==1.4.4 for the PP-OCR models")
    names = {"cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx", "det": "ch_PP-OCRv4_det_infer.onnx",
             "rec": "ch_PP-OCRv4_rec_infer.onnx"}
    return Path(list(spec.submodule_search_locations)[0]) / "models" / names[kind]


def _bgr(img: np.ndarray) -> np.ndarray:
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3][..., ::-1])


def text_images() -> list[np.ndarray]:
    """Scanned/photographed text from scikit-image, BGR uint8 (page upscaled 2x too)."""
    import cv2
    import skimage.data as d

    page, text = _bgr(d.page()), _bgr(d.text())
    return [page, cv2.resize(page, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC), text]


def photos() -> list[np.ndarray]:
    """Real photos from scikit-image, BGR uint8."""
    import skimage.data as d

    return [_bgr(getattr(d, n)()) for n in ("astronaut", "coffee", "chelsea", "camera", "rocket", "coins")]


def normalize(img: np.ndarray) -> np.ndarray:
    """HWC BGR uint8 -> CHW float32 in [-1, 1] (PP-OCR's mean/std 0.5)."""
    return ((img.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def line_crops(n: int, shape: tuple[int, int, int], seed: int, rotate_half: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """n text-line-like crops resized to shape (C,H,W); half rotated 180 degrees (label 1)."""
    rng = np.random.default_rng(seed)
    sources = text_images()
    _, h, w = shape
    xs, ys = [], []
    for i in range(n):
        img = sources[i % len(sources)]
        ch = int(rng.integers(max(12, img.shape[0] // 14), max(13, img.shape[0] // 6)))
        cw = min(img.shape[1], int(ch * rng.uniform(2.0, 1.2 * w / h)))
        y0 = int(rng.integers(0, img.shape[0] - ch + 1))
        x0 = int(rng.integers(0, img.shape[1] - cw + 1))
        crop = img[y0 : y0 + ch, x0 : x0 + cw]
        label = int(rotate_half and i % 2 == 1)
        if label:
            crop = crop[::-1, ::-1]
        xs.append(_resize_pad(crop, h, w))
        ys.append(label)
    return np.stack(xs).astype(np.float32), np.array(ys, dtype=np.int64)


def _resize_pad(crop: np.ndarray, h: int, w: int) -> np.ndarray:
    """RapidOCR's cls/rec resize: keep the aspect ratio at height h, pad the right side with 0."""
    import cv2

    rw = min(w, int(np.ceil(h * crop.shape[1] / crop.shape[0])))
    out = np.zeros((3, h, w), np.float32)
    out[:, :, :rw] = normalize(cv2.resize(crop, (rw, h), interpolation=cv2.INTER_LINEAR))
    return out


def scene_crops(n: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """n crops of text pages and photos resized to (H, W), for the text detector."""
    import cv2

    rng = np.random.default_rng(seed)
    sources = text_images() + photos()
    h, w = size
    xs = []
    for i in range(n):
        img = sources[i % len(sources)]
        scale = rng.uniform(0.6, 1.0)
        ch, cw = int(img.shape[0] * scale), int(img.shape[1] * scale)
        y0 = int(rng.integers(0, img.shape[0] - ch + 1))
        x0 = int(rng.integers(0, img.shape[1] - cw + 1))
        crop = cv2.resize(img[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)
        xs.append(normalize(crop))
    return np.stack(xs).astype(np.float32)
