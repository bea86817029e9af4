"""Self-test and packaging: record reference I/O for device health checks, then write and sign."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent import __version__
from edge_agent.bundle import Manifest, SelfTest, load_private_key, write_bundle

from ..errors import BundleTooLarge
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

    def applies(self, ctx: ConversionContext) -> bool:
        return (ctx.evaluation or ctx.calibration) is not None and ctx.options.selftest_samples > 0

    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        data = (ctx.evaluation or ctx.calibration).head(ctx.options.selftest_samples)
        outputs = run_model(ctx.model, data, ctx.inputs, ctx.outputs)
        if ctx.format == "tflite":  # recorded as the device feeds them: bundle names and layout
            from ..tflite_utils import feeds_in_layout

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
        ctx.measurements["_selftest"] = SelfTest(file=SELFTEST_FILE, atol=atol, rtol=0.05)
        return {"samples": len(data), "atol": atol}


class PackagePass(Pass):
    name = "package"

    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        o = ctx.options
        key = load_private_key(o.key)
        suffix = ".onnx" if ctx.format == "onnx" else ".tflite"
        model_file = f"model/model{suffix}"
        files = {model_file: ctx.model, **ctx.extra_files}
        float_size = (ctx.reference_model or ctx.float_model).stat().st_size
        conv_size = ctx.model.stat().st_size
        ctx.measurements["sizes"] = {
            "float_model_bytes": float_size,
            "model_bytes": conv_size,
            "size_ratio": round(conv_size / float_size, 4) if float_size else None,
        }
        limit = ctx.profile.limits.max_bundle_mb * 1e6
        if conv_size > limit:
            raise BundleTooLarge(
                f"model is {conv_size / 1e6:.1f} MB, over profile {ctx.profile.name}'s max_bundle_mb "
                f"of {ctx.profile.limits.max_bundle_mb}"
            )
        measurements = {k: v for k, v in ctx.measurements.items() if not k.startswith("_")}
        if o.reproducible:
            measurements.pop("host_latency", None)
        selftest = ctx.measurements.get("_selftest")
        manifest = Manifest(
            name=o.name or _default_name(o.source),
            version=o.version,
            profile=ctx.profile.name,
            format=ctx.format,
            runtime=ctx.runtime,
            precision=ctx.precision,
            model_file=model_file,
            inputs=ctx.inputs,
            outputs=ctx.outputs,
            execution_providers=list(ctx.profile.runtime.execution_providers) if ctx.runtime == "onnxruntime" else ["CPU"],
            preprocess=ctx.preprocess,
            postprocess=ctx.postprocess,
            labels=list(o.labels) if o.labels else None,
            selftest=selftest,
            measurements=measurements,
            source={"format": ctx.imported.source_format, "sha256": ctx.imported.source_sha256, "opset": ctx.imported.opset},
            created_by=f"edgekit-converter {__version__}",
        )
        ctx.bundle_path = write_bundle(o.out, manifest, files, key)
        return {"bundle": str(ctx.bundle_path), "bundle_bytes": ctx.bundle_path.stat().st_size, **ctx.measurements["sizes"]}


def _to_bundle_layout(array: np.ndarray, spec) -> np.ndarray:
    from edge_agent.pipeline.preprocess import to_layout

    return to_layout(array, spec.source_layout, spec.layout)


def _default_name(source: str) -> str:
    base = Path(source.rsplit(":", 1)[0] if ".py:" in source else source).stem
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in base).strip("-._")
    return cleaned or "model"
