#!/usr/bin/env bash
# Fresh machine -> whole test suite. Creates .venv, installs edgekit with every extra it tests,
# makes sure Mosquitto is there (apt-get), then runs pytest. Exit code = pytest's (5 "no tests" -> 1).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup_env.sh
# Two pytest-xdist workers on a machine with 2 or more cores (the suite mostly waits on brokers, servers and child
# processes: 13 min on a quiet 2-core machine, 33-35 in one process), a test file per worker at a time (tests/conftest.py
# keeps files that share a machine resource on one worker). EDGEKIT_TEST_WORKERS=N chooses, 0 = one process. Ignored
# when the caller chose (-n/--numprocesses/-p no:xdist), only collects, or names a single test.
cores=$(nproc 2>/dev/null || echo 1)
default_workers=$(( cores >= 2 ? 2 : 0 ))
workers=()
if [ "${EDGEKIT_TEST_WORKERS:-$default_workers}" != "0" ]; then
  workers=(-n "${EDGEKIT_TEST_WORKERS:-$default_workers}" --dist loadfile)
  for a in "$@"; do
    case "$a" in -n|-n*|--numprocesses*|no:xdist|--co|--collect-only|*::*) workers=() ;; esac
  done
fi
"$PY" -m pytest --durations=15 "${workers[@]}" "$@" || rc=$?
rc=${rc:-0}
if [ "$rc" -eq 5 ]; then echo "test.sh: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
