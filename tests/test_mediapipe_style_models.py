"""Models shaped like Google MediaPipe's that a new user brings: multi-output landmark regressors (a [1, 1, 1, K]
conv head of coordinates beside a one-value presence logit), person masks ([1, H, W, 1] or [1, 1, H, W]), and
.tflite files holding MediaPipe's custom ops. Tiny ONNX graphs built here; runs go through the real CLIs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from converter.accuracy.metrics import detect_task
from edge_agent.cli import main as agent_main
from edge_agent.errors import exit_code

from .test_user_models import _convert, _manifest, _save, keys  # noqa: F401  (keys: the module's fixture)


def landmark_model(path: Path, points: int = 21) -> Path:
    """image [1, 3, 8, 8] -> landmarks [1, 1, 1, 3 * points] in pixels (a 1x1 conv head after pooling, as
    MediaPipe's face mesh) and a presence logit [1, 1]."""
    rng = np.random.default_rng(4)
    w = numpy_helper.from_array(rng.normal(size=(3 * points, 3, 1, 1)).astype(np.float32) * 40, "w")
    b = numpy_helper.from_array(rng.uniform(20, 200, 3 * points).astype(np.float32), "b")
    v = numpy_helper.from_array(rng.normal(size=(3, 1)).astype(np.float32), "v")
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
             helper.make_node("Conv", ["pooled", "w", "b"], ["head"]),
             helper.make_node("Transpose", ["head"], ["landmarks"], perm=[0, 2, 3, 1]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("MatMul", ["flat", "v"], ["presence"])]
    graph = helper.make_graph(
        nodes, "landmarks", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, [1, 1, 1, 3 * points]),
         helper.make_tensor_value_info("presence", TensorProto.FLOAT, [1, 1])], [w, b, v])
    return _save(graph, path)


def mask_model(path: Path, channels_last: bool = False) -> Path:
    """image [1, 3, 16, 16] -> a one-channel person mask, sigmoid of a 1x1 conv: [1, 1, 16, 16] or [1, 16, 16, 1]."""
    w = numpy_helper.from_array(np.random.default_rng(5).normal(size=(1, 3, 1, 1)).astype(np.float32) * 4, "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["logit"]), helper.make_node("Sigmoid", ["logit"], ["m"])]
    shape = [1, 1, 16, 16]
    if channels_last:
        nodes.append(helper.make_node("Transpose", ["m"], ["mask"], perm=[0, 2, 3, 1]))
        shape = [1, 16, 16, 1]
    else:
        nodes[-1].output[0] = "mask"
    graph = helper.make_graph(nodes, "mask", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("mask", TensorProto.FLOAT, shape)], [w])
    return _save(graph, path)


def test_the_gate_judges_landmarks_as_a_regression_and_single_channel_planes_as_masks():
    """A [1, 1, 1, 1404] landmark head (MediaPipe face mesh) was a 'map': the gate thresholded its pixel coordinates
    at 0.3 and found the same IoU whatever the converted model answered; an [N, K] output under --task none was scored
    by the argmax of its coordinates in the int8 searches (91 % 'top-1 agreement' warnings on a hand landmark model
    the gate then passed on cosine); a [1, H, W, 1] mask (TFLite, Keras) was not a map at all."""
    assert detect_task([1, 1, 1, 1404], False) == "generic"
    assert detect_task([1, 63], False) == "generic"
    assert detect_task([1, 63], True) == "classification"
    assert detect_task([1, 1, 256, 256], False) == "map"
    assert detect_task([1, 256, 256, 1], False) == "map"
    assert detect_task([1, 1, "h", "w"], False) == "map"
    assert detect_task([1, 4, 32, 32], False) == "generic"


def test_a_landmark_head_is_gated_by_cosine_not_by_thresholded_coordinates(keys, tmp_path):
    model = landmark_model(tmp_path / "hand.onnx")
    data = tmp_path / "eval.npz"
    np.savez(data, image=np.random.default_rng(6).random((8, 3, 8, 8), dtype=np.float32))
    out = tmp_path / "hand.edgebundle"
    assert _convert(model, out, keys[0], "--precision", "fp32", "--task", "none", "--eval", str(data)) == 0
    accuracy = json.loads(Path(f"{out}.report.json").read_text())["measurements"]["accuracy"]
    assert accuracy["passed"] and "agreement_metric" not in accuracy  # was share_iou>=0.9 of coordinates > 0.3
    assert "norm_ratio" in accuracy


