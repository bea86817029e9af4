"""Reference-statistics pass: what the model's inputs and the float model's answers look like, for drift
monitoring on the device (edge_agent.monitor). A few kB of JSON, packed as a signed bundle member."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from edge_agent.bundle import REFERENCE_STATS_FILE
from edge_agent.monitor.reference import reference_stats

from ..options import PassOption
from .base import ConversionContext, Pass


class ReferenceStatsPass(Pass):
    """Record input statistics (calibration + eval data) and the float model's answers on the gate data
    (classifiers: class and confidence distribution; detectors: boxes per frame, box scores, class mix);
    the agent scores live frames against them (PSI)."""

    name = "reference-stats"

    @classmethod
    def default_config(cls) -> dict[str, PassOption]:
        return {"reference_stats": PassOption(bool, True, "record reference statistics for drift monitoring",
                                              flag="")}

    def applies(self, ctx: ConversionContext) -> bool:
        return (ctx.evaluation or ctx.calibration) is not None and bool(self.config(ctx).reference_stats)

    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        spec = ctx.inputs[0]
        parts = [d.inputs[spec.name] for d in (ctx.calibration, ctx.evaluation) if d is not None and spec.name in d.inputs]
        if not parts:  # data keyed differently (single-input models fed by position)
            parts = [next(iter(d.inputs.values())) for d in (ctx.calibration, ctx.evaluation) if d is not None]
        inputs = np.concatenate(parts, axis=0)
        outputs, detections = None, None
        post = ctx.postprocess
        if ctx.task() in ("classification", "detection"):
            ev = ctx.evaluator()  # the float model's outputs on the gate data, computed once
            if ev is not None and ctx.task() == "classification":
                outputs = ev.reference
            elif ev is not None:  # the boxes the device would serve (the manifest's threshold), per sample
                detections = [(d[1], d[2]) for d in ev.scorer.detections(ev.reference)]
        stats = reference_stats(inputs, spec.source_layout or spec.layout, outputs,
                                softmax=post.softmax if post else True,
                                classes=len(ctx.options.labels) if ctx.options.labels else None, detections=detections)
        path = ctx.workdir / REFERENCE_STATS_FILE
        path.write_bytes(stats.to_json())
        ctx.extra_files[REFERENCE_STATS_FILE] = path
        return {"file": REFERENCE_STATS_FILE, "bytes": path.stat().st_size, "features": sorted(stats.features),
                "summary": json.loads(json.dumps(stats.summary))}
