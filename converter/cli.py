"""`edge-convert`: turn a trained model into a signed bundle tuned for a device profile."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from device_profiles import FORMATS
from edge_agent import __version__
from edge_agent.errors import report_failure, run_main, unwind_on_sigterm
from edge_agent.finite_json import dumps
from edge_agent.sizes import human_size

from .errors import UsageError, exit_codes_help
from .options import whole_number

log = logging.getLogger("converter")
PLAIN_PROGRESS_AFTER_S = 5.0

CONVERT_EPILOG = """examples:
  edge-convert convert model.onnx --profile raspberry-pi-4 \\
      --calibration calib.npz --eval eval.npz --key keys/signing.key --out model.edgebundle
  edge-convert convert my_model.py:build --input-shape 1x3x224x224 --profile jetson-orin-nano \\
      --eval eval.npz --key keys/signing.key --out model.edgebundle
  edge-convert convert model.keras --profile raspberry-pi-4 --calibration calib.npz --eval eval.npz \\
      --key keys/signing.key --out model.edgebundle          (TFLite full int8, float I/O)
  edge-convert convert model.onnx --format auto --profile raspberry-pi-4 --calibration calib.npz \\
      --eval eval.npz --key keys/signing.key --out model.edgebundle   (fastest of TFLite/ONNX that passes)

