"""`edge-convert` probed further: where it writes (a full disk, a folder it may not write), large calibration
folders, and PyTorch/ONNX models it cannot run (a wrong --input-shape, custom operators, newer opsets, sibling modules).

Uses the tiny graphs of tests/test_convert_probe.py; the full disk and the denied folder are simulated where the
archive is written (the one place the OS error comes from), so the tests need no small filesystem and no non-root user."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest

from edge_agent.errors import exit_code

from .test_convert_probe import convert, key, linear_model, samples  # noqa: F401 - key is a fixture


def test_a_full_disk_while_writing_the_bundle_is_exit_18_and_leaves_nothing(key, tmp_path, capsys, monkeypatch):
    """A disk filling up while the bundle was written ended in '[Errno 28] No space left on device' with exit 1,
    which docs/exit-codes.md calls a bug to report; it is 18 ('not enough disk space'), saying where to make room,
    and no partial file is left beside --out."""
    from edge_agent.bundle import archive

    def disk_full(raw, *args: object) -> None:
        raw.write(b"half a bundle")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archive, "write_archive", disk_full)
    np.savez(tmp_path / "calib.npz", x=samples())
    out = tmp_path / "out" / "m.edgebundle"
    rc = convert(linear_model(tmp_path / "m.onnx"), key, out, "--precision", "fp32", "--calibration",
                 str(tmp_path / "calib.npz"), "--json")
    captured = capsys.readouterr()
    assert rc == exit_code("disk-space") == 18, captured.err
    assert "edge-convert: error: disk full while converting: free space there or in " in captured.err
    assert '"error": "disk-space"' in captured.out
    assert list(out.parent.iterdir()) == []


def test_a_folder_the_user_may_not_write_to_is_a_usage_error_naming_the_file(key, tmp_path, capsys, monkeypatch):
    """--out in a folder the user may not write to (or a read-only mount) ended in "[Errno 13] Permission denied:
    '...partial'" with exit 1; it names the file and is a usage error (2). (Simulated: the tests may run as root.)"""
    from edge_agent.bundle import archive

    def denied(raw, *args: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro" / "m.edgebundle.partial"))

    monkeypatch.setattr(archive, "write_archive", denied)
    rc = convert(linear_model(tmp_path / "m.onnx"), key, tmp_path / "ro" / "m.edgebundle", "--precision", "fp32")
    err = capsys.readouterr().err
    assert rc == exit_code("usage") and err == (f"edge-convert: error: cannot write {tmp_path}/ro/m.edgebundle.partial: "
                                                "Permission denied: give a path you may write to\n"), err


def image_model(path):  # noqa: ANN001, ANN201 - a Path in, the same Path out
    """image [1, 3, 8, 8] -> Conv -> global average -> scores [1, 4]: the smallest model image folders can feed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(4).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["scores"])]
    graph = helper.make_graph(nodes, "image", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_large_calibration_folder_reads_only_calibration_samples_images(key, tmp_path):
    """--calibration on a folder of N images decoded and kept all N as float tensors (ImageNet's 50,000 validation
    photos: gigabytes) although --calibration-samples (default 256) are used. It now reads that many, spread evenly
    over the sorted files like a video's frames."""
    import json

    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(np.full((10, 10, 3), i * 20, np.uint8)).save(folder / f"{i:02d}.png")
    out = tmp_path / "m.edgebundle"
    assert convert(image_model(tmp_path / "m.onnx"), key, out, "--calibration", str(folder),
                   "--calibration-samples", "4") == 0
    report = json.loads((tmp_path / "m.edgebundle.report.json").read_text())
    assert report["passes"][0]["calibration_samples"] == 4


@pytest.mark.parametrize("kind", ["factory", "torchscript"])
def test_a_wrong_input_shape_for_a_pytorch_model_says_so_in_one_line(kind, key, tmp_path, capsys):
    """--input-shape 1x9 for a Linear(8, ...) printed torch.export's log line 'E... always_classified is unsupported'
    and 'torch.onnx.export failed for ...: Failed to export the model with torch.export. This is step 1/3 of exporting
    the model to ONNX. Next steps: / mat1 and mat2 ...'; TorchScript's reason was its interpreter's header. The model
    now runs on the example first: the line names the shape given and the model's own reason."""
    import torch

    (tmp_path / "net.py").write_text("import torch\n\ndef build():\n    return torch.nn.Linear(8, 3)\n")
    torch.jit.script(torch.nn.Linear(8, 3)).save(str(tmp_path / "net.pt"))
    source = f"{tmp_path / 'net.py'}:build" if kind == "factory" else str(tmp_path / "net.pt")
    rc = convert(source, key, tmp_path / "m.edgebundle", "--precision", "fp32", "--input-shape", "1x9")
    err = capsys.readouterr().err
    assert rc == exit_code("import") and "Next steps" not in err and "TorchScript interpreter" not in err, err
    line = next(ln for ln in err.splitlines() if ln.startswith("edge-convert: error:"))
    assert f"{source}: forward() fails on the export example (1x9 float32): " in line and "check --input-shape" in line
    assert "mat1 and mat2 shapes cannot be multiplied" in line


def test_a_pytorch_conversion_prints_no_torch_internal_log_lines(key, tmp_path):
    """Every PyTorch conversion printed four 'W... torchvision is not installed. Skipping torchvision::nms' lines from
    torch's exporter log and a FutureWarning about torch's own pytree API: noise that sent users installing
    torchvision. Without -vv they are left out (a fresh process: torch reads its log settings when imported)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "net.py").write_text("import torch\n\ndef build():\n    return torch.nn.Linear(8, 3)\n")
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "converter.cli", "-q", "convert", f"{tmp_path / 'net.py'}:build", "--input-shape",
           "1x8", "--profile", "raspberry-pi-4", "--key", str(key), "--out", str(tmp_path / "n.edgebundle"),
           "--precision", "fp32", "--bench-runs", "0"]
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_LOGS", "PYTHONWARNINGS")}
    done = subprocess.run(cmd, cwd=repo, env={**env, "PYTHONPATH": str(repo)}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "torchvision" not in done.stderr and "FutureWarning" not in done.stderr, done.stderr


def test_a_model_onnx_runtime_cannot_load_is_refused_at_import(key, tmp_path, capsys):
    """An ONNX model with a custom operator was packaged and signed with exit 0 when nothing ran it (fp32, no data,
    --bench-runs 0): the device could not load it. With data the line ended in the detector hint 'check --input-shape:
    detectors usually need sizes divisible by their stride'. Now exit 21 at import, saying it is a custom operator."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Denoise", ["x"], ["y"], domain="acme.ops")], "custom",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme.ops", 1)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "custom.onnx"))
    out = tmp_path / "c.edgebundle"
    rc = convert(tmp_path / "custom.onnx", key, out, "--precision", "fp32")
    err = capsys.readouterr().err
    assert rc == exit_code("import") and not out.exists(), err
    assert "acme.ops:Denoise(-1) is not a registered function/op: a custom operator" in err and "stride" not in err


def test_a_model_stamped_with_an_opset_newer_than_onnx_runtime_says_which_it_supports(key, tmp_path, capsys):
    """A model stamped with an opset ONNX Runtime does not support ended int8 calibration with ORT's whole validation
    paragraph ('ONNX Runtime only *guarantees* support ...') and exit 1. Exit 21 with the newest opset it takes."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "new",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 99)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "new.onnx"))
    np.savez(tmp_path / "calib.npz", x=samples())
    rc = convert(tmp_path / "new.onnx", key, tmp_path / "n.edgebundle", "--calibration", str(tmp_path / "calib.npz"))
    err = capsys.readouterr().err
    assert rc == exit_code("import") and "its opset is newer than this ONNX Runtime supports (up to " in err, err
    assert err.count("\n") == 1 and "guarantees" not in err


def test_a_folder_of_npy_samples_says_how_to_make_the_one_file_it_takes(key, tmp_path, capsys):
    """A folder of per-sample .npy files (a common way to dump calibration tensors) said only 'holds no images (.bmp,
    .gif, ...)'. The line now says the arrays are not read one per sample and how to stack them into one .npz."""
    folder = tmp_path / "tensors"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"{i}.npy", np.zeros((1, 3, 8, 8), np.float32))
    rc = convert(image_model(tmp_path / "m.onnx"), key, tmp_path / "m.edgebundle", "--calibration", str(folder))
    err = capsys.readouterr().err
    assert rc == exit_code("data") and "its .npy/.npz files are not read one per sample: stack them" in err, err


