"""Quantization-aware training hooks for PyTorch users (torch.ao FX QAT -> QDQ ONNX -> edge-convert).

    from converter.qat import prepare_qat, export_qdq_onnx
    qat = prepare_qat(model, example_input)      # fake-quant copy, train mode
    ...fine-tune qat for a few epochs with your usual loop (small learning rate)...
    export_qdq_onnx(qat, example_input, "model.qat.onnx")
    # edge-convert convert model.qat.onnx --profile raspberry-pi-4 ...  (keeps the model's own scales)

Tested with torch 2.13.0 (CPU). What works there and what does not (measured, see docs/accuracy-aware-int8.md):
- `torch.ao.quantization.quantize_fx.prepare_qat_fx` + `convert_fx`, then the TorchScript exporter
  (`torch.onnx.export(..., dynamo=False)`, opset >= 13) writes QuantizeLinear/DequantizeLinear with int8
  weights, BatchNorm folded into the convs and int32 biases; ONNX Runtime fuses it into QLinearConv/QGemm.
- Exporting the fake-quant model itself fails with torch's default QAT qconfig
  (`aten::fused_moving_avg_obs_fake_quant` has no ONNX symbolic) and, with plain FakeQuantize modules whose
  observers are still on, on `aten::copy`; with observers off it exports, but BatchNorm stays unfolded
  (Conv -> Div -> Add -> BatchNormalization), so ORT cannot fuse the convs into QLinearConv. Hence convert_fx.
- `torch.ao.quantization.quantize_pt2e` is not in torch 2.13 (moved to torchao).
torch is imported inside the functions: the converter itself runs without it.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

log = logging.getLogger(__name__)
DEFAULT_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear need opset >= 13


def _as_tuple(example_input: Any) -> tuple:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def qat_qconfig_mapping():
    """The QConfigMapping prepare_qat uses: per-channel symmetric int8 weights, uint8 per-tensor activations.

    Why these: ONNX Runtime's CPU QDQ fusions (QLinearConv, QGemm, QLinearMatMul via MLAS) are fastest
    with uint8 activations x int8 weights on both x86-64 and ARM64, per-channel weights need zero point 0
    (symmetric) for its per-channel kernels, and this is the same pair the converter's post-training recipe
    uses (profiles' activation_type=uint8, weight_type=int8), so QAT and PTQ bundles run the same kernels.
    Full 8-bit ranges (no reduce_range): the Pi's NEON kernels do not saturate; on x86 CPUs without VNNI,
    u8 x s8 products can saturate in AVX2 - measure (the converter's accuracy gate does).
    Plain FakeQuantize (not torch's default FusedMovingAvgObsFakeQuantize): only plain fake-quant ops
    have ONNX exports. Quant ranges are the ones ONNX allows: uint8 [0, 255] and int8 [-128, 127].
    """
    import torch
    from torch.ao.quantization import (FakeQuantize, MovingAverageMinMaxObserver,
                                       MovingAveragePerChannelMinMaxObserver, QConfig, QConfigMapping)

    activation = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                        dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    weight = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127,
                                    dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)
    return QConfigMapping().set_global(QConfig(activation=activation, weight=weight))


def _relu6_as_relu(model) -> set[str]:
    """Swap every nn.ReLU6 module of `model` (in place) for nn.ReLU; returns the names whose output must be pinned to
    [0, 6]: each former ReLU6 and the conv it follows (FX fuses Conv+BN+ReLU under the conv's name).

    Why: torch.ao fuses Conv+BN+ReLU but not ReLU6, which it quantizes on its own with the conv output's scale; the
    export is then Conv -> Q -> DQ -> Clip -> Q (35 of MobileNetV2's 52 convs): ORT runs every Clip in float between
    Q/DQ pairs, and the conv's output range spends its grid on negatives ReLU6 drops. ReLU fused into the conv, with
    its output quantizer's range held within [0, 6] (uint8, zero point 0), computes ReLU6."""
    import torch
    from torch import fx, nn

    names = {n for n, m in model.named_modules() if isinstance(m, nn.ReLU6)}
    if not names:
        return set()
    for name in names:
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.ReLU(inplace=False))
    pinned = set(names)
    modules = dict(model.named_modules())
    for node in fx.symbolic_trace(model).graph.nodes:
        if node.op == "call_module" and node.target in names:
            prev = node.args[0]
            while isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1 and isinstance(
                    modules.get(prev.target), (nn.BatchNorm2d, nn.Conv2d, nn.Conv1d, nn.BatchNorm1d, nn.Linear)):
                pinned.add(prev.target)
                if not isinstance(modules[prev.target], (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                    break
                prev = prev.args[0]
    return pinned


def _relu6_observer():
    """A moving-average min/max observer whose range stays within [0, 6]: ReLU + this quantizer = ReLU6 (values above
    6 saturate), on the range the layer uses. Measured on MobileNetV2 (no training): many ReLU6 outputs peak at 1-3, and
    observed ranges kept 0.728 of float's held-out answers (0.952 where clear) against 0.714 / 0.876 with [0, 6] fixed."""
    from torch.ao.quantization import MovingAverageMinMaxObserver

    class ReLU6Observer(MovingAverageMinMaxObserver):
        def forward(self, x_orig):
            out = super().forward(x_orig)
            self.min_val.clamp_(min=0.0)
            self.max_val.clamp_(max=6.0)
            return out

    return ReLU6Observer


def _pin_relu6_outputs(prepared, pinned: set[str]) -> int:
    """Give the output quantizer of each module in `pinned` a range clamped to [0, 6] (_relu6_observer), starting at
    [0, 6] so an export before any observation is still ReLU6."""
    import torch
    from torch.ao.quantization import FakeQuantizeBase

    observer = _relu6_observer()
    count = 0
    for node in prepared.graph.nodes:
        if node.op != "call_module" or not node.args or getattr(node.args[0], "target", None) not in pinned:
            continue
        fq = prepared.get_submodule(node.target)
        if not isinstance(fq, FakeQuantizeBase) or node.args[0].op != "call_module":
            continue
        obs = observer(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=255)
        obs.min_val = torch.tensor(0.0)
        obs.max_val = torch.tensor(6.0)
        fq.activation_post_process = obs
        fq.scale.fill_(6.0 / 255)
        fq.zero_point.fill_(0)
        count += 1
    return count


def prepare_qat(model, example_input: Any, qconfig_mapping=None):
    """A fake-quantized copy of `model` (FX graph mode, Conv+BN+ReLU fused), in train mode, ready to fine-tune.

    `model` is not modified. `example_input`: a tensor (or tuple of tensors) of the model's input shape.
    Fine-tune the result with your usual loop (a few epochs, learning rate ~1/10 of training's); its
    observers learn activation ranges and its weights adapt to int8 rounding. nn.ReLU6 modules become ReLU fused
    into their conv with the output quantizer's range held within [0, 6] (_relu6_as_relu: same function, fused kernels).
    """
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    model = copy.deepcopy(model).train()
    pinned = _relu6_as_relu(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        prepared = prepare_qat_fx(model, qconfig_mapping or qat_qconfig_mapping(), _as_tuple(example_input))
    if pinned:
        log.info("ReLU6 as ReLU with output ranges within [0, 6]: %d quantizers", _pin_relu6_outputs(prepared, pinned))
    return prepared.train()


def freeze_qat(prepared) -> None:
    """Stop observers and BatchNorm statistics updating (call for the last epoch(s) or before evaluating)."""
    import torch.ao.nn.intrinsic.qat as nniqat
    from torch.ao.quantization import disable_observer

    prepared.apply(disable_observer)
    prepared.apply(nniqat.freeze_bn_stats)


def distill_qat(prepared, teacher, batches: Callable[[int], Iterable[Any]], epochs: int = 4, lr: float = 1e-5,
                observe_epochs: int = 1, temperature: float = 1.0,
                on_step: Callable[[int, int, float], None] | None = None):
    """Fine-tune a prepare_qat model to reproduce `teacher`'s logits on unlabelled inputs (knowledge distillation).

    Why: a user converting a pretrained model rarely has its labels, and what the int8 model must keep is the float
    model's answers; KL(teacher || student) on the logits asks for exactly that, on any photos. `batches(epoch)` yields
    input tensors (N, ...) - augmented views of calibration photos, so a few hundred photos give enough distinct views.
    BatchNorm statistics are frozen from the start (the teacher's, learned on far more data than a calibration set);
    the observers learn activation ranges for `observe_epochs` epochs and are then frozen, so the last epochs adapt
    the weights to fixed scales (the ones exported). Adam, small `lr`: the weights move by rounding steps, no more.
    Classifier Dropout is switched off (the student must match the teacher, not regularise). Returns `prepared`.
    """
    import torch
    import torch.ao.nn.intrinsic.qat as nniqat
    import torch.nn.functional as F
    from torch.ao.quantization import disable_observer

    teacher = teacher.eval()
    prepared.train()
    prepared.apply(nniqat.freeze_bn_stats)
    for m in prepared.modules():
        if isinstance(m, (torch.nn.Dropout, torch.nn.BatchNorm2d)):
            m.eval()  # BatchNorm left unfused (none after a conv in a CNN) keeps its running statistics too
    opt = torch.optim.Adam([p for p in prepared.parameters() if p.requires_grad], lr=lr)
    step = 0
    for epoch in range(epochs):
        if epoch == observe_epochs:
            prepared.apply(disable_observer)
        for x in batches(epoch):
            with torch.no_grad():
                target = F.log_softmax(teacher(x) / temperature, dim=1)
            out = F.log_softmax(prepared(x) / temperature, dim=1)
            loss = F.kl_div(out, target, reduction="batchmean", log_target=True) * temperature ** 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            if on_step is not None:
                on_step(epoch, step, float(loss.detach()))
            step += 1
    return prepared


def quantization_params(prepared) -> dict[str, dict[str, Any]]:
    """{module name: {"scale": ndarray, "zero_point": ndarray}} of every fake-quant module (observer state)."""
    from torch.ao.quantization import FakeQuantizeBase

    return {name: {"scale": m.scale.detach().cpu().numpy().copy(), "zero_point": m.zero_point.detach().cpu().numpy().copy()}
            for name, m in prepared.named_modules() if isinstance(m, FakeQuantizeBase)}


def export_qdq_onnx(prepared, example_input: Any, path: str | Path, input_names: Sequence[str] = ("image",),
                    output_names: Sequence[str] = ("logits",), opset: int = DEFAULT_OPSET, dynamic_batch: bool = False) -> Path:
    """Write the QAT model as an ONNX QDQ model (QuantizeLinear/DequantizeLinear carrying its scales).

    `prepared` (from prepare_qat, fine-tuned) is not modified: a copy has its observers frozen, is converted
    with torch.ao's convert_fx (BatchNorm folded, int8 weights, int32 biases) and exported with the
    TorchScript exporter (dynamo=False; the dynamo exporter does not take quantized tensors).
    The input shape is `example_input`'s (static, like the agent runs it); dynamic_batch=True names dim 0.
    """
    import torch
    from torch.ao.quantization.quantize_fx import convert_fx

    if opset < 13:
        raise ValueError("QDQ export needs opset >= 13 (per-channel QuantizeLinear/DequantizeLinear)")
    frozen = copy.deepcopy(prepared).eval()
    freeze_qat(frozen)
    path = Path(path)
    axes = ({n: {0: "batch"} for n in (*input_names, *output_names)} if dynamic_batch else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        quantized = convert_fx(frozen)
        with torch.no_grad():
            torch.onnx.export(quantized, _as_tuple(example_input), str(path), dynamo=False, opset_version=opset,
                              input_names=list(input_names), output_names=list(output_names), dynamic_axes=axes)
    log.info("wrote QDQ ONNX model %s (opset %d)", path, opset)
    return path