def test_task_segment_on_a_person_mask_is_refused_at_conversion_with_the_way_forward(keys, tmp_path, capsys):
    """`--task segment` on a semantic mask (MediaPipe's selfie segmentation, [1, 256, 256, 1]) wrote a YOLO
    detection bundle that every `edge-agent run` refused ('yolo output has shape (1, 256, 256, 1)', exit 75), and
    with --eval the conversion itself stopped with that decoder message and the agent's exit 75."""
    for channels_last in (False, True):
        model = mask_model(tmp_path / f"mask{int(channels_last)}.onnx", channels_last)
        out = tmp_path / "mask.edgebundle"
        capsys.readouterr()
        assert _convert(model, out, keys[0], "--precision", "fp32", "--task", "segment") == exit_code("import")
        err = capsys.readouterr().err
        assert "--task none" in err and "mask" in err and not out.exists()


def test_a_person_mask_under_task_none_is_served_raw_and_gated_as_a_mask(keys, tmp_path, capsys):
    model = mask_model(tmp_path / "mask.onnx", channels_last=True)
    data = tmp_path / "eval.npz"
    np.savez(data, image=np.random.default_rng(7).random((6, 3, 16, 16), dtype=np.float32))
    out = tmp_path / "mask.edgebundle"
    assert _convert(model, out, keys[0], "--precision", "fp32", "--task", "none", "--eval", str(data)) == 0
    accuracy = json.loads(Path(f"{out}.report.json").read_text())["measurements"]["accuracy"]
    assert accuracy["agreement_metric"] == "share_iou>=0.9" and accuracy["agreement"] == 1.0
    np.save(tmp_path / "x.npy", data_x := np.load(data)["image"][:1])
    capsys.readouterr()
    assert agent_main(["run", str(out), str(tmp_path / "x.npy"), "--trust", str(keys[1]), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["outputs"]
    assert [o["shape"] for o in got] == [[1, 16, 16, 1]] and data_x.shape == (1, 3, 16, 16)


def test_a_single_value_output_is_not_served_as_a_one_class_classifier(keys, tmp_path, capsys):
    """A presence logit ([1, 1], or MediaPipe's [1, 1, 1, 1] face flag) named with --output-role, or first, was a
    'classifier' of one class: softmax made every answer '0 (1.0000)', whatever the logit, and the gate's top-1
    agreement was 100 % for any converted model."""
    model = landmark_model(tmp_path / "hand.onnx")
    out = tmp_path / "presence.edgebundle"
    assert _convert(model, out, keys[0], "--precision", "fp32", "--output-role", "presence") == 0
    assert _manifest(out)["postprocess"]["kind"] == "none"
    np.save(tmp_path / "x.npy", np.full((1, 3, 8, 8), 0.5, np.float32))
    capsys.readouterr()
    assert agent_main(["run", str(out), str(tmp_path / "x.npy"), "--trust", str(keys[1]), "--json"]) == 0
    got = {o["name"]: o for o in json.loads(capsys.readouterr().out)["outputs"]}
    assert got["presence"]["shape"] == [1, 1] and "label" not in got


def test_output_role_with_task_none_is_refused_not_dropped(keys, tmp_path, capsys):
    """`--task none --output-role presence` wrote a bundle with no trace of the option: the gate scored output 0."""
    model = landmark_model(tmp_path / "hand.onnx")
    out = tmp_path / "none.edgebundle"
    capsys.readouterr()
    assert _convert(model, out, keys[0], "--precision", "fp32", "--task", "none",
                    "--output-role", "presence") == exit_code("import")
    assert "--output-role" in capsys.readouterr().err and not out.exists()


def custom_op_tflite(path: Path) -> Path:
    """A .tflite file whose one op is MediaPipe's custom Convolution2DTransposeBias (the selfie segmentation models'
    upsampling): image [1, 4, 4, 3] -> [1, 8, 8, 1]. LiteRT's builtin kernels lack it, XNNPACK implements it."""
    import struct

    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    def tensor(name: str, shape: tuple[int, ...], buffer: int) -> schema.TensorT:
        t = schema.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), schema.TensorType.FLOAT32, buffer
        return t

    def buffer(values: np.ndarray | None = None) -> schema.BufferT:
        b = schema.BufferT()
        b.data = None if values is None else list(np.asarray(values, np.float32).tobytes())
        return b

    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode, code.version = "Convolution2DTransposeBias", 1
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, 2], [3]
    op.customOptions = list(struct.pack("<3i", 1, 2, 2))  # TfLiteTransposeConvParams: SAME padding, stride 2 x 2
    graph = schema.SubGraphT()
    graph.name, graph.inputs, graph.outputs, graph.operators = "main", [0], [3], [op]
    graph.tensors = [tensor("image", (1, 4, 4, 3), 1), tensor("weights", (1, 2, 2, 3), 2), tensor("bias", (1,), 3),
                     tensor("mask", (1, 8, 8, 1), 4)]
    model = schema.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [graph]
    model.buffers = [buffer(), buffer(), buffer(np.random.default_rng(0).normal(size=(1, 2, 2, 3))),
                     buffer(np.array([0.25])), buffer()]
    flatbuffer_utils.write_model(model, str(path))
    return path


