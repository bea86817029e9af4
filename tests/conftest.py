"""Shared fixtures: a digits CNN trained in the test session, its data, keys and bundles.

Everything is real: torch trains the model on scikit-learn's digits (shipped in the wheel),
the converter exports and quantizes it with ONNX Runtime, the agent verifies and runs it.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
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


# -- parallel runs (scripts/test.sh: pytest-xdist, --dist loadfile) --------------------------------

# Files whose tests share something on the machine, so they must not run at the same time on two workers: the
# device tests build one wheelhouse in REPO/.cache/edgekit (tests/device_fixtures.py, the Ansible role's run), the
# QEMU test fills REPO/.cache/arm; the ejabberd clusters' nodes share the machine's epmd and Erlang cookie (the two
# cluster files on two workers at once: one rollout test failed, once, in a way no serial run showed; not root-caused).
SHARED_UNITS = {
    "device-cache": {"test_ansible_role.py", "test_arm_qemu.py", "test_device_provision.py",
                     "test_device_service_user.py", "test_jetson_detection.py"},
    "ejabberd": {"test_fleet_cluster.py", "test_fleet_cluster_downloads.py"},
}


def work_unit_of(nodeid: str) -> str:
    """What one worker runs as a whole: a test file (its module fixtures, e.g. a real detector converted once,
    are built once), or all the files of one shared unit."""
    file = nodeid.split("::", 1)[0]
    return next((unit for unit, files in SHARED_UNITS.items() if Path(file).name in files), file)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: pytest without xdist must not call it unknown
def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile with each of SHARED_UNITS as one unit. (xdist_group markers do not work with pytest 9.2:
    xdist 3.8 renames node ids through an attribute pytest no longer reads.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileUnits(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit_of(nodeid)

    return FileUnits(config, log)


SLOW_SUITES = ("slow", "qemu", "ansible", "cluster", "failover", "faults", "browser")  # pyproject's markers


def pytest_collection_modifyitems(config, items) -> None:
    twice = sorted(nodeid for nodeid, n in Counter(item.nodeid for item in items).items() if n > 1)
    if twice:  # xdist would run one of them and drop the rest without a word
        raise pytest.UsageError(f"{len(twice)} test ids are collected more than once (give each a parameter id): "
                                + ", ".join(twice[:5]))
    if os.environ.get("PYTEST_XDIST_WORKER"):  # xdist hands out files in collection order: the long ones first,
        # so the run does not end on one worker converting a detector while the other waits (one process: unchanged)
        slow = {work_unit_of(i.nodeid) for i in items if any(i.get_closest_marker(m) for m in SLOW_SUITES)}
        items.sort(key=lambda i: work_unit_of(i.nodeid) not in slow)
