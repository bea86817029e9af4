"""`edge-convert convert` probed as a new ML engineer uses it: data files with odd values, token models with masks.

Each test runs the real CLI on a tiny ONNX graph built here (a conversion takes a second or two) and checks the
one line and the documented exit code (docs/exit-codes.md) a user gets instead of a traceback or exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.cli import main
from edge_agent.errors import exit_code


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> Path:
    from edge_agent.bundle import generate_keypair

    return generate_keypair(tmp_path_factory.mktemp("keys"))[0]


def linear_model(path: Path, features: int = 4, classes: int = 3) -> Path:
    """x [N, features] float -> MatMul -> scores [N, classes]: the smallest classifier a gate can score."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((features, classes)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["scores"])], "linear",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def token_model(path: Path, vocab: int = 20, width: int = 6, classes: int = 3) -> Path:
    """ids [N, L] int64 and a bool padding mask [N, L] -> mean of masked embeddings -> scores: a text classifier."""
    rng = np.random.default_rng(1)
    table = numpy_helper.from_array(rng.standard_normal((vocab, width)).astype(np.float32), "table")
    w = numpy_helper.from_array(rng.standard_normal((width, classes)).astype(np.float32), "w")
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"]),
             helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["maskf", "axes"], ["mask3"]),
             helper.make_node("Mul", ["emb", "mask3"], ["kept"]),
             helper.make_node("ReduceMean", ["kept"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["scores"])]
    graph = helper.make_graph(nodes, "tokens",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 8]),
                               helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 8])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])],
                              [table, w, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def convert(model: Path, key: Path, out: Path, *extra: str) -> int:
    return main(["--quiet", "convert", str(model), "--profile", "raspberry-pi-4", "--key", str(key), "--out", str(out),
                 "--bench-runs", "0", *extra])


def samples(n: int = 16, features: int = 4) -> np.ndarray:
    return np.random.default_rng(2).standard_normal((n, features)).astype(np.float32)


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_calibration_with_nan_or_infinity_is_a_data_error_naming_the_sample(bad, key, tmp_path, capsys):
    """One NaN in a calibration .npz ended in ORT's bare 'edge-convert: error: scale issue' (exit 1, a 'bug');
    one infinity gave a gate failure about agreement. Both now name the array and the sample: exit 22."""
    x = samples()
    x[3, 1] = float(bad)
    np.savez(tmp_path / "calib.npz", x=x)
    rc = convert(linear_model(tmp_path / "m.onnx"), key, tmp_path / "m.edgebundle", "--calibration",
                 str(tmp_path / "calib.npz"), "--json")
    out, err = capsys.readouterr()
    assert rc == exit_code("data"), err
    assert err.count("\n") == 1 and "array 'x' holds NaN or infinity (first in sample 3)" in err, err
    assert json.loads(out.strip().splitlines()[-1])["exit_code"] == exit_code("data")


@pytest.mark.parametrize("values", [np.full((8, 4), "a"), np.ones((8, 4), np.complex64)], ids=["strings", "complex"])
def test_non_numeric_calibration_arrays_are_a_data_error(values, key, tmp_path, capsys):
    """Strings failed with 'could not convert string to float' (exit 1); complex arrays were cast to float with their
    imaginary part dropped and converted without a word. Both are refused with the dtype named (exit 22)."""
    np.savez(tmp_path / "calib.npz", x=values)
    rc = convert(linear_model(tmp_path / "m.onnx"), key, tmp_path / "m.edgebundle", "--calibration",
                 str(tmp_path / "calib.npz"))
    err = capsys.readouterr().err
    assert rc == exit_code("data"), err
    assert f"array 'x' holds {values.dtype} values" in err and err.count("\n") == 1, err
    assert not (tmp_path / "m.edgebundle").exists()


def test_a_token_model_with_a_bool_padding_mask_calibrates(key, tmp_path, capsys):
    """A text classifier taking int64 ids and a bool mask failed right after loading its calibration .npz with numpy's
    'boolean subtract ... is not supported' (exit 1: the same-data check subtracted bools). It now converts to int8,
    and an all-true mask (no padding) draws no 'same in all samples' warning."""
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "calib.npz", ids=rng.integers(0, 20, (16, 8)), mask=np.ones((16, 8), bool))
    out = tmp_path / "t.edgebundle"
    assert convert(token_model(tmp_path / "t.onnx"), key, out, "--calibration", str(tmp_path / "calib.npz")) == 0
    err = capsys.readouterr().err
    assert "same in all" not in err, err
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["precision"].startswith("int8")


