"""`edge-convert convert` probed further (after tests/test_convert_probe*.py): data naming, eval size, reports.

Each test runs the real CLI on a tiny ONNX graph built here and checks what a user sees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_agent.errors import exit_code

from .test_convert_probe import convert, key  # noqa: F401 - key is a fixture
from .test_convert_probe_output import image_model


def labels_input_model(path: Path, vocab: int = 10, classes: int = 3) -> Path:
    """A token model whose (only) input is named `labels`, as some label-conditioned token models' are."""
    table = numpy_helper.from_array(np.random.default_rng(3).standard_normal((vocab, classes)).astype(np.float32), "t")
    nodes = [helper.make_node("Gather", ["t", "labels"], ["emb"]),
             helper.make_node("ReduceMean", ["emb"], ["scores"], axes=[1], keepdims=0)]
    graph = helper.make_graph(nodes, "labelled", [helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", 5])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_an_input_named_labels_is_fed_not_taken_as_class_labels(key, tmp_path, capsys, caplog):
    """A model input named `labels` was popped as the class labels: 'has no array named labels' and no conversion.
    The rule: an array `labels` feeds an input of that name, and a warning says the gate has no class labels."""
    ids = np.random.default_rng(4).integers(0, 10, (16, 5)).astype(np.int64)
    np.savez(tmp_path / "eval.npz", labels=ids)
    rc = convert(labels_input_model(tmp_path / "m.onnx"), key, tmp_path / "m.edgebundle", "--precision", "fp32",
                 "--eval", str(tmp_path / "eval.npz"), "--json")
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "feeds model input 'labels'" in caplog.text
    accuracy = json.loads(out)["measurements"]["accuracy"]
    assert accuracy["samples"] == 16 and "top1_drop_points" not in accuracy


def class_folders(root: Path, classes: int = 3, per_class: int = 6) -> Path:
    """root/<class index>/NN.png: an eval folder a classifier's gate scores with labels."""
    from PIL import Image

    for c in range(classes):
        (root / str(c)).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((10, 10, 3), c * 60 + i * 5, np.uint8)).save(root / str(c) / f"{i:02d}.png")
    return root


def test_a_large_eval_folder_reads_eval_samples_images_keeping_each_class_share(key, tmp_path):
    """An eval folder was decoded whole (ImageNet val's 50,000 photos as float tensors ran out of memory), unlike a
    calibration folder. It now reads --eval-samples images spread evenly over the class-sorted files; the report
    says how many of how many."""
    folder = class_folders(tmp_path / "eval")
    out = tmp_path / "m.edgebundle"
    assert convert(image_model(tmp_path / "m.onnx"), key, out, "--precision", "fp32", "--eval", str(folder),
                   "--eval-samples", "6") == 0
    report = json.loads((tmp_path / "m.edgebundle.report.json").read_text())
    assert (report["passes"][0]["eval_samples"], report["passes"][0]["eval_samples_available"]) == (6, 18)


def test_sampled_eval_folders_keep_the_class_balance(tmp_path):
    """Every class gets its share of --eval-samples, so the gate's top-1 is not one class's accuracy."""
    from converter.data import load_dataset
    from edge_agent.bundle import Preprocess, TensorSpec

    spec = TensorSpec("image", "float32", [1, 3, 8, 8], "NCHW")
    data = load_dataset(class_folders(tmp_path / "eval"), [spec], Preprocess(size=[8, 8]), max_images=6)
    assert np.bincount(data.labels).tolist() == [2, 2, 2] and data.available == 18


@pytest.mark.parametrize("fmt", ["onnx", "auto"])
def test_a_failed_import_writes_a_report_saying_which_pass_failed_and_why(fmt, key, tmp_path, capsys):
    """A mistyped model path wrote OUT.report.json of nulls and empty lists beside the error text (--format auto: no
    report at all, though README promises one for a refused conversion). It now names the failed pass, the error
    kind and exit code, as --json's error object does."""
    rc = convert(tmp_path / "modle.onnx", key, tmp_path / "m.edgebundle", "--format", fmt)
    assert rc == exit_code("import") and "modle.onnx does not exist" in capsys.readouterr().err
    report = json.loads((tmp_path / "m.edgebundle.report.json").read_text())
    assert (report["failed_pass"], report["error_kind"], report["exit_code"]) == ("import", "import", 21)
    assert "modle.onnx does not exist" in report["error"] and report["bundle"] is None


def test_format_auto_with_bench_runs_0_times_no_candidate(key, tmp_path, capsys):
    """--help says --bench-runs 0 skips timing, yet --format auto timed its candidates (at least 5 rounds each).
    Now nothing is timed and the first passing format in the profile's order is packed, as the summary says."""
    from .test_convert_probe import linear_model, samples

    np.savez(tmp_path / "eval.npz", x=samples())
    assert convert(linear_model(tmp_path / "m.onnx"), key, tmp_path / "m.edgebundle", "--format", "auto",
                   "--precision", "fp32", "--eval", str(tmp_path / "eval.npz")) == 0
    m = json.loads((tmp_path / "m.edgebundle.report.json").read_text())["measurements"]
    assert [c for c in m["candidates"] if "host_latency" in c] == []
    assert m["format_selection"]["chosen"] == m["format_selection"]["considered"][0]
    assert "not timed (--bench-runs 0)" in capsys.readouterr().out


def test_input_shape_repeats_once_per_input_of_a_model_with_several_dynamic_inputs(key, tmp_path, capsys):
    """A model with two dynamic inputs could not be pinned: '--input-shape gives one shape but the model has 2
    inputs'. --input-shape NAME=SHAPE now repeats, one per input; a bare shape says how to name them."""
    from .test_convert_probe import token_model

    model = token_model(tmp_path / "tok.onnx")
    out = tmp_path / "tok.edgebundle"
    assert convert(model, key, out, "--precision", "fp32", "--input-shape", "ids=1x8", "--input-shape", "mask=1,8") == 0
    report = json.loads((tmp_path / "tok.edgebundle.report.json").read_text())
    assert report["passes"][0]["details"]["pinned_input_shape"] == {"ids": [1, 8], "mask": [1, 8]}
    assert [i.rsplit(" ", 1)[0] for i in report["passes"][0]["inputs"]] == ["ids int64[1, 8]", "mask bool[1, 8]"]
    capsys.readouterr()
    assert convert(model, key, out, "--precision", "fp32", "--input-shape", "1x8") == exit_code("import")
    assert "give one per input, --input-shape ids=SHAPE repeated" in capsys.readouterr().err
    assert convert(model, key, out, "--input-shape", "ids=1x8", "--input-shape", "1x8") == exit_code("usage")
    assert "name each input's" in capsys.readouterr().err


def test_a_tiny_models_size_line_reads_in_bytes_not_zero_megabytes(key, tmp_path, capsys):
    """The summary's size line read 'size: 0.000 MB float -> 0.000 MB' for a model of a few hundred bytes."""
    from .test_convert_probe import linear_model

    assert convert(linear_model(tmp_path / "m.onnx"), key, tmp_path / "m.edgebundle", "--precision", "fp32") == 0
    size = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("size:"))
    assert size.startswith("size: ") and " bytes float -> " in size and "0.000 MB" not in size, size
