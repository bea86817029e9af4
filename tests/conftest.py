"""Shared fixtures: a digits CNN trained in the test session, its data, keys and bundles.

Everything is real: torch trains the model on scikit-learn's digits (shipped in the wheel),
the converter exports and quantizes it with ONNX Runtime, the agent verifies and runs it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from examples import digits_cnn  # noqa: E402


@dataclass
class DigitsFiles:
    folder: Path
    onnx: Path
    calibration: Path
    evaluation: Path
    labels_file: Path
    key: Path
    pub: Path
    x_test: np.ndarray
    y_test: np.ndarray
    float_predictions: np.ndarray
    float_accuracy: float
    model: object


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> DigitsFiles:
    """A trained digits CNN exported to ONNX, calibration/eval .npz files and a signing key pair."""
    import torch

    from edge_agent.bundle import generate_keypair

    folder = tmp_path_factory.mktemp("digits")
    x_train, y_train, x_test, y_test = digits_cnn.load_split()
    model = digits_cnn.train(x_train, y_train)
    with torch.no_grad():
        float_pred = model(torch.from_numpy(x_test)).argmax(1).numpy()
    onnx_path = digits_cnn.export_onnx(model, folder / "digits.onnx")
    calib = digits_cnn.save_data(folder / "calib.npz", x_train[:256])
    evaluation = digits_cnn.save_data(folder / "eval.npz", x_test, y_test)
    labels = folder / "labels.txt"
    labels.write_text("\n".join(digits_cnn.LABELS) + "\n")
    key, pub = generate_keypair(folder / "keys")
    return DigitsFiles(folder, onnx_path, calib, evaluation, labels, key, pub, x_test, y_test, float_pred,
                       float((float_pred == y_test).mean()), model)


def convert_args(d: DigitsFiles, out: Path, profile: str = "raspberry-pi-4", *extra: str) -> list[str]:
    return ["--quiet", "convert", str(d.onnx), "--profile", profile, "--calibration", str(d.calibration), "--eval",
            str(d.evaluation), "--key", str(d.key), "--out", str(out), "--labels", str(d.labels_file),
            "--bench-runs", "5", "--min-speedup", "0", *extra]  # tiny net: int8 is no faster than fp32 here


@pytest.fixture(scope="session")
def int8_bundle(digits, tmp_path_factory) -> Path:
    """The digits model converted for raspberry-pi-4 (static int8, QDQ), signed."""
    from converter.cli import main

    out = tmp_path_factory.mktemp("bundles") / "digits-int8.edgebundle"
    assert main(convert_args(digits, out)) == 0
    return out


@pytest.fixture(scope="session")
def fp16_bundle(digits, tmp_path_factory) -> Path:
    """The digits model converted for jetson-orin-nano (fp16 with float32 I/O), signed."""
    from converter.cli import main

    out = tmp_path_factory.mktemp("bundles") / "digits-fp16.edgebundle"
    assert main(convert_args(digits, out, "jetson-orin-nano")) == 0
    return out


@pytest.fixture(scope="session")
def int8_v2_bundle(digits, tmp_path_factory) -> Path:
    """The same digits model converted again as version 2 (a different, newer bundle)."""
    from converter.cli import main

    out = tmp_path_factory.mktemp("bundles-v2") / "digits-int8-v2.edgebundle"
    assert main(convert_args(digits, out, "raspberry-pi-4", "--model-version", "2")) == 0
    return out


# -- registry engines: the registry tests run on SQLite and on a real PostgreSQL ------------------

@pytest.fixture(scope="session")
def pg_cluster():
    """One PostgreSQL server for the session (tests/pg_cluster.py); each test takes its own database."""
    from .pg_cluster import PgCluster

    cluster = PgCluster().start()  # its own folder under /tmp: pytest's is closed to the postgres user
    yield cluster
    cluster.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_location(request, tmp_path) -> str:
    """Where a test's registry lives: a SQLite file, or a fresh database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "fleet.db")
    return request.getfixturevalue("pg_cluster").create_database()