data files: an .npz whose arrays are named after the model's inputs, first axis = sample
(eval adds an integer `labels` array; a single-input model also takes one .npy), a folder of images (eval: one
sub-folder per class, named by class index or label name) or a video, preprocessed with --color/--scale/--mean/--std.
PyTorch factories export with --input-shape in the data's dtype; a forward(x, y) takes its example from the .npz.
""" + exit_codes_help()



def cmd_profiles_list(args: argparse.Namespace) -> tuple[Any, str]:
    from device_profiles import list_profiles, load_profile

    profiles = [load_profile(n) for n in list_profiles()]
    rows = [{"name": p.name, "arch": p.hardware.arch, "accelerator": p.hardware.accelerator,
             "recipe": p.precision.recipe, "formats": list(p.runtime.formats), "description": p.description} for p in profiles]
    width = max(len(r["name"]) for r in rows)
    text = "\n".join(f"{r['name']:<{width}}  {r['arch']:<8} {r['accelerator']:<5} {r['recipe']:<12} {r['description']}" for r in rows)
    return rows, text


def cmd_profiles_show(args: argparse.Namespace) -> tuple[Any, str]:
    from device_profiles import load_profile

    p = load_profile(args.profile)
    d = p.to_dict()
    return d, json.dumps(d, indent=2)


def cmd_keygen(args: argparse.Namespace) -> tuple[Any, str]:
    from edge_agent.bundle import generate_keypair, key_id, load_public_key

    if args.out.exists() and not args.out.is_dir():  # was "[Errno 17] File exists: 'signing.key'"
        raise UsageError(f"--out {args.out} is a file: give the folder to write signing.key and signing.pub into")
    try:
        priv, pub = generate_keypair(args.out, overwrite=args.force)
    except FileExistsError as exc:  # a key pair is never replaced by accident: the user decides (--force)
        raise UsageError(str(exc)) from None
    except OSError as exc:  # a folder that cannot be made or written: was a bare errno line with exit 1
        raise UsageError(f"--out {args.out}: cannot write the key pair there ({exc.strerror or exc})") from None
    kid = key_id(load_public_key(pub))
    return ({"private_key": str(priv), "public_key": str(pub), "key_id": kid},
            f"wrote {priv} (keep it secret) and {pub} (copy it to devices); key id {kid}")


def _read_labels(path: Path) -> list[str]:
    """One class name per line, UTF-8; a byte-order mark (Windows Notepad) is not part of the first name (it was:
    '\ufeffcat' in the manifest, and a class folder named cat/ no longer matched it)."""
    try:
        return [line.strip() for line in Path(path).read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--labels {path}: cannot read it ({exc.__class__.__name__}: {exc})") from None


def _check_eval_labels(eval_labels: Path | None, evaluation: Path | None) -> None:
    """--eval-labels without --eval, or naming nothing, was ignored without a word (the gate then had no mAP)."""
    if eval_labels is None:
        return
    if evaluation is None:
        raise UsageError(f"--eval-labels {eval_labels} labels the --eval images: give --eval IMAGE_FOLDER too")
    if not Path(eval_labels).exists():
        raise UsageError(f"--eval-labels {eval_labels} does not exist: give a COCO-style JSON file or a folder of "
                         "YOLO .txt files")


def _refuse_overwriting_inputs(args: argparse.Namespace, report: Path) -> None:
    """--out naming the source model (or data, key) replaced it with the bundle, and --report naming --out replaced
    the bundle with its report, both with exit 0: refused before anything is read."""
    model = args.model.rsplit(":", 1)[0] if ".py:" in args.model else args.model
    inputs = {"the model": model, "--calibration": args.calibration, "--eval": args.eval, "--key": args.key,
              "--labels": args.labels, "--eval-labels": args.eval_labels, "--out": args.out}
    for flag, target in (("--out", Path(args.out)), ("--report", Path(report))):
        for what, path in inputs.items():
            if path is not None and what != flag and Path(path).resolve() == target.resolve():
                raise UsageError(f"{flag} {target} is {what}: writing there would replace it; give another path")


def _prepare_folders(out: Path, report: Path | None) -> None:
    """The folders of --out and --report exist before the conversion runs (a missing one failed after every pass,
    at the last write, with a bare 'No such file or directory'). The bundle is renamed into place, so --out must
    not be a device or a pipe (--out /dev/null replaced the device with a file); --report is written in place."""
    if Path(out).exists() and not Path(out).is_file() and not Path(out).is_dir():
        raise UsageError(f"{out} is not a regular file (a device or a pipe): give a file path to write")
    for path in (Path(out), Path(report) if report else None):
        if path is None:
            continue
        if path.is_dir():
            raise UsageError(f"{path} is a folder: give the file to write, e.g. {path / 'model.edgebundle'}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create the folder of {path}: {exc.strerror or exc}") from None


def cmd_convert(args: argparse.Namespace) -> tuple[Any, str]:
    from .accuracy.budget import out_of_range, parse_budget
    from .options import ConvertOptions
    from .passes import declared_options
    from .pipeline import convert, failure_report

    budget: dict[str, float] = {}
    try:
        if args.accuracy_budget:
            budget = parse_budget(args.accuracy_budget)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for flag, key, value in (("--min-agreement", "agreement", args.min_agreement),
                             ("--max-accuracy-drop", "top1-drop", args.max_accuracy_drop)):
        if value is not None and out_of_range(key, value):
            raise UsageError(f"{flag} {value:g}: {out_of_range(key, value)}")
    labels = _read_labels(args.labels) if args.labels else None
    _check_eval_labels(args.eval_labels, args.eval)
    report_path = args.report or Path(str(args.out) + ".report.json")
    _refuse_overwriting_inputs(args, report_path)
    _prepare_folders(args.out, args.report)
    options = ConvertOptions(
        source=args.model, profile=args.profile, out=args.out, key=args.key, calibration=args.calibration,
        evaluation=args.eval, eval_labels=args.eval_labels, calibration_samples=args.calibration_samples,
        eval_samples=args.eval_samples, precision=args.precision, labels=labels,
        max_accuracy_drop=budget.get("max_top1_drop", args.max_accuracy_drop), max_map_drop=budget.get("max_map_drop"),
        min_agreement=budget.get("min_agreement", args.min_agreement), min_cosine=budget.get("min_cosine", 0.99),
        force=args.force, bench_runs=args.bench_runs, reproducible=args.reproducible, command=tuple(args.argv),
        pass_options={name: getattr(args, name) for name in declared_options() if hasattr(args, name)},
    )
    bar = None
    if not (args.json or args.quiet) and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=7, desc="convert", unit="pass", file=sys.stderr, leave=False)

    # CI logs (no TTY): one line per pass instead of a bar, once the conversion has run a few seconds
    # (so a quick conversion or a quick refusal stays one line)
    plain = not (args.json or args.quiet) and bar is None
    started = time.monotonic()

    def on_pass(name: str, i: int, total: int) -> None:
        log.info("running pass %s", name)
        if plain and time.monotonic() - started > PLAIN_PROGRESS_AFTER_S:
            print(f"edge-convert: [{i + 1}/{total}] {name} ({time.monotonic() - started:.0f} s so far)",
                  file=sys.stderr, flush=True)
        if bar:
            bar.set_description(name)
            bar.total, bar.n = total, i  # the recipe's own length: a fixed 7 drew 'import 9/7' on a 10-pass recipe
            bar.refresh()

    try:
        result = convert(options, fmt=args.format, on_pass=on_pass)
    except Exception as exc:
        failed = failure_report(exc)
        if failed is not None:  # a refused conversion still leaves its measurements and what failed to read
            report_path.write_text(dumps(failed, indent=2, default=str) + "\n")
            log.warning("report of the failed conversion: %s", report_path)
        raise
    finally:
        if bar:
            bar.close()
    report = result.to_dict()
    report_path.write_text(dumps(report, indent=2, default=str) + "\n")  # a model answering NaN: its figures null
    return report, summary_text(report, report_path)


def summary_text(report: dict[str, Any], report_path: Path) -> str:
    m = report["measurements"]
    lines = [f"wrote {report['bundle']} ({report['format']}, {report['precision']})"]
    acc = m.get("accuracy", {})
    if acc.get("checked"):
        parts = []
        if "float_top1_accuracy" in acc:
            parts.append(f"top-1 float {acc['float_top1_accuracy']:.2%} vs converted {acc['converted_top1_accuracy']:.2%}")
        if "top1_agreement" in acc:
            parts.append(f"agreement {acc['top1_agreement']:.2%}")
        elif "agreement" in acc:
            parts.append(f"{acc.get('agreement_metric', 'agreement')} {acc['agreement']:.2%}")
        parts.append(f"cosine {acc['mean_cosine']:.4f}")
        lines.append("accuracy: " + ", ".join(parts) + f" on {acc['samples']} {acc['data']} samples"
                     + ("" if acc.get("passed") else "  [GATE FAILED, written with --force]"))
    sizes = m.get("sizes", {})
    if sizes:
        lines.append(f"size: {human_size(sizes['float_model_bytes'])} float -> {human_size(sizes['model_bytes'])} "
                     f"({sizes['size_ratio']:.2f}x)")
    lat = m.get("host_latency")
    if lat:
        lines.append(f"host latency ({lat['threads']} threads): float p50 {lat['float']['p50_ms']:.3f} ms, "
                     f"converted p50 {lat['converted']['p50_ms']:.3f} ms ({lat['speedup_vs_float']}x)")
        if lat.get("warning"):
            lines.append(f"WARNING: {lat['warning']}")
    sel = m.get("format_selection")
    if sel:
        alts = ", ".join(f"{c['format']} {c['precision']}"
                         + (f" p50 {c['host_latency']['p50_ms']:.3f} ms" if c.get("host_latency") else "")
                         + ("" if c.get("passed") else f" (could not be built: {str(c.get('reason', '?'))[:120]})"
                            if c.get("built") is False else " (failed gate)")
                         for c in m.get("candidates", []))
        lines.append(f"--format auto chose {sel['chosen']} ({sel['criterion']}): {alts}")
    lines.append(f"report: {report_path}")
    return "\n".join(lines)


def _parser_class(json_errors: bool) -> type[argparse.ArgumentParser]:
    """argparse with edgekit's failure shape: one line `edge-convert: error: ...` naming the --help to read (the convert
    command printed its 35-line usage block above the error), and with --json the JSON error object on stdout (a
    script reading stdout got nothing). Still exit 2 through SystemExit, as argparse does."""

    class Parser(argparse.ArgumentParser):
        def error(self, message: str):  # type: ignore[override]
            self.exit(report_failure("edge-convert", UsageError(f"{message} (see {self.prog} --help)"), json_errors))

    return Parser


def build_parser(json_errors: bool = False) -> argparse.ArgumentParser:
    parser = _parser_class(json_errors)(
        prog="edge-convert",
        description="Convert trained models into signed, quantized bundles tuned for a device profile.",
        epilog=exit_codes_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edge-convert {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_profiles_and_keygen(sub)
    _add_convert(sub)
    return parser


def _add_profiles_and_keygen(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profiles", help="list or show device profiles")
    psub = p.add_subparsers(dest="profiles_command", required=True, metavar="ACTION")
    q = psub.add_parser("list", help="list the built-in profiles")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_profiles_list)
    q = psub.add_parser("show", help="show one profile (name or file path), validated")
    q.add_argument("profile")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_profiles_show)

    p = sub.add_parser("keygen", help="create an Ed25519 signing key pair (signing.key, signing.pub)")
    p.add_argument("--out", type=Path, required=True, help="folder for the key files")
    p.add_argument("--force", action="store_true", help="replace an existing key pair")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keygen)


def _add_convert(sub: argparse._SubParsersAction) -> None:
    """The convert command: the global options here, each pass's own options generated from its declarations."""
    p = sub.add_parser("convert", help="convert a model into a signed bundle for a profile",
                       description="Import -> ONNX export -> clean-up -> quantize per profile -> accuracy gate -> "
                       "host benchmark -> self-test -> package and sign.",
                       epilog=CONVERT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model.onnx | file.py:factory | TorchScript .pt | exported program .pt2 | "
                   "Keras .keras/.h5 | SavedModel folder | .tflite (re-packaged as is)")
    p.add_argument("--profile", required=True, help="device profile name (see `profiles list`) or profile file")
    p.add_argument("--key", type=Path, required=True, help="Ed25519 private key (from `edge-convert keygen`)")
    p.add_argument("--out", type=Path, required=True, help="bundle file to write (.edgebundle)")
    p.add_argument("--format", default=None, choices=["auto", *FORMATS],
                   help="bundle format; auto builds the profile's formats, measures them here and packs the fastest that "
                   "passes the gate (default: onnx, or tflite for Keras/SavedModel/.tflite sources)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8-static", "int8-dynamic", "int4-weight"],
                   help="override the profile's recipe (int4-weight: 4-bit MatMul/Gemm weights for MLP/transformer-style "
                   "models, ONNX only; see docs/int4.md)")
    p.add_argument("--calibration", type=Path, help="calibration data (.npz, image folder or video file: frames sampled evenly) for int8")
    p.add_argument("--eval", type=Path, help="eval data (.npz with labels, class folders, or a video file) for the accuracy gate; an .npz "
                   "array `labels` holds class indices unless a model input is named `labels` (then it feeds it)")
    p.add_argument("--eval-labels", type=Path, help="detectors: ground-truth boxes for the --eval images, a COCO-style "
                   "JSON or a folder of YOLO .txt files; the gate then also reports mAP@0.5 of float and converted")
    p.add_argument("--calibration-samples", type=whole_number(1), default=256, help="max calibration samples used: images read from a calibration folder and frames from a video are "
                   "spread evenly over it (default 256)")
    p.add_argument("--eval-samples", type=whole_number(1), default=1000, help="max images read from an --eval folder, "
                   "spread evenly over it so each class keeps its share (default 1000; the report says how many)")
    p.add_argument("--accuracy-budget", metavar="BUDGET",
                   help="e.g. agreement:0.95 | top1-drop:1.0 | cosine:0.99 | map-drop:3 (comma-separate several); "
                   "agreement = top-1 for classifiers, matched boxes (IoU>=0.5, same class) for detectors, "
                   "IoU>=0.9 share for maps, per-timestep argmax for sequences; map-drop = mAP@0.5 points vs --eval-labels")
    p.add_argument("--max-accuracy-drop", type=float, help="max top-1 drop in points (default: profile)")
    p.add_argument("--min-agreement", type=float, help="min top-1 agreement with float, 0-1 (default: profile)")
    p.add_argument("--force", action="store_true", help="write the bundle even when the accuracy gate fails")
    p.add_argument("--labels", type=Path, help="text file, one class name per line")
    p.add_argument("--bench-runs", type=whole_number(0), default=50, help="host benchmark runs per model (0 to skip; "
                   "--format auto then packs the first passing format in the profile's order)")
    p.add_argument("--reproducible", action="store_true",
                   help="no wall-clock figure goes into or decides the bundle (host latency stays in the report; "
                   "the measured op-set choice goes by agreement alone), so identical inputs give a byte-identical bundle")
    p.add_argument("--report", type=Path, help="conversion report JSON (default: OUT.report.json)")
    p.add_argument("--json", action="store_true", help="print the conversion report as JSON")
    # also after the command (`convert ... -v` was 'unrecognized arguments'); absent here, the global value stands
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    p.set_defaults(func=cmd_convert)
    add_pass_options(p)