@pytest.mark.parametrize("labels, says", [
    (np.array(["cat", "dog"] * 8), "'labels' holds <U3 values: give integer class indices"),
    (np.eye(3, dtype=np.float32)[np.arange(16) % 3], "'labels' has shape (16, 3), a row per sample (one-hot?)"),
    (np.arange(16) % 3 + 0.5, "'labels' holds 0.5, not a class index"),
], ids=["strings", "one-hot", "fractional"])
def test_eval_labels_that_are_not_class_indices_are_a_data_error(labels, says, key, tmp_path, capsys):
    """String labels failed with 'invalid literal for int()' (exit 1); one-hot labels said "'labels' has 48 entries
    but the inputs have 16"; fractional labels were truncated to classes silently and gated on. Exit 22 with the fix."""
    np.savez(tmp_path / "eval.npz", x=samples(), labels=labels)
    rc = convert(linear_model(tmp_path / "m.onnx"), key, tmp_path / "m.edgebundle", "--precision", "fp32",
                 "--eval", str(tmp_path / "eval.npz"))
    err = capsys.readouterr().err
    assert rc == exit_code("data"), err
    assert says in err and err.count("\n") == 1, err


@pytest.mark.parametrize("fmt", ["onnx", "tflite", "auto"])
def test_int8_without_calibration_data_is_a_usage_error(fmt, key, tmp_path, capsys):
    """A profile asking for int8-static without --calibration said so, but with exit 1 ('other error', a bug to
    report); with --format auto it even said 'no candidate passed the accuracy gate' (exit 30) though nothing had been
    built. A missing option is a usage error (exit 2), under --format auto too."""
    rc = convert(linear_model(tmp_path / "m.onnx"), key, tmp_path / "m.edgebundle", "--format", fmt, "--json")
    out, err = capsys.readouterr()
    assert rc == exit_code("usage"), err
    assert "needs calibration data: pass --calibration" in err and "accuracy gate" not in err, err
    assert json.loads(out.strip().splitlines()[-1])["error"] == "usage"


@pytest.mark.parametrize("option, says", [
    (["--min-agreement", "95"], "--min-agreement 95: agreement must be between 0 and 1 (0.95 = 95 %)"),
    (["--max-accuracy-drop", "-1"], "--max-accuracy-drop -1: top1-drop must be 0 to 100 points"),
    (["--accuracy-budget", "top1-drop:-1"], "accuracy budget 'top1-drop:-1': top1-drop must be 0 to 100 points"),
], ids=["agreement-95", "negative-drop", "negative-budget"])
def test_gate_thresholds_that_cannot_hold_are_usage_errors_up_front(option, says, key, tmp_path, capsys):
    """--min-agreement 95 (meant as 95 %) ran the whole int8 conversion, then failed its gate against 'budget >=
    9500.00%' (exit 30) and suggested the command again; a negative drop budget did the same. Exit 2 before the import."""
    np.savez(tmp_path / "calib.npz", x=samples())
    rc = convert(linear_model(tmp_path / "m.onnx"), key, tmp_path / "m.edgebundle", "--calibration",
                 str(tmp_path / "calib.npz"), *option)
    err = capsys.readouterr().err
    assert rc == exit_code("usage") and err == f"edge-convert: error: {says}\n", err
    assert not Path(str(tmp_path / "m.edgebundle") + ".report.json").exists()


def test_a_usage_error_is_one_line_and_with_json_a_json_object(key, tmp_path, capsys):
    """`edge-convert convert ... --top-k 0` printed the convert command's 35-line usage block above its error, and
    with --json nothing on stdout (docs/exit-codes.md: --json prints the error object on every failure). Now one line
    naming the --help to read, the JSON object on stdout with --json; still exit 2."""
    argv = ["convert", str(linear_model(tmp_path / "m.onnx")), "--profile", "raspberry-pi-4", "--key", str(key),
            "--out", str(tmp_path / "m.edgebundle"), "--top-k", "0"]
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert stop.value.code == exit_code("usage")
    assert err == "edge-convert: error: argument --top-k: must be at least 1, got 0 (see edge-convert convert --help)\n"
    assert json.loads(out) == {"ok": False, "error": "usage", "exit_code": 2, "message": err[len("edge-convert: error: "):-1]}
    with pytest.raises(SystemExit):
        main(argv)
    assert capsys.readouterr().out == ""  # without --json, stdout stays empty