def test_a_model_file_importing_its_sibling_module_converts(key, tmp_path, capsys):
    """model.py:build where model.py does `from probe_blocks import Block` (the layers beside it, as in most training
    repositories) failed with "No module named 'probe_blocks'", though `python model.py` imports it: the factory's
    folder is now on the import path while it loads."""
    import sys

    (tmp_path / "probe_blocks.py").write_text("import torch\n\nclass Block(torch.nn.Linear):\n    pass\n")
    (tmp_path / "model.py").write_text("from probe_blocks import Block\n\ndef build():\n    return Block(8, 3)\n")
    rc = convert(f"{tmp_path / 'model.py'}:build", key, tmp_path / "m.edgebundle", "--precision", "fp32",
                 "--input-shape", "1x8")
    assert rc == 0, capsys.readouterr().err
    assert str(tmp_path) not in sys.path  # put back as it was


def test_hidden_folders_and_files_in_an_image_folder_are_left_out(key, tmp_path, capsys):
    """An eval folder with Jupyter's .ipynb_checkpoints/ beside its class folders was refused ('class folder
    .ipynb_checkpoints is neither a label name nor a class index'), and macOS's ._0.png companions (resource forks
    copied from a Mac) stopped the run as unreadable images. Hidden entries are not data: they are skipped."""
    import json

    from PIL import Image

    folder = tmp_path / "eval"
    for cls in ("0", "1", ".ipynb_checkpoints"):
        (folder / cls).mkdir(parents=True)
        Image.fromarray(np.full((10, 10, 3), 90, np.uint8)).save(folder / cls / "a.png")
    (folder / "1" / "._a.png").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    rc = convert(image_model(tmp_path / "m.onnx"), key, tmp_path / "m.edgebundle", "--precision", "fp32", "--eval",
                 str(folder))
    assert rc == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "m.edgebundle.report.json").read_text())
    assert report["passes"][0]["eval_samples"] == 2


def test_an_interrupt_a_library_turns_into_its_own_error_still_exits_130(capsys):
    """SIGTERM landing while ONNX Runtime created a session (the import pass now opens one at once) came out as
    ORT's 'initialization failed' with exit 1, not 130: the library caught the KeyboardInterrupt. The signal is
    remembered, and any failure after it is reported as the interrupt it was (tests/test_detectors' SIGTERM test hit
    this one run in three)."""
    import os
    import signal

    from edge_agent.errors import run_main, unwind_on_sigterm

    def body() -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            raise RuntimeError("initialization failed") from None  # what ORT's binding does with it
        return 0

    with unwind_on_sigterm():
        assert run_main("edge-convert", body, json_mode=True) == 130
    out, err = capsys.readouterr()
    assert json.loads(out)["error"] == "interrupted" and err == "edge-convert: interrupted\n"
