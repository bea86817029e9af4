"""Layer inputs of one ONNX model computed stage by stage, each node once per sample, for layer-wise fitting.

Layer-wise compensation (reconstruct.py, weight_compensation.py) fits layer k on the inputs that the already fitted
layers 0..k-1 give it, so it needs layer k's input after layer k-1 changed. Fetching that tensor from a session over
the whole model runs every node before it again: 57 layers x 32 samples of YOLOv8n were 1,824 prefix runs, most of
a ten-minute int8 conversion. But a tensor computed only from nodes ahead of layer k in graph order never changes
again once layers 0..k-1 are fitted. So stage k runs just the nodes layer k's input needs that no earlier stage ran,
fed the tensors earlier stages kept, and keeps what later stages will read: every node runs once per sample, in the
graph and kernels a whole-model session runs (the same values, so the fitted model is the one the prefix runs gave).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .activation_error import _expose
from .model_io import ort_session


@dataclass
class Stage:
    """One target's share of the graph: the nodes it runs, what it reads, what it keeps, what it frees."""

    target: str
    nodes: list[onnx.NodeProto]
    reads: list[str]  # graph inputs and tensors earlier stages kept (the target itself when already computed)
    keeps: list[str]  # tensors it computes that it returns (its target) or later stages read
    frees: list[str]  # kept tensors no later stage reads


def _outer_names(node: onnx.NodeProto) -> set[str]:
    """Tensors a control-flow node's subgraphs read from the enclosing graph (they count as its inputs)."""
    names: set[str] = set()
    for attr in node.attribute:
        for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            local = {i.name for i in g.input} | {i.name for i in g.initializer}
            for n in g.node:
                local.update(n.output)
            for n in g.node:
                names.update(t for t in (*n.input, *_outer_names(n)) if t and t not in local)
    return names


def plan(model: onnx.ModelProto, targets: list[str]) -> list[Stage]:
    """The stages computing `targets` in order, each graph node in the first stage whose target needs it."""
    nodes = list(model.graph.node)
    reads_of = [[t for t in (*n.input, *_outer_names(n)) if t] for n in nodes]
    producer = {t: i for i, n in enumerate(nodes) for t in n.output if t}
    constant = {i.name for i in model.graph.initializer}  # copied into each stage that reads them
    known = set(producer) | {i.name for i in model.graph.input if i.name not in constant}
    done: set[int] = set()
    parts: list[tuple[str, list[int], set[str]]] = []
    for target in targets:
        mine: set[int] = set()
        todo = [target]
        while todo:
            t = todo.pop()
            i = producer.get(t)
            if i is None or i in done or i in mine:
                continue
            mine.add(i)
            todo.extend(reads_of[i])
        done |= mine
        made = {t for i in mine for t in nodes[i].output}
        reads = {t for i in mine for t in reads_of[i] if t not in made and t in known}
        if target not in made:
            reads.add(target)
        parts.append((target, sorted(mine), reads))
    last_read = {t: k for k, (_, _, reads) in enumerate(parts) for t in reads}
    stages = []
    for k, (target, idx, reads) in enumerate(parts):
        made = [t for i in idx for t in nodes[i].output if t]
        keeps = [t for t in made if t == target or last_read.get(t, -1) > k]
        frees = [t for t in {*reads, target} if last_read.get(t, -1) <= k and t in producer]
        stages.append(Stage(target, [nodes[i] for i in idx], sorted(reads), keeps, frees))
    return stages


class StagedRunner:
    """`run(k, sample, feeds)`: the value of targets[k] for one sample. For each sample, stages run in order
    (0, 1, 2, ...); `feeds` (graph inputs, e.g. weights made inputs) may change between stages, and a stage reads
    the feeds of the moment it runs, as a whole-model run at that moment would."""

    def __init__(self, model: onnx.ModelProto, targets: list[str], workdir: Path, name: str = "stage") -> None:
        # The stages are cut from the graph ORT optimizes for the whole model with every target an output (what a
        # whole-model session runs) and run without optimizing again: cut from the source graph, a stage fused
        # differently (DequantizeLinear -> Concat -> QuantizeLinear became a QLinearConcat in one and not the
        # other) and a few YOLOv8n layer inputs moved by one int8 step.
        whole = workdir / f"{name}.whole.onnx"
        onnx.save_model(model, str(whole), save_as_external_data=False)
        optimized = workdir / f"{name}.optimized.onnx"
        ort_session(_expose(whole, targets, whole), save_optimized=optimized)
        self.model = onnx.load(str(optimized))
        self.stages, self.workdir, self.name = plan(self.model, targets), workdir, name
        self._sessions: dict[int, object] = {}
        self._kept: dict[int, dict[str, np.ndarray]] = {}

    def _session(self, k: int, values: dict[str, np.ndarray]):
        """Stage k as a model of its own (built once, on its first sample: input types from the values fed)."""
        if k not in self._sessions:
            st = self.stages[k]
            used = {t for n in st.nodes for t in (*n.input, *_outer_names(n))}
            graph = helper.make_graph(
                st.nodes, f"{self.name}{k}",
                [helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(values[t].dtype), values[t].shape)
                 for t in st.reads if t in used],
                [onnx.ValueInfoProto(name=t) for t in st.keeps],  # untyped: ORT infers them (contrib ops too)
                [i for i in self.model.graph.initializer if i.name in used])
            sub = helper.make_model(graph, opset_imports=self.model.opset_import, ir_version=self.model.ir_version)
            path = self.workdir / f"{self.name}{k}.onnx"
            onnx.save_model(sub, str(path), save_as_external_data=False)
            self._sessions[k] = ort_session(path, optimize=False)
        return self._sessions[k]

    def run(self, k: int, sample: int, feeds: dict[str, np.ndarray]) -> np.ndarray:
        st = self.stages[k]
        kept = self._kept.setdefault(sample, {})
        values = {t: kept[t] if t in kept else feeds[t] for t in st.reads}
        if st.nodes:
            sess = self._session(k, values)
            names = {i.name for i in sess.get_inputs()}
            kept.update(zip(st.keeps, sess.run(st.keeps, {t: v for t, v in values.items() if t in names})))
        out = kept[st.target] if st.target in kept else values[st.target]
        for t in st.frees:
            kept.pop(t, None)
        if k == len(self.stages) - 1:
            self._kept.pop(sample, None)
        return out
