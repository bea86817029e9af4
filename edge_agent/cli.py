"""`edge-agent`: verify, inspect, run and benchmark edgekit bundles on a device.

Thin layer: parse arguments, call the library, print a table or JSON. Every failure prints
one line `edge-agent: error: ...` to stderr and exits with the error's own code.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .bundle import read_manifest_unverified, verify_bundle
from .cli_types import whole_number
from .errors import AGENT, exit_codes_epilog, run_main
from .finite_json import dumps
from .home import AgentHome, default_home, require_trust, unpacked_bundle

log = logging.getLogger("edge_agent")


# ---- command implementations ------------------------------------------------------------


def _profile_name(home: AgentHome, args: argparse.Namespace) -> str | None:
    chosen = home.device_profile(getattr(args, "profile", None))
    if chosen is None:
        return None
    from device_profiles import load_profile

    return load_profile(chosen).name


def cmd_verify(args: argparse.Namespace, home: AgentHome) -> tuple[dict[str, Any], str]:
    trust = require_trust(home.trust_store(args.trust))
    vb = verify_bundle(args.bundle, trust, profile=_profile_name(home, args), allow_profile_mismatch=args.allow_profile_mismatch)
    m = vb.manifest
    result = {
        "ok": True,
        "bundle": str(args.bundle),
        "name": m.name,
        "version": m.version,
        "profile": m.profile,
        "format": m.format,
        "precision": m.precision,
        "signed_by": vb.key_id,
        "files": len(m.files),
        "size_bytes": m.total_size,
    }
    text = f"OK {m.name} v{m.version} ({m.format}, {m.precision}, profile {m.profile}) signed by {vb.key_id}, {len(m.files)} files verified"
    return result, text


def cmd_info(args: argparse.Namespace, home: AgentHome) -> tuple[dict[str, Any], str]:
    m = read_manifest_unverified(args.bundle)
    d = m.to_dict()
    lines = [
        f"{m.name} v{m.version}  profile={m.profile} format={m.format} runtime={m.runtime} precision={m.precision}",
        "inputs:  " + ", ".join(f"{t.name} {t.dtype}{t.shape} {t.layout}" for t in m.inputs),
        "outputs: " + ", ".join(f"{t.name} {t.dtype}{t.shape}" for t in m.outputs),
        "files:   " + ", ".join(f"{f.path} ({f.size} B)" for f in m.files),
        "(not verified: use `edge-agent verify` to check the signature)",
    ]
    return d, "\n".join(lines)


def cmd_run(args: argparse.Namespace, home: AgentHome) -> tuple[Any, str]:
    from .pipeline.postprocess import describe_raw
    from .runtimes import load_session

    trust = home.trust_store(args.trust)
    with unpacked_bundle(args.bundle, trust, _profile_name(home, args), args.allow_profile_mismatch) as vb:
        session = load_session(vb.unpacked_to, vb.manifest, threads=args.threads)
        results = [r for item in args.inputs for r in _run_one(Path(item), vb.manifest, session, args.top_k)]
    lines = []
    for r in results:
        if "outputs" in r:
            lines.append(f"{r['input']}: {describe_raw(r['outputs'])}")
            continue
        if "detections" in r:
            dets = "; ".join(f"{d['name']} {d['score']:.2f} [{', '.join(f'{v:.0f}' for v in d['box'])}]"
                             for d in r["detections"])
            lines.append(f"{r['input']}: {len(r['detections'])} detection(s){': ' + dets if dets else ''}")
            continue
        tops = ", ".join(f"{t['name']}={t['score']:.4f}" for t in r["top_k"])
        lines.append(f"{r['input']}: {r['name']} ({r['score']:.4f})  top-{len(r['top_k'])}: {tops}")
    return (results if len(results) != 1 else results[0]), "\n".join(lines)


def _run_one(item: Path, manifest: Any, session: Any, top_k: int | None) -> list[dict[str, Any]]:
    """The results for one input file: one per sample (an .npy/.npz may hold several, `FILE[i]`)."""
    from .pipeline.inputs import IMAGE_SUFFIXES, load_feed, run_rows
    from .pipeline.postprocess import classify, raw_outputs
    from .pipeline.stages import detect_in_image, detect_in_tensor

    post = manifest.postprocess
    if post is not None and post.kind == "detection" and item.suffix.lower() in IMAGE_SUFFIXES:
        return [{"input": str(item), "detections": detect_in_image(str(item), manifest, session)}]
    outputs = run_rows(session, load_feed(item, manifest), manifest)
    rows = len(outputs[0]) if outputs else 1
    if post is not None and post.kind == "detection":  # boxes in model-input pixels: a tensor has no photo
        return [{"input": str(item) if rows == 1 else f"{item}[{i}]",
                 "detections": detect_in_tensor([o[i:i + 1] for o in outputs], manifest)} for i in range(rows)]
    if post is not None and post.kind == "none":
        return [{"input": str(item), "outputs": raw_outputs(outputs, manifest)}]
    tops = classify(outputs, manifest, top_k)
    return [{"input": str(item) if len(tops) == 1 else f"{item}[{i}]", **top} for i, top in enumerate(tops)]


def cmd_bench(args: argparse.Namespace, home: AgentHome) -> tuple[dict[str, Any], str]:
    from .bench import bench_bundle, format_report

    trust = home.trust_store(args.trust)
    with unpacked_bundle(args.bundle, trust, _profile_name(home, args), args.allow_profile_mismatch) as vb:
        bar = _progress(args.runs, "bench", disable=args.json or args.quiet)
        report = bench_bundle(
            vb.unpacked_to, vb.manifest, runs=args.runs, warmup=args.warmup, threads=args.threads,
            progress=(lambda i: bar.update(1)) if bar else None,
        )
        if bar:
            bar.close()
    return report.to_dict(), format_report(report)


def cmd_doctor(args: argparse.Namespace, home: AgentHome) -> tuple[dict[str, Any], str]:
    """The same board detection `edge-device probe` runs over SSH, done here (device_profiles.facts)."""
    from device_profiles.facts import collect_local, parse_facts
    from device_profiles.matching import match_profile

    facts = parse_facts(collect_local(home.root))
    match = match_profile(facts)
    # What the agent uses now (a user's profile file, say): doctor only said what it detected, and --save
    # replaced the home's own profile file's choice without a word.
    configured = home.profile_file.read_text().strip() if home.profile_file.is_file() else ""
    if args.save and match.profile:
        home.root.mkdir(parents=True, exist_ok=True)
        home.profile_file.write_text(match.profile + "\n")
    replaced = configured if args.save and match.profile and configured and configured != match.profile else None
    result = {"ok": match.profile is not None, "profile": match.profile, "reason": match.reason,
              "facts": facts.to_dict(), "saved": bool(args.save and match.profile), "configured": configured or None,
              "replaced": replaced}
    text = "\n".join([
        match.line(facts), f"why:     {match.reason}", f"board:   {facts.model or '-'}  ({facts.os or '-'})",
        f"cpu:     {facts.cores} cores, {facts.memory_mb} MB RAM, {'?' if facts.disk_free_mb is None else facts.disk_free_mb} MB free",
        f"python:  {facts.python_version}  camera: {', '.join(facts.cameras) or 'none'}  cuda: {'yes' if facts.cuda else 'no'}",
    ] + ([f"home:    {home.profile_file} says {configured}"] if configured and not result["saved"] else [])
      + ([f"saved:   {home.profile_file}" + (f" (replaced {replaced})" if replaced else "")] if result["saved"] else []))
    return result, text


def cmd_trust_add(args: argparse.Namespace, home: AgentHome) -> tuple[dict[str, Any], str]:
    kid = home.add_trusted_key(args.key)
    return {"key_id": kid, "trusted_dir": str(home.trusted_dir)}, f"trusted key {kid} (stored in {home.trusted_dir})"


def cmd_trust_list(args: argparse.Namespace, home: AgentHome) -> tuple[list[str], str]:
    ids = sorted(home.trust_store().keys)
    return ids, "\n".join(ids) if ids else f"no trusted keys in {home.trusted_dir}"


def _progress(total: int, desc: str, disable: bool):
    if disable or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="run", leave=False, file=sys.stderr)


# ---- argument parsing ---------------------------------------------------------------------


def _common(p: argparse.ArgumentParser, trust: bool = True, profile: bool = True) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    if trust:
        p.add_argument("--trust", action="append", type=Path, metavar="PUB",
                       help="trusted public key file or folder of *.pub (repeatable); default: keys added with `trust add`")
    if profile:
        p.add_argument("--profile", help="this device's profile name or file, or 'auto' to detect it (default: EDGE_AGENT_PROFILE or the home's profile)")
        p.add_argument("--allow-profile-mismatch", action="store_true",
                       help="accept a bundle built for another profile (at your own risk)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Verify, run and benchmark edgekit model bundles on this device.",
        epilog=exit_codes_epilog(AGENT),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument("--home", type=Path, default=None, help="agent home folder (default: EDGE_AGENT_HOME or ~/.edgekit/agent)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("verify", help="check a bundle's signature, hashes, schema and profile",
                       description="Check a bundle end to end without installing it: archive, signature against trusted keys, "
                       "schema version, every file's size and SHA-256, and the target profile.")
    p.add_argument("bundle", type=Path)
    _common(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("info", help="show a bundle's manifest (unverified)")
    p.add_argument("bundle", type=Path)
    _common(p, trust=False, profile=False)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("run", help="run a bundle on image files or .npy/.npz arrays",
                       description="Verify the bundle, then run each input: images get the manifest's preprocessing; "
                       ".npy arrays are given in the source model's layout (models with several inputs: an .npz with "
                       "one array per input, named after it). JSON output names the top-1 class as `label`; bundles "
                       "whose output is not class scores (maps, sequences) give their raw outputs.")
    p.add_argument("bundle", type=Path)
    p.add_argument("inputs", type=Path, nargs="*",
                   help="image files (.png, .jpg, ...), .npy arrays or .npz files (or use --source)")
    p.add_argument("--top-k", type=whole_number(1), default=None, help="how many classes to show (default: manifest's top_k)")
    p.add_argument("--threads", type=whole_number(0), default=None, help="intra-op threads (default: runtime's choice)")
    _common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bench", help="measure latency percentiles, init time, throughput and memory",
                       description="Benchmark a bundle under its runtime on this device, like TFLite's benchmark_model: "
                       "warm-up, init time, min/mean/std/p50/p90/p99/max latency, throughput, peak RSS, model size.")
    p.add_argument("bundle", type=Path)
    p.add_argument("--runs", type=whole_number(1), default=100, help="timed runs (default 100)")
    p.add_argument("--warmup", type=whole_number(0), default=10, help="untimed warm-up runs (default 10)")
    p.add_argument("--threads", type=whole_number(0), default=None, help="intra-op threads (default: runtime's choice)")
    _common(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("doctor", help="detect this board and the built-in profile that fits it",
                       description="Read the board model, L4T release, CPU, memory, disk, cameras and Python, and name the "
                       "built-in profile that fits (the same detection `edge-device probe` runs over SSH).")
    p.add_argument("--save", action="store_true", help="write the detected profile to the home's `profile` file")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("trust", help="manage the public keys this device accepts bundles from")
    tsub = p.add_subparsers(dest="trust_command", required=True, metavar="ACTION")
    t = tsub.add_parser("add", help="trust a public key (copied into the agent home)")
    t.add_argument("key", type=Path)
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_trust_add)
    t = tsub.add_parser("list", help="list trusted key ids")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_trust_list)

    for module_name in _EXTENSIONS:
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).register(sub)
    return parser


# Modules that add subcommands: each has `register(subparsers)`; their commands' functions
# take (args, home) and return (json_result, text) like the ones above.
_EXTENSIONS = ("edge_agent.ota.cli", "edge_agent.pipeline.cli", "edge_agent.serving.cli")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "inputs", None) is not None and not any(e.startswith("-") for e in extra):
        # `run BUNDLE --trust PUB photo.png`: argparse fills `inputs` before the option and called photo.png
        # "unrecognized"; files after an option are inputs like the ones before it
        args.inputs = [*args.inputs, *map(Path, extra)]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    home = AgentHome(args.home or default_home())
    json_mode = bool(getattr(args, "json", False))

    def body() -> int:
        result, text = args.func(args, home)
        if getattr(args, "results_on_stdout", False):  # run --source: stdout carries the results as JSON lines
            if json_mode:
                print(dumps(result, default=str))  # the summary is one more line: `| jq` still reads them all
            else:
                print(text, file=sys.stderr)  # a text line among them broke every JSON-lines reader
        else:
            print(dumps(result, indent=2, default=str) if json_mode else text)  # NaN scores: null
        return getattr(args, "exit_code", 0)  # a command that printed its result and still failed (Ctrl-C: 130)

    return run_main("edge-agent", body, json_mode=json_mode, verbose=args.verbose > 0)

if __name__ == "__main__":
    sys.exit(main())