def test_a_tflite_file_with_a_mediapipe_custom_op_converts_and_runs(keys, tmp_path, capsys):
    """MediaPipe's selfie segmentation (Convolution2DTransposeBias) was refused as 'not a loadable TFLite model:
    Encountered unresolved custom op' (exit 21): the converter loads models with the builtin kernels only, while
    the device's interpreter (XNNPACK) runs it. The bundle now converts, is gated as a mask and answers as LiteRT."""
    from edge_agent.runtimes.litert_runtime import TFLiteModel

    model = custom_op_tflite(tmp_path / "selfie.tflite")
    x = np.random.default_rng(1).random((3, 4, 4, 3), dtype=np.float32)
    np.savez(tmp_path / "eval.npz", image=x)
    out = tmp_path / "selfie.edgebundle"
    assert _convert(model, out, keys[0], "--task", "none", "--eval", str(tmp_path / "eval.npz")) == 0
    accuracy = json.loads(Path(f"{out}.report.json").read_text())["measurements"]["accuracy"]
    assert accuracy["passed"] and accuracy["agreement_metric"] == "share_iou>=0.9"
    np.save(tmp_path / "x.npy", x[:1])
    capsys.readouterr()
    assert agent_main(["run", str(out), str(tmp_path / "x.npy"), "--trust", str(keys[1]), "--json"]) == 0
    got = np.asarray(json.loads(capsys.readouterr().out)["outputs"][0]["data"], np.float32)
    np.testing.assert_allclose(got, TFLiteModel(model).run_list([x[:1]])[0], atol=1e-6)