def add_pass_options(parser: argparse.ArgumentParser) -> None:
    """One flag per option the passes declare (converter.passes), grouped by the passes that read it."""
    from .passes import PASSES, declared_options

    groups: dict[tuple[str, ...], argparse._ArgumentGroup] = {}
    for name, (option, readers) in declared_options().items():
        flag = option.cli_flag(name)
        if flag is None:
            continue  # API-only option
        key = tuple(readers)
        if key not in groups:
            doc = (PASSES[readers[0]].__doc__ or "").strip().splitlines()[:1] if len(key) == 1 else [
                f"read by the {' and '.join(key)} passes alike"]
            groups[key] = parser.add_argument_group(" / ".join(key) + " pass options", doc[0] if doc else None)
        if option.type_ is bool:  # an on/off switch
            groups[key].add_argument(flag, dest=name, action="store_true", default=argparse.SUPPRESS, help=option.description)
            continue
        groups[key].add_argument(flag, dest=name, type=option.type_, choices=option.choices, metavar=option.metavar,
                                 default=argparse.SUPPRESS, help=option.description,
                                 **({"action": "append"} if option.repeat else {}))


@contextlib.contextmanager
def _write_failures_named() -> Iterator[None]:
    """A full disk (the bundle, the report or the work files) was '[Errno 28] No space left on device' with exit 1,
    'a bug to report'; it is exit 18 (docs/exit-codes.md: not enough disk space) saying where to make room. A folder
    the user may not write to (or a read-only one) is a usage error naming the file."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and exc.filename:
            raise UsageError(f"cannot write {exc.filename}: {exc.strerror}: give a path you may write to") from exc
        if exc.errno != errno.ENOSPC:
            raise
        from edge_agent.bundle.errors import InsufficientSpace

        where = f"writing {exc.filename}" if exc.filename else "converting"
        raise InsufficientSpace(f"disk full while {where}: free space there or in {tempfile.gettempdir()} (the work "
                                "folder; TMPDIR moves it) and run again") from exc


def main(argv: list[str] | None = None) -> int:
    with unwind_on_sigterm():
        return _main(argv)


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(json_errors="--json" in argv).parse_args(argv)
    args.argv = argv  # the gate prints the command that would accept a miss
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.verbose < 2:  # TensorFlow's C++ log (oneDNN notes, "failed call to cuInit" on a CPU host): -vv shows it
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        # torch's exporter log: 'W... torchvision is not installed. Skipping torchvision::nms' (four lines) on every
        # PyTorch export (read when torch is imported; '-onnx' = errors only)
        os.environ.setdefault("TORCH_LOGS", "-onnx")
        if not sys.warnoptions:  # library deprecation notes ('isinstance(treespec, LeafSpec) is deprecated'): not the user's
            warnings.simplefilter("ignore", FutureWarning)

    def body() -> int:
        with _write_failures_named():
            result, text = args.func(args)
        print(dumps(result, indent=2, default=str) if getattr(args, "json", False) else text)
        return 0

    return run_main("edge-convert", body, json_mode=getattr(args, "json", False), verbose=bool(args.verbose))

if __name__ == "__main__":
    sys.exit(main())