def test_an_interrupted_conversion_prints_its_json_error_object(key, tmp_path, capsys, monkeypatch):
    """Ctrl-C or SIGTERM (a CI timeout) during `convert --json` exited 130 with nothing on stdout, so a script
    reading the JSON failed on empty input; the error object now says 'interrupted' with its code."""
    import converter.pipeline

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(converter.pipeline, "convert", interrupted)
    assert convert(linear_model(tmp_path / "m.onnx"), key, tmp_path / "m.edgebundle", "--json") == 130
    out, err = capsys.readouterr()
    assert json.loads(out) == {"ok": False, "error": "interrupted", "message": "interrupted", "exit_code": 130}
    assert err == "edge-convert: interrupted\n"


def test_eval_labels_that_cannot_be_used_are_not_ignored_silently(key, tmp_path, capsys, caplog):
    """--eval-labels without --eval, naming no file, or given for a classifier converted without a word, and the
    report had no mAP the user asked for. The first two are usage errors before the import; a classifier warns."""
    model = linear_model(tmp_path / "m.onnx")
    np.savez(tmp_path / "eval.npz", x=samples(), labels=np.arange(16) % 3)
    boxes = tmp_path / "boxes.json"
    boxes.write_text('{"images": [], "annotations": [], "categories": []}')
    common = ("--precision", "fp32", "--eval-labels")
    assert convert(model, key, tmp_path / "a.edgebundle", *common, str(boxes)) == exit_code("usage")
    assert "labels the --eval images: give --eval IMAGE_FOLDER too" in capsys.readouterr().err
    assert convert(model, key, tmp_path / "b.edgebundle", *common, str(tmp_path / "nope.json"), "--eval",
                   str(tmp_path / "eval.npz")) == exit_code("usage")
    assert "nope.json does not exist" in capsys.readouterr().err
    assert convert(model, key, tmp_path / "c.edgebundle", *common, str(boxes), "--eval", str(tmp_path / "eval.npz")) == 0
    assert "--eval-labels does nothing here: the model is not a detector" in caplog.text


def test_int8_options_at_another_precision_are_named_as_doing_nothing(key, tmp_path, caplog):
    """`--precision fp16 --calibration-method entropy --compensation gptq --sensitivity always` converted without a
    word about the three options it never used: only options of passes outside the recipe were warned about."""
    np.savez(tmp_path / "calib.npz", x=samples())
    assert convert(linear_model(tmp_path / "m.onnx"), key, tmp_path / "m.edgebundle", "--precision", "fp16",
                   "--calibration", str(tmp_path / "calib.npz"), "--calibration-method", "entropy",
                   "--compensation", "gptq", "--sensitivity", "always", "--top-k", "2") == 0
    said = sorted(r.getMessage() for r in caplog.records if "does nothing at" in r.getMessage())
    assert said == [f"--{flag} does nothing at fp16 (it acts on int8-static only)"
                    for flag in ("calibration-method", "compensation", "sensitivity")], said


@pytest.mark.parametrize("saved", ["state_dict", "module"])
def test_a_torch_save_checkpoint_says_it_is_not_torchscript(saved, key, tmp_path, capsys):
    """model.pth from torch.save() (the usual PyTorch artifact) said '... failed locating file constants.pkl ... your
    checkpoint file is corrupted': the file was fine, just not TorchScript. The line now says what it is and the two
    ways to convert it."""
    import torch

    module = torch.nn.Linear(4, 3)
    torch.save(module.state_dict() if saved == "state_dict" else module, tmp_path / "model.pth")
    rc = convert(tmp_path / "model.pth", key, tmp_path / "m.edgebundle", "--precision", "fp32", "--input-shape", "1x4")
    err = capsys.readouterr().err
    assert rc == exit_code("import") and err.count("\n") == 1, err
    assert "is a torch.save() checkpoint (a state_dict or a pickled module), not TorchScript" in err
    assert "file.py:factory" in err and "corrupted" not in err


