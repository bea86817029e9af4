"""Output postprocessing: classification (softmax + top-k with labels) on the output the manifest serves."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..bundle import Manifest


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def are_probabilities(rows: np.ndarray) -> bool:
    """Every row (N x C) >= 0 and summing to 1: a model's own softmax, not logits (the converter records such a
    model's postprocess without softmax: its int8 answers miss a sum of 1 by more than this tolerance)."""
    rows = np.asarray(rows, dtype=np.float64)
    return bool(rows.size and np.all(rows >= 0) and np.all(np.abs(rows.sum(axis=-1) - 1.0) < 1e-3))


def served_output(manifest: Manifest) -> int:
    """Index of the output a classifier serves: postprocess option `output` (a name or an index, written by
    edge-convert --output-role), else 0. A model with several outputs is never read at output 0 silently:
    the converter always records which one it serves."""
    post = manifest.postprocess
    which = (post.options or {}).get("output") if post is not None else None
    names = [t.name for t in manifest.outputs]
    if which is None:
        return 0
    if isinstance(which, str) and which in names:
        return names.index(which)
    if isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
        if int(which) < max(len(names), 1):
            return int(which)
    from .detection import DetectionConfigError  # exit 75: the manifest's postprocess does not fit the model

    raise DetectionConfigError(f"postprocess option output={which!r} is not an output of the model ({', '.join(names)})")


def classify(outputs: list[np.ndarray], manifest: Manifest, top_k: int | None = None) -> list[dict[str, Any]]:
    """Top-k classes per batch item: [{label, name, score, top_k: [{label, name, score}]}]."""
    post = manifest.postprocess
    served = outputs[served_output(manifest)]
    logits = np.asarray(served, dtype=np.float32).reshape(served.shape[0], -1)
    k = min(top_k or (post.top_k if post else 5), logits.shape[1])
    results = []
    for row in logits:
        probs = softmax(row) if (post is None or post.softmax) and not are_probabilities(row[None]) else row
        order = np.argsort(-probs, kind="stable")[:k]
        top = [
            {"label": int(i), "name": _name(manifest, int(i)), "score": round(float(probs[i]), 6)} for i in order
        ]
        results.append({"label": top[0]["label"], "name": top[0]["name"], "score": top[0]["score"], "top_k": top})
    return results


def _name(manifest: Manifest, index: int) -> str:
    labels = manifest.labels or []
    return labels[index] if 0 <= index < len(labels) else str(index)


def raw_outputs(outputs: list[np.ndarray], manifest: Manifest) -> list[dict[str, Any]]:
    """A bundle without a postprocess (maps, sequences, embeddings, regressions): every output as the model gave
    it, named; a top-k over its flattened values would be a made-up answer."""
    names = [t.name for t in manifest.outputs]
    return [{"name": names[i] if i < len(names) else str(i), "shape": list(a.shape), "dtype": str(a.dtype),
             "data": np.asarray(a).tolist()} for i, a in enumerate(outputs)]


def describe_raw(outputs: list[dict[str, Any]]) -> str:
    """One line's worth of raw outputs: name, type, shape and value range (the values are in --json)."""
    parts = []
    for o in outputs:
        a = np.asarray(o["data"], dtype=np.float64)
        stats = f" min {a.min():.4g} mean {a.mean():.4g} max {a.max():.4g}" if a.size else ""
        parts.append(f"{o['name']} {o['dtype']}{o['shape']}{stats}")
    return "; ".join(parts) + "  (values: --json)"
