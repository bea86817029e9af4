"""Package pass: write the manifest, the model and the extra files into a signed bundle."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.bundle import Manifest, load_private_key, write_bundle

from ..errors import BundleTooLarge
from ..options import PassOption, whole_number
from .base import ConversionContext, Pass


def model_name(text: str) -> str:
    """argparse type: a name the manifest takes (checked before the conversion runs, not when it is written)."""
    from edge_agent.bundle import NAME_RE

    if not NAME_RE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r}: letters, digits, '.', '_' and '-', starting with a letter or "
                                         "digit, at most 128")
    return text


class PackagePass(Pass):
    """Write the manifest, the model and the extra files into a bundle signed with --key."""

    name = "package"

    @classmethod
    def default_config(cls) -> dict[str, PassOption]:
        return {"name": PassOption(model_name, None, "model name in the manifest (default: source file name)"),
                "version": PassOption(whole_number(1), 1, "monotonically increasing model version (default 1)",
                                      flag="--model-version")}

    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        o, cfg = ctx.options, self.config(ctx)
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
        measurements = dict(ctx.measurements)
        if o.reproducible:
            measurements.pop("host_latency", None)
        manifest = Manifest(
            name=cfg.name or _default_name(o.source),
            version=cfg.version,
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
            selftest=ctx.selftest,
            measurements=measurements,
            source={"format": ctx.imported.source_format, "sha256": ctx.imported.source_sha256, "opset": ctx.imported.opset},
            created_by=f"edgekit-converter {__version__}",
        )
        ctx.bundle_path = write_bundle(o.out, manifest, files, key)
        return {"bundle": str(ctx.bundle_path), "bundle_bytes": ctx.bundle_path.stat().st_size, **ctx.measurements["sizes"]}



def _default_name(source: str) -> str:
    base = Path(source.rsplit(":", 1)[0] if ".py:" in source else source).stem
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in base).strip("-._")
    return cleaned or "model"