def test_a_saved_model_folder_tensorflow_cannot_load_is_an_import_error(key, tmp_path, capsys):
    """A SavedModel folder with an empty saved_model.pb (a failed export) ended in TensorFlow's 'MetaGraphDef
    associated with tags ...' with exit 1 ('a bug'); it is an import error (21) naming the folder."""
    pytest.importorskip("tensorflow")
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported" / "saved_model.pb").write_bytes(b"")
    rc = convert(tmp_path / "exported", key, tmp_path / "m.edgebundle", "--precision", "fp32")
    err = capsys.readouterr().err
    assert rc == exit_code("import") and f"{tmp_path / 'exported'} is not a loadable SavedModel" in err, err


@pytest.mark.parametrize("target", ["model", "calibration", "report"])
def test_out_or_report_naming_an_input_or_each_other_is_refused(target, key, tmp_path, capsys):
    """`--out model.onnx` (the source) replaced the user's model with the bundle, `--out calib.npz` the data, and
    `--report` naming --out replaced the bundle with its JSON report, all with exit 0 and 'wrote ...'. Refused (2)
    before anything is read; the files stay as they were."""
    model = linear_model(tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=samples())
    before = {p: p.read_bytes() for p in (model, tmp_path / "calib.npz")}
    out = {"model": model, "calibration": tmp_path / "calib.npz", "report": tmp_path / "m.edgebundle"}[target]
    rc = main(["--quiet", "convert", str(model), "--profile", "raspberry-pi-4", "--key", str(key), "--out", str(out),
               "--calibration", str(tmp_path / "calib.npz"), "--bench-runs", "0",
               *(["--report", str(tmp_path / "m.edgebundle")] if target == "report" else [])])
    err = capsys.readouterr().err
    assert rc == exit_code("usage") and "writing there would replace it; give another path" in err, err
    assert {p: p.read_bytes() for p in before} == before and not (tmp_path / "m.edgebundle").exists()


def test_verbose_and_quiet_work_after_the_command_too():
    """`edge-convert convert model.onnx ... -v` (where people add it when a conversion fails) was refused with
    'unrecognized arguments: -v': the flags were accepted only before `convert`. Both places work now."""
    from converter.cli import build_parser

    base = ["convert", "m.onnx", "--profile", "raspberry-pi-4", "--key", "k", "--out", "o"]
    after = build_parser().parse_args([*base, "-vv", "-q"])
    assert (after.verbose, after.quiet) == (2, True)
    before = build_parser().parse_args(["-v", *base])
    assert (before.verbose, before.quiet) == (1, False)


@pytest.mark.parametrize("name, content, says", [
    ("calib.npz", b"", "calib.npz is empty"),
    ("calib.npy", b"", "calib.npy is empty"),
    ("calib.npz", b"x,y\n1,2\n", "calib.npz is not an .npz file (numpy.savez writes one)"),
    ("calib.npz", "cut", "calib.npz is not a readable .npz file: File is not a zip file"),
], ids=["empty-npz", "empty-npy", "csv-named-npz", "cut-off-npz"])
def test_data_files_numpy_cannot_read_are_one_line_exit_22(name, content, says, key, tmp_path, capsys):
    """An empty .npz or .npy ended in 'error: No data left in file' and a cut-off .npz in 'File is not a zip file',
    both exit 1; a CSV named .npz was 'pickled (object) data' with numpy's advice to load it with allow_pickle."""
    path = tmp_path / name
    if content == "cut":
        np.savez(path, x=samples())
        content = path.read_bytes()[:120]
    path.write_bytes(content)
    rc = convert(linear_model(tmp_path / "m.onnx"), key, tmp_path / "m.edgebundle", "--calibration", str(path))
    err = capsys.readouterr().err
    assert rc == exit_code("data") and says in err and "allow_pickle" not in err, err


def test_a_labels_file_saved_with_a_byte_order_mark_names_the_first_class_plainly(key, tmp_path):
    """A --labels file saved by Windows Notepad (UTF-8 with BOM, CRLF) put '\\ufeffcat' into the manifest as the first
    class: the device printed an invisible character, and a calibration folder named cat/ did not match it."""
    from edge_agent.bundle import read_manifest_unverified

    (tmp_path / "labels.txt").write_bytes("cat\r\ndog\r\n\r\nbird\r\n".encode("utf-8-sig"))
    out = tmp_path / "m.edgebundle"
    assert convert(linear_model(tmp_path / "m.onnx"), key, out, "--precision", "fp32", "--labels",
                   str(tmp_path / "labels.txt")) == 0
    assert read_manifest_unverified(out).labels == ["cat", "dog", "bird"]


