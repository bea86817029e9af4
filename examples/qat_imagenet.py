"""QAT of a pretrained ImageNet CNN without labels: distil the float model into its fake-quant copy on
augmented views of the calibration-side photos only, export QDQ ONNX, convert with edge-convert.

    PYTHONPATH=. python examples/qat_imagenet.py --out /tmp/qat-mnv2 [--model mobilenet_v2] [--epochs 4]
    edge-convert convert /tmp/qat-mnv2/mobilenet_v2.qat.onnx --profile raspberry-pi-4 --eval ... --key ...

The photos and the split are examples/imagenet_cnns.py's (the held-out side is never read here);
scripts/bench_quant_real.py --qat scores the result on the held-out side beside the post-training rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from converter.qat import distill_qat, export_qdq_onnx, prepare_qat  # noqa: E402
from examples import imagenet_cnns as nets  # noqa: E402


def augment(img: np.ndarray, rng: np.random.Generator, size: int = nets.SIZE) -> np.ndarray:
    """One random view: a resized crop (8-100 % of the area, aspect 3/4-4/3), a flip half the time, and a small colour
    jitter (brightness, contrast, saturation each x [0.9, 1.1]): views a camera could plausibly give."""
    import cv2

    h, w = img.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(0.08, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch, cw = int(round(np.sqrt(area / ratio))), int(round(np.sqrt(area * ratio)))
        if 0 < ch <= h and 0 < cw <= w:
            break
    else:
        ch = cw = min(h, w)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = img[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    v = cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    v = v * rng.uniform(0.9, 1.1)
    mean = v.mean()
    v = (v - mean) * rng.uniform(0.9, 1.1) + mean
    grey = v.mean(axis=2, keepdims=True)
    v = (v - grey) * rng.uniform(0.9, 1.1) + grey
    return np.clip(np.round(v), 0, 255).astype(np.uint8)


def view_batches(sources: list[list[np.ndarray]], fixed: np.ndarray, per_epoch: int, batch: int, model: str,
                 seed: int = 0):
    """batches(epoch) for distill_qat: each epoch, `fixed` (the calibration views, normalised) plus `per_epoch`
    fresh augmented views of the source images, shuffled, as float tensors of `batch` inputs."""
    import torch

    images = [img for imgs in sources for img in imgs]

    def batches(epoch: int) -> Iterator["torch.Tensor"]:
        rng = np.random.default_rng(seed * 1000 + epoch)
        fresh = nets.normalize([augment(images[rng.integers(len(images))], rng) for _ in range(per_epoch)], model)
        x = np.concatenate([fixed, fresh])[rng.permutation(len(fixed) + per_epoch)]
        for i in range(0, len(x) - batch + 1, batch):
            yield torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))

    return batches


def qat_imagenet(model_name: str, out: Path, calib: np.ndarray, epochs: int = 4, per_epoch: int = 256, batch: int = 16,
                 lr: float = 1e-5, seed: int = 0, log=print) -> dict:
    """Distil `model_name` into its fake-quant copy on calibration-side photos, export QDQ ONNX to OUT.
    `calib`: the calibration-side views (photo_split's first array). Returns the path and how the run went."""
    import torch

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    teacher = nets.MODELS[model_name]()
    example = torch.zeros(1, 3, nets.SIZE, nets.SIZE)
    qat = prepare_qat(teacher, example)
    calib_sources, _ = nets.source_sides()  # the held-out side is not used
    losses: list[float] = []
    t0 = time.perf_counter()

    def on_step(epoch: int, step: int, loss: float) -> None:
        losses.append(loss)
        if step % 10 == 0:
            log(f"epoch {epoch} step {step} KL {loss:.4f} ({time.perf_counter() - t0:.0f} s)")

    distill_qat(qat, teacher, view_batches(calib_sources, calib, per_epoch, batch, model_name, seed), epochs=epochs,
                lr=lr, on_step=on_step)
    seconds = time.perf_counter() - t0
    path = export_qdq_onnx(qat, example, out / f"{model_name}.qat.onnx", input_names=("x",))
    return {"onnx": path, "train_seconds": round(seconds, 1), "steps": len(losses), "epochs": epochs,
            "views_per_epoch": len(calib) + per_epoch, "lr": lr, "batch": batch,
            "kl_first_epoch": round(float(np.mean(losses[: max(1, len(losses) // epochs)])), 4),
            "kl_last_epoch": round(float(np.mean(losses[-max(1, len(losses) // epochs):])), 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="mobilenet_v2", choices=sorted(nets.MODELS))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--views", type=int, default=256, help="fresh augmented views per epoch (besides the calibration views)")
    ap.add_argument("--lr", type=float, default=1e-5)
    args = ap.parse_args(argv)
    calib_side, _ = nets.photo_split(400, 400, model=args.model)
    r = qat_imagenet(args.model, args.out, calib_side, args.epochs, args.views, lr=args.lr)
    print(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
