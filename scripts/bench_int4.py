"""Benchmark: fp32 vs int8-dynamic vs int4-weight on MatMul-heavy models, side by side in one run.

Two models built here in plain torch with fixed random weights (weights dominate their size), and a real one:
  mlp          1024 -> 2048 -> 2048 -> 2048 -> 1000, GELU (torch exports the Linears as Gemm)
  transformer  4 pre-norm encoder blocks, d=512, 8 heads, FFN 2048, 32 tokens, mean-pool -> 1000
  rec          PP-OCRv4 text recogniser from the rapidocr-onnxruntime wheel (Conv backbone + SVTR MatMuls +
               a 120x6625 CTC head), 1x3x48x320, on real text-line crops from scikit-image (--models ...,rec)
Each is converted by edge-convert (profile x86-64-cpu) to fp32, int8-dynamic and int4-weight bundles;
the bundles are verified and loaded by the agent's ONNX Runtime backend and timed at batch 1,
interleaved in blocks with a pause between sessions, same thread count. int4-weight with
accuracy_level 0 (fp32 compute, same file otherwise) is timed too: it is why the default is 4.
Agreement with the fp32 model: top-1 on generated inputs (mlp, transformer), per-timestep argmax on
real text lines (rec); plus the mean cosine of the outputs.

    python scripts/bench_int4.py [--runs 200] [--threads 2] [--samples 128] [--models mlp,transformer,rec] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from converter.options import ConvertOptions  # noqa: E402
from converter.pipeline import convert  # noqa: E402
from converter.onnx.weight_only_int4 import quantize_weight_only  # noqa: E402
from edge_agent.bundle import TrustStore, generate_keypair, verify_bundle  # noqa: E402
from edge_agent.runtimes import load_session  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quant import time_interleaved  # noqa: E402  - one timing method for all benches

PRECISIONS = ("fp32", "int8-dynamic", "int4-weight")


def build(name: str):
    """(torch module, example input) for a benchmark model, fixed random weights."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name == "mlp":
        h = 2048
        model = nn.Sequential(nn.Linear(1024, h), nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, h), nn.GELU(),
                              nn.Linear(h, 1000))
        return model.eval(), torch.zeros(1, 1024)

    class Block(nn.Module):
        def __init__(self, d: int = 512, heads: int = 8, ff: int = 2048) -> None:
            super().__init__()
            self.heads = heads
            self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(self.n1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
            x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
            return x + self.ff(self.n2(x))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.Sequential(*[Block() for _ in range(4)])
            self.norm, self.head = nn.LayerNorm(512), nn.Linear(512, 1000)

        def forward(self, x):
            return self.head(self.norm(self.blocks(x)).mean(1))

    return Encoder().eval(), torch.zeros(1, 32, 512)


def export(name: str, path: Path) -> tuple[int, ...]:
    import torch

    model, example = build(name)
    with torch.no_grad():
        torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False, input_names=["x"],
                          output_names=["logits"], verbose=False)
    return tuple(example.shape)


def source(name: str, work: Path, samples: int) -> tuple[Path, list[int] | None, np.ndarray, str]:
    """(model file, --input-shape to pin or None, eval inputs, task) for a benchmark model."""
    if name == "rec":  # real PP-OCRv4 recogniser on real text-line crops (scikit-image), as in bench_accuracy.py
        from examples import ocr_samples as ocr

        shape = [1, 3, 48, 320]
        return ocr.model_path("rec"), shape, ocr.line_crops(samples, tuple(shape[1:]), 3, rotate_half=False)[0], "sequence"
    src = work / f"{name}.onnx"
    shape = export(name, src)
    x = np.random.default_rng(1).standard_normal((samples, *shape[1:])).astype(np.float32)
    return src, None, x, "classification"