def two_output_model(path: Path) -> Path:
    """x [1, 16] in [0, 1] -> a regression y = 2x (fine in int8) and a score s = (x + 2000) - 2000, whose int8
    intermediate steps by ~8: a second output that int8 breaks while the first holds."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    big = numpy_helper.from_array(np.array(2000.0, np.float32), "big")
    nodes = [helper.make_node("Mul", ["x", "two"], ["y"]), helper.make_node("Add", ["x", "big"], ["shifted"]),
             helper.make_node("Sub", ["shifted", "big"], ["s"])]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16]),
                               helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 16])], [two, big])
    return _save(graph, path)


def test_every_output_of_a_raw_output_bundle_is_gated(keys, tmp_path, capsys):
    """`--task none` bundles serve every output, but the gate scored only the first: an int8 conversion that
    broke a second output (a presence score, a mask beside landmarks) passed and was written."""
    model = two_output_model(tmp_path / "two.onnx")
    data = tmp_path / "data.npz"
    np.savez(data, x=np.random.default_rng(8).random((16, 16), dtype=np.float32))
    out = tmp_path / "two.edgebundle"
    capsys.readouterr()
    code = _convert(model, out, keys[0], "--precision", "int8-static", "--task", "none", "--calibration", str(data),
                    "--eval", str(data))
    assert code == exit_code("gate"), capsys.readouterr().err
    assert "output s: mean cosine" in capsys.readouterr().err and not out.exists()
    accuracy = json.loads(Path(f"{out}.report.json").read_text())["measurements"]["accuracy"]
    assert accuracy["mean_cosine"] > 0.999 and accuracy["other_outputs"]["s"]["mean_cosine"] < 0.99


def nhwc_model(path: Path) -> Path:
    """A channels-last image model as tf2onnx exports MediaPipe's and Keras models: image [1, 8, 8, 3] -> Transpose
    -> 1x1 conv -> pooled regression [1, 4]."""
    w = numpy_helper.from_array(np.random.default_rng(9).normal(size=(4, 3, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["values"])]
    graph = helper.make_graph(nodes, "nhwc", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 8, 8, 3])],
                              [helper.make_tensor_value_info("values", TensorProto.FLOAT, [1, 4])], [w])
    return _save(graph, path)


def test_an_nhwc_onnx_model_keeps_its_input_layout_in_tflite(keys, tmp_path, capsys):
    """tf2onnx's export of MediaPipe's hand landmark model (input [1, 224, 224, 3]) became a TFLite model taking
    [1, 224, 3, 224] (onnx2tf took the input for NCHW), and the gate stopped with 'input input_1 expects shape
    [1, 224, 3, 224], got [1, 224, 224, 3]', exit 3 and no report."""
    import onnxruntime as ort

    model = nhwc_model(tmp_path / "nhwc.onnx")
    x = np.random.default_rng(10).random((4, 8, 8, 3), dtype=np.float32)
    np.savez(tmp_path / "eval.npz", image=x)
    out = tmp_path / "nhwc.edgebundle"
    assert _convert(model, out, keys[0], "--format", "tflite", "--precision", "fp32", "--task", "none",
                    "--eval", str(tmp_path / "eval.npz")) == 0
    assert _manifest(out)["inputs"][0]["shape"] == [1, 8, 8, 3]
    np.save(tmp_path / "x.npy", x[:1])
    capsys.readouterr()
    assert agent_main(["run", str(out), str(tmp_path / "x.npy"), "--trust", str(keys[1]), "--json"]) == 0
    got = np.asarray(json.loads(capsys.readouterr().out)["outputs"][0]["data"], np.float32)
    np.testing.assert_allclose(got, ort.InferenceSession(str(model)).run(None, {"image": x[:1]})[0], atol=1e-5)


def test_int8_tflite_of_a_multi_output_model_keeps_the_outputs_in_order(keys, tmp_path, capsys):
    """TFLiteConverter's int8 model from onnx2tf's SavedModel lists its outputs out of the source's order
    (`PartitionedCall:1, :3, :0, :2` for MediaPipe's hand landmark model): the gate compared the landmarks with the
    presence score ('0.00x float's magnitude', cosine above 1) and a --force bundle served them under each other's
    places. The file's outputs now follow its signature (the source's order)."""
    import onnxruntime as ort

    model = landmark_model(tmp_path / "hand.onnx")
    x = np.random.default_rng(6).random((16, 3, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "data.npz", image=x)
    out = tmp_path / "hand.edgebundle"
    data = str(tmp_path / "data.npz")
    assert _convert(model, out, keys[0], "--format", "tflite", "--precision", "int8-static", "--task", "none",
                    "--calibration", data, "--eval", data, "--sensitivity", "off") == 0, capsys.readouterr().err
    np.save(tmp_path / "x.npy", x[:1])
    capsys.readouterr()
    assert agent_main(["run", str(out), str(tmp_path / "x.npy"), "--trust", str(keys[1]), "--json"]) == 0
    got = [np.asarray(o["data"], np.float32) for o in json.loads(capsys.readouterr().out)["outputs"]]
    want = ort.InferenceSession(str(model)).run(None, {"image": x[:1]})
    assert [g.size for g in got] == [w.size for w in want] == [63, 1]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.ravel(), w.ravel(), atol=0.02 * float(np.abs(w).max()) + 0.01)


def test_a_presence_score_near_zero_is_not_another_scale():
    """MediaPipe's hand presence on photos without a hand is ~0.001; int8 answers 0 (its step is 1/256). The gate,
    now scoring every output, refused that as 'the outputs are 0.00x float's magnitude ... Nothing to accept'."""
    from converter.accuracy.metrics import norm_ratio

    ref = np.array([[0.001], [0.002], [0.0015], [0.049], [0.004]])
    assert norm_ratio(ref, np.array([[0.0], [0.0], [0.0], [0.0508], [0.0039]])) == 1.0
    assert norm_ratio(ref + 0.5, 2 * (ref + 0.5)) == 2.0 and norm_ratio(ref + 0.5, 0.5 * (ref + 0.5)) == 0.5
