"""Self-test pass: record a few inputs and the converted model's outputs; the device re-runs them after install."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.bundle import SelfTest

from ..options import PassOption
from ..runners import run_model
from .base import ConversionContext, Pass

SELFTEST_FILE = "selftest.npz"


def save_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez without timestamps, so the same arrays always give the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


class SelfTestPass(Pass):
    """Keep a few inputs and the converted model's outputs: the device re-runs them after install."""

    name = "selftest"

    @classmethod
    def default_config(cls) -> dict[str, PassOption]:
        return {"selftest_samples": PassOption(int, 4, "inputs recorded for the device's self-test (0: none)", flag="")}

    def applies(self, ctx: ConversionContext) -> bool:
        return (ctx.evaluation or ctx.calibration) is not None and self.config(ctx).selftest_samples > 0

    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        data = (ctx.evaluation or ctx.calibration).head(self.config(ctx).selftest_samples)
        # as the target computes them: this host's int8 kernels may saturate where the device's do not
        outputs = run_model(ctx.model, data, ctx.inputs, ctx.outputs, exact_int8=ctx.exact_int8())
        if ctx.format == "tflite":  # recorded as the device feeds them: bundle names and layout
            from ..tflite.model_io import feeds_in_layout

            feeds = feeds_in_layout(data.inputs, ctx.inputs)
            arrays = {f"input.{t.name}": v for t, v in zip(ctx.inputs, feeds)}
            outputs = [np.asarray(o) for o in outputs]
            outputs = [o if not t.source_layout else _to_bundle_layout(o, t) for o, t in zip(outputs, ctx.outputs)]
        else:
            arrays = {f"input.{k}": v for k, v in data.inputs.items()}
        arrays.update({f"output.{i}": o for i, o in enumerate(outputs)})
        path = ctx.workdir / SELFTEST_FILE
        save_npz_deterministic(path, arrays)
        ctx.extra_files[SELFTEST_FILE] = path
        scale = max(1.0, float(np.abs(outputs[0]).max()))
        atol = round(0.05 * scale, 6)  # room for int8 kernels that round differently on ARM vs x86
        ctx.selftest = SelfTest(file=SELFTEST_FILE, atol=atol, rtol=0.05)
        return {"samples": len(data), "atol": atol}


def _to_bundle_layout(array: np.ndarray, spec) -> np.ndarray:
    from edge_agent.pipeline.preprocess import to_layout

    return to_layout(array, spec.source_layout, spec.layout)