def bench_model(name: str, work: Path, key: Path, pub: Path, args) -> dict:
    from converter.accuracy.metrics import score

    src, pin, x, task = source(name, work, args.samples)
    shape = pin or [1, *x.shape[1:]]
    np.savez(work / f"{name}.eval.npz", x=x)
    sessions, rows = {}, {}
    trust = TrustStore.from_paths([pub])
    for prec in PRECISIONS:
        out = work / f"{name}-{prec}.edgebundle"
        t0 = time.perf_counter()
        convert(ConvertOptions(source=str(src), profile="x86-64-cpu", out=out, key=key, evaluation=work / f"{name}.eval.npz",
                               precision=prec, max_accuracy_drop=100.0, min_agreement=0.0, min_cosine=-1.0,
                               bench_runs=0, calibration_samples=args.samples, pass_options={"input_shape": pin}))
        seconds = time.perf_counter() - t0
        vb = verify_bundle(out, trust, unpack_to=work / f"{name}-{prec}")
        model_file = vb.unpacked_to / vb.manifest.model_file
        sessions[prec] = load_session(vb.unpacked_to, vb.manifest, threads=args.threads)
        rows[prec] = {"model_bytes": model_file.stat().st_size, "convert_seconds": round(seconds, 1)}
        if prec == "int4-weight":  # same weights, accuracy_level 0 (fp32 compute): the alternative default
            alt = work / f"{name}-int4-acc0"
            (alt / vb.manifest.model_file).parent.mkdir(parents=True)
            quantize_weight_only(work / f"{name}-fp32" / vb.manifest.model_file, alt / vb.manifest.model_file,
                                 accuracy_level=0)
            sessions["int4-weight acc0"] = load_session(alt, vb.manifest, threads=args.threads)
            rows["int4-weight acc0"] = {"model_bytes": (alt / vb.manifest.model_file).stat().st_size, "convert_seconds": None}
    outputs = {k: np.concatenate([s.run({"x": x[i:i + 1]})[0] for i in range(len(x))]) for k, s in sessions.items()}
    for k, y in outputs.items():
        sc = score(outputs["fp32"], y, task)  # classification: top-1; sequence: per-timestep argmax
        rows[k].update(agreement=round(sc["agreement"], 4), mean_cosine=round(sc["mean_cosine"], 5))
    feed = {"x": x[:1]}
    lat = time_interleaved({k: (lambda s=s: s.run(feed)) for k, s in sessions.items()}, args.runs, args.warmup)
    for k, r in rows.items():
        r.update(p50_ms=lat[k]["p50_ms"], p90_ms=lat[k]["p90_ms"])
        r["size_vs_fp32"] = round(r["model_bytes"] / rows["fp32"]["model_bytes"], 3)
        r["speedup_vs_fp32"] = round(rows["fp32"]["p50_ms"] / r["p50_ms"], 2)
    return {"input_shape": list(shape), "task": task, "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=128, help="generated inputs for the agreement figures")
    ap.add_argument("--models", default="mlp,transformer,rec", help="mlp, transformer, rec (rec needs rapidocr-onnxruntime)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import onnxruntime as ort

    results = {"onnxruntime": ort.__version__, "threads": args.threads, "runs": args.runs, "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench-int4-") as tmp:
        work = Path(tmp)
        key, pub = generate_keypair(work / "keys")
        for name in args.models.split(","):
            results["models"][name] = bench_model(name, work, key, pub, args)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"onnxruntime {results['onnxruntime']}, {args.threads} threads, batch 1, {args.runs} interleaved runs")
    for name, res in results["models"].items():
        print(f"\n{name} (input {'x'.join(map(str, res['input_shape']))}, agreement: {res['task']})")
        print(f"  {'precision':<18}{'size MB':>9}{'vs fp32':>9}{'p50 ms':>9}{'p90 ms':>9}{'speedup':>9}{'agreement':>11}{'cosine':>9}")
        for k, r in res["rows"].items():
            print(f"  {k:<18}{r['model_bytes'] / 1e6:>9.2f}{r['size_vs_fp32']:>8.3f}x{r['p50_ms']:>9.3f}{r['p90_ms']:>9.3f}"
                  f"{r['speedup_vs_fp32']:>8.2f}x{r['agreement']:>11.3f}{r['mean_cosine']:>9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