def test_keygen_into_a_file_or_an_impossible_folder_is_one_usage_line(tmp_path, capsys):
    """`keygen --out signing.key` (a file, not the folder) said "[Errno 17] File exists: 'signing.key'", and a folder
    that cannot be made (under a file) was a bare errno line with exit 1. Both say what --out must be (exit 2)."""
    (tmp_path / "signing.key").write_text("mine")
    assert main(["keygen", "--out", str(tmp_path / "signing.key")]) == exit_code("usage")
    assert "is a file: give the folder to write signing.key and signing.pub into" in capsys.readouterr().err
    assert main(["keygen", "--out", str(tmp_path / "signing.key" / "keys")]) == exit_code("usage")
    assert "cannot write the key pair there (Not a directory)" in capsys.readouterr().err
    assert (tmp_path / "signing.key").read_text() == "mine"


def test_a_pytorch_model_returning_a_dict_keeps_its_output_names(key, tmp_path, capsys):
    """A factory whose forward returns {"logits": ..., "features": ...} (as Hugging Face models do) exported with outputs
    named 'output' and 'mul', so `--output-role features` named nothing the model had. The dict's keys are the names."""
    from edge_agent.bundle import read_manifest_unverified

    (tmp_path / "net.py").write_text(
        "import torch\n\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.head = torch.nn.Linear(4, 3)\n\n"
        "    def forward(self, x):\n"
        "        return {'logits': self.head(x), 'features': x * 2}\n\n"
        "def build():\n"
        "    return Net()\n")
    out = tmp_path / "net.edgebundle"
    assert convert(f"{tmp_path / 'net.py'}:build", key, out, "--precision", "fp32", "--input-shape", "1x4",
                   "--output-role", "features") == 0, capsys.readouterr().err
    manifest = read_manifest_unverified(out)
    assert [t.name for t in manifest.outputs] == ["logits", "features"]
    assert manifest.postprocess.options["output"] == "features"


def test_image_options_for_an_input_that_takes_no_images_are_named_as_doing_nothing(key, tmp_path, caplog):
    """--mean/--std for a model whose input is a vector (or an image of dynamic size) were dropped without a word and
    the bundle had no preprocessing; the user expected the device to normalise images. One warning names them."""
    np.savez(tmp_path / "calib.npz", x=samples())
    assert convert(linear_model(tmp_path / "m.onnx"), key, tmp_path / "m.edgebundle", "--calibration",
                   str(tmp_path / "calib.npz"), "--mean", "0.5", "--std", "0.25") == 0
    assert "--mean, --std do nothing: input 'x' is float32['N', 4], not an image of fixed size" in caplog.text


def test_opset_for_an_onnx_source_is_named_as_doing_nothing(key, tmp_path, caplog):
    """--opset 13 on an .onnx source (the user hoping to down-convert it for an older runtime) was dropped without a
    word; so was --input-shape for a .tflite or Keras source. Each now gets one warning line."""
    assert convert(linear_model(tmp_path / "m.onnx"), key, tmp_path / "m.edgebundle", "--precision", "fp32",
                   "--opset", "13") == 0
    assert "--opset 13 does nothing for an ONNX source: it sets the opset of the PyTorch export" in caplog.text


def test_the_progress_bar_counts_the_recipes_passes(key, tmp_path, capsys, monkeypatch):
    """On a terminal the bar was made for 7 passes whatever the recipe had: an ONNX conversion (10 passes) stood at
    100 % on its selftest with three passes to go, then lost its total ('package: 9pass'). Its total is the recipe's."""
    import re
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    np.savez(tmp_path / "calib.npz", x=samples())
    assert main(["convert", str(linear_model(tmp_path / "m.onnx")), "--profile", "raspberry-pi-4", "--key", str(key),
                 "--out", str(tmp_path / "m.edgebundle"), "--calibration", str(tmp_path / "calib.npz"),
                 "--bench-runs", "0"]) == 0
    err = capsys.readouterr().err
    counts = [(int(n), int(total)) for n, total in re.findall(r"(\d+)/(\d+) \[", err)]
    assert counts[-1] == (9, 10) and not re.search(r": \d+pass \[", err), err  # tqdm drops the total once past it
