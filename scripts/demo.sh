#!/usr/bin/env bash
# Fresh machine -> the whole product story, end to end, on embedded defaults:
# train a digits CNN, convert it for a Raspberry Pi 4 (int8), sign, verify, run, benchmark.
# Creates .venv and installs everything on first use; output goes to demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
EDGEKIT_NO_CHROMIUM=1 . scripts/setup_env.sh  # chromium is for the browser tests only
exec "$PY" scripts/demo.py "$@"
