#!/usr/bin/env bash
# The agent itself on aarch64, under QEMU user-mode emulation: `edge-agent doctor`, then verify, run and
# bench a real ONNX and a real TFLite bundle, and compare the labels with the x86 agent's.
# A FUNCTIONAL proof, not a timing: emulated figures say nothing about a real board's speed.
#
# Everything is cached in .cache/arm (first run: a few minutes; then about a minute):
#   sysroot/      Debian bookworm arm64 with python3.11, from `mmdebstrap --variant=extract` (host apt untouched)
#   sysroot/opt/edgekit   edgekit[agent] from manylinux aarch64 wheels (pip install --target --platform)
#   bundles/      ONNX + TFLite bundles for raspberry-pi-4, 16 inputs, x86 labels (scripts/arm_bundles.py)
# Facts it relies on: binfmt_misc is not mounted here, so QEMU is called explicitly; `import onnxruntime`
# segfaults unless the sysroot shows an aarch64 /proc/cpuinfo (QEMU -L serves it; otherwise the host's
# x86 one); `-cpu max` makes QEMU 7.2's SME emulation give LiteRT wrong answers, a real core model does not.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${EDGEKIT_VENV:-.venv}/bin/python
[ -x "$PY" ] || { echo "arm_proof: run ./scripts/test.sh --co -q once to create .venv" >&2; exit 1; }
bash scripts/ensure_apt.sh qemu-user-static qemu-aarch64-static
bash scripts/ensure_apt.sh mmdebstrap mmdebstrap
CACHE=.cache/arm
SYSROOT=$PWD/$CACHE/sysroot
SITE=$SYSROOT/opt/edgekit
mkdir -p "$CACHE"

if [ ! -x "$SYSROOT/usr/bin/python3.11" ]; then
  echo "arm_proof: building the arm64 sysroot (mmdebstrap)" >&2
  rm -rf "$SYSROOT.tmp"
  mmdebstrap --quiet --variant=extract --arch=arm64 \
    --include=python3.11,libpython3.11-stdlib,libstdc++6,libgcc-s1,libgomp1,zlib1g,libssl3,libffi8,libexpat1 \
    bookworm "$SYSROOT.tmp"
  mv "$SYSROOT.tmp" "$SYSROOT"
fi
# What a Raspberry Pi 4 shows (4x Cortex-A72, CPU part 0xd08): ORT's cpuinfo parser and doctor read it.
mkdir -p "$SYSROOT/proc"
: > "$SYSROOT/proc/cpuinfo"
for i in 0 1 2 3; do
  printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i" >> "$SYSROOT/proc/cpuinfo"
done
printf 'MemTotal:        3884748 kB\nMemFree:         3000000 kB\n' > "$SYSROOT/proc/meminfo"

if [ ! -f "$SITE/.installed" ] || [ pyproject.toml -nt "$SITE/.installed" ]; then
  echo "arm_proof: installing edgekit[agent] for aarch64 into the sysroot" >&2
  WH=$("$PY" -c "
from edge_device.wheelhouse import build_wheelhouse
wh = build_wheelhouse('3.11', 'aarch64', '2.36')
print(wh.folder)
print(f'aarch64 wheelhouse: {len(wh.files)} wheels, {wh.size_bytes / 1e6:.1f} MB', file=__import__('sys').stderr)")
  rm -rf "$SITE"
  plat=$("$PY" -c "from edge_device.wheelhouse import platform_tags; print(' '.join('--platform ' + t for t in platform_tags('aarch64', '2.36')))")
  "$PY" -m pip install --quiet --no-index --find-links "$WH" --target "$SITE" --only-binary=:all: $plat \
    --python-version 3.11 --implementation cp "edgekit[agent]"
  touch "$SITE/.installed"
fi

"$PY" scripts/arm_bundles.py "$CACHE/bundles"
B=$PWD/$CACHE/bundles
ARM=(qemu-aarch64-static -cpu cortex-a72 -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" -m edge_agent.cli)
export PYTHONPATH=/opt/edgekit PYTHONNOUSERSITE=1 EDGE_AGENT_HOME=$PWD/$CACHE/home
unset EDGE_AGENT_PROFILE || true

echo "== doctor (aarch64, emulated)"
"${ARM[@]}" doctor
fail=0
for fmt in onnx tflite; do
  echo "== $fmt"
  "${ARM[@]}" verify "$B/digits-$fmt.edgebundle" --trust "$B/keys/signing.pub" --profile auto
  "${ARM[@]}" run "$B/digits-$fmt.edgebundle" "$B"/inputs/*.npy --trust "$B/keys/signing.pub" --profile auto --json \
    > "$B/run-$fmt-arm.json"
  "${ARM[@]}" bench "$B/digits-$fmt.edgebundle" --trust "$B/keys/signing.pub" --profile auto --runs 20 --warmup 2 \
    --json > "$B/bench-$fmt-arm.json"
  "$PY" - "$B" "$fmt" <<'PYEOF' || fail=1
import json, sys
b, fmt = sys.argv[1], sys.argv[2]
x86 = json.load(open(f"{b}/labels-x86.json"))[fmt]
arm = [r["label"] for r in json.load(open(f"{b}/run-{fmt}-arm.json"))]
bench = json.load(open(f"{b}/bench-{fmt}-arm.json"))
same = sum(a == x for a, x in zip(arm, x86))
print(f"{fmt}: labels equal {same}/{len(x86)}; bench under emulation (not a timing): p50 "
      f"{bench['latency']['p50_ms']:.2f} ms, {bench['runtime']} {bench['runtime_version']} on {bench['provider']}, "
      f"peak RSS {bench['peak_rss_mb']:.0f} MB")
sys.exit(0 if same == len(x86) and len(arm) == len(x86) else 1)
PYEOF
done
if [ "$fail" = 0 ]; then echo "ARM PROOF: OK"; else echo "ARM PROOF: FAILED"; exit 1; fi
