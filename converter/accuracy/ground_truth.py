"""Ground-truth boxes for the detection gate: COCO-style JSON or a folder of YOLO txt files (--eval-labels).

Boxes are matched to eval images by file name and mapped into model-input pixels with the same
resize/letterbox the bundle applies, so float, converted and truth boxes are compared in one space.

    COCO JSON   {"images": [{id, file_name, ...}], "annotations": [{image_id, category_id, bbox: [x, y, w, h]}],
                 "categories": [{id, name}]}; categories are mapped to the bundle's classes by name
                 (else category ids are taken as class indices)
    YOLO txt    one IMAGE_STEM.txt per image: `class cx cy w h` per line, normalised to the image
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data import Dataset
from ..errors import DataError

Truth = tuple[np.ndarray, np.ndarray]  # boxes xyxy (K, 4) in model-input pixels, classes (K,)


def _to_input(boxes: np.ndarray, frame_hw: tuple[int, int], input_hw: tuple[int, int], resize: str) -> np.ndarray:
    (h, w), (ih, iw) = frame_hw, input_hw
    if resize == "letterbox":
        s = min(iw / w, ih / h)
        px, py = (iw - max(1, round(w * s))) // 2, (ih - max(1, round(h * s))) // 2
        return boxes * s + np.asarray([px, py, px, py], np.float32)
    return boxes * np.asarray([iw / w, ih / h, iw / w, ih / h], np.float32)


def _coco(path: Path, labels: list[str] | None) -> dict[str, list[tuple[int, list[float]]]]:
    try:
        doc = json.loads(path.read_text())
        files = {im["id"]: Path(im["file_name"]).name for im in doc["images"]}
        cats = {c["id"]: c.get("name") for c in doc.get("categories", [])}
        out: dict[str, list[tuple[int, list[float]]]] = {name: [] for name in files.values()}
        for a in doc["annotations"]:
            name = cats.get(a["category_id"])
            cls = labels.index(name) if labels and name in labels else int(a["category_id"])
            x, y, bw, bh = (float(v) for v in a["bbox"])
            out[files[a["image_id"]]].append((cls, [x, y, x + bw, y + bh]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a COCO-style JSON (images, annotations with bbox [x, y, w, h]): {exc}") from exc
    return out


def _yolo_txt(folder: Path, stem: str, frame_hw: tuple[int, int]) -> list[tuple[int, list[float]]]:
    f = folder / f"{stem}.txt"
    if not f.is_file():
        return []
    h, w = frame_hw
    rows = []
    for n, line in enumerate(f.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            c, cx, cy, bw, bh = int(parts[0]), *(float(v) for v in parts[1:5])
        except (ValueError, TypeError):
            raise DataError(f"{f}:{n}: expected `class cx cy w h` (normalised), got {line!r}") from None
        rows.append((c, [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]))
    return rows


def ground_truth_for(labels_path: Path, data: Dataset, input_hw: tuple[int, int], resize: str,
                     class_names: list[str] | None) -> list[Truth]:
    """Per sample of `data` (an image folder): its labelled boxes in model-input pixels."""
    if data.files is None or data.frames_hw is None:
        raise DataError("--eval-labels needs --eval to be a folder of images (boxes are matched by file name)")
    coco = _coco(labels_path, class_names) if labels_path.is_file() else None
    if coco is None and not labels_path.is_dir():
        raise DataError(f"--eval-labels {labels_path}: neither a COCO JSON file nor a folder of YOLO .txt files")
    out: list[Truth] = []
    for f, hw in zip(data.files, data.frames_hw):
        rows = coco.get(Path(f).name, []) if coco is not None else _yolo_txt(labels_path, Path(f).stem, hw)
        boxes = np.asarray([b for _, b in rows], np.float32).reshape(-1, 4)
        out.append((_to_input(boxes, hw, input_hw, resize), np.asarray([c for c, _ in rows], np.int64)))
    return out
