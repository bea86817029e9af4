"""QAT recipe on the digits CNN: train float, fine-tune with fake quantization, export QDQ ONNX, convert.

    PYTHONPATH=. python examples/qat_digits.py --out /tmp/qat-demo
    edge-convert convert /tmp/qat-demo/digits.qat.onnx --profile raspberry-pi-4 --eval /tmp/qat-demo/eval.npz ...

(the script runs that conversion itself through converter.cli.main when --key is given).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from converter.qat import export_qdq_onnx, freeze_qat, prepare_qat  # noqa: E402
from examples import digits_cnn  # noqa: E402


def fine_tune(qat: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 3, lr: float = 3e-4, seed: int = 0) -> nn.Module:
    """A few epochs of ordinary training on the fake-quant model; observers and BN frozen for the last epoch."""
    torch.manual_seed(seed)
    return digits_cnn.fit(qat, x, y, epochs, lr, seed,
                          before_epoch=lambda epoch: freeze_qat(qat) if epoch == epochs - 1 else None)


def qat_digits(out: Path, float_epochs: int = 20, qat_epochs: int = 3) -> dict:
    """Train, fine-tune, export; returns paths, the float and QAT models and their held-out accuracy."""
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = digits_cnn.load_split()
    model = digits_cnn.train(x_train, y_train, epochs=float_epochs)
    example = torch.from_numpy(x_train[:1])
    qat = fine_tune(prepare_qat(model, example), x_train, y_train, epochs=qat_epochs)
    onnx_path = export_qdq_onnx(qat, example, out / "digits.qat.onnx")
    digits_cnn.save_data(out / "calib.npz", x_train[:256])
    digits_cnn.save_data(out / "eval.npz", x_test, y_test)
    return {"onnx": onnx_path, "eval": out / "eval.npz", "calibration": out / "calib.npz", "float_model": model,
            "qat_model": qat, "float_accuracy": digits_cnn.accuracy(model, x_test, y_test),
            "qat_accuracy": digits_cnn.accuracy(qat, x_test, y_test), "x_test": x_test, "y_test": y_test}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--key", type=Path, help="signing key: also convert for raspberry-pi-4 into OUT/digits-qat.edgebundle")
    args = ap.parse_args(argv)
    r = qat_digits(args.out, qat_epochs=args.qat_epochs)
    print(f"float accuracy {r['float_accuracy']:.4f}, QAT (fake-quant) accuracy {r['qat_accuracy']:.4f}; wrote {r['onnx']}")
    if args.key:
        from converter.cli import main as convert

        return convert(["convert", str(r["onnx"]), "--profile", "raspberry-pi-4", "--eval", str(r["eval"]),
                        "--key", str(args.key), "--out", str(args.out / "digits-qat.edgebundle")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
