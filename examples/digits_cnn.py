"""A small CNN for scikit-learn's 8x8 digits, in plain torch, and helpers to train and export data.

Used by the demo, the tests and as the `file.py:factory` example:
    edge-convert convert examples/digits_cnn.py:build --input-shape 1x1x8x8 ...
(`build()` returns an untrained network; `train()` returns a trained one.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

LABELS = [str(i) for i in range(10)]


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build() -> nn.Module:
    """Factory for `edge-convert convert digits_cnn.py:build` (random weights)."""
    return DigitsCNN()


def load_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as float32 N x 1 x 8 x 8 in [0, 1]: (x_train, y_train, x_test, y_test), 75/25 split."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order].astype(np.int64)
    cut = int(len(x) * 0.75)
    return x[:cut], y[:cut], x[cut:], y[cut:]


def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int = 0,
        before_epoch: Callable[[int], None] | None = None) -> nn.Module:
    """Adam + cross-entropy in shuffled batches of 64 on CPU; returns the model in eval mode.

    before_epoch(epoch) runs before each epoch (QAT freezes its observers before the last one).
    """
    # One thread: the nets are tiny, and OpenMP spin-waiting on a busy 2-core box slows them by 10-100x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        if before_epoch is not None:
            before_epoch(epoch)
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    torch.set_num_threads(threads)
    return model.eval()


def train(x: np.ndarray, y: np.ndarray, epochs: int = 20, seed: int = 0) -> nn.Module:
    """Train DigitsCNN on CPU (a few seconds); returns the model in eval mode."""
    torch.manual_seed(seed)
    return fit(DigitsCNN(), x, y, epochs, lr=3e-3, seed=seed)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def export_onnx(model: nn.Module, path: Path) -> Path:
    """Export as one self-contained opset-20 ONNX file (dynamo exporter)."""
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=True, external_data=False,
                          input_names=["image"], output_names=["logits"], verbose=False)
    return Path(path)


def save_data(path: Path, x: np.ndarray, y: np.ndarray | None = None, input_name: str = "image") -> Path:
    arrays = {input_name: x}
    if y is not None:
        arrays["labels"] = y
    np.savez(path, **arrays)
    return Path(path)


def save_pngs(folder: Path, x: np.ndarray, y: np.ndarray | None = None) -> list[Path]:
    """Write samples as 8x8 grayscale PNGs (white digit on black), in class sub-folders when y is given."""
    from PIL import Image

    paths = []
    for i, img in enumerate(x):
        sub = folder / str(int(y[i])) if y is not None else folder
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"digit_{i:04d}.png"
        Image.fromarray(np.clip(np.rint(img[0] * 255), 0, 255).astype(np.uint8), mode="L").save(p)
        paths.append(p)
    return paths
