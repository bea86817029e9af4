#!/usr/bin/env bash
# Fresh machine -> whole test suite. Creates .venv, installs edgekit with every extra it tests,
# makes sure Mosquitto is there (apt-get), then runs pytest. Exit code = pytest's (5 "no tests" -> 1).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup_env.sh
# One process by default. EDGEKIT_TEST_WORKERS=2 runs pytest-xdist workers (24-26 min instead of 33-35 on 2 cores),
# but two of three such runs had one failure each (an ejabberd cluster beside another, an agent slow to stop under
# load): not the default until those are understood. Ignored when the caller chose (-n/--numprocesses/-p no:xdist),
# only collects, or names a single test.
workers=()
if [ "${EDGEKIT_TEST_WORKERS:-0}" != "0" ]; then
  workers=(-n "${EDGEKIT_TEST_WORKERS}" --dist loadfile)
  for a in "$@"; do
    case "$a" in -n|-n*|--numprocesses*|no:xdist|--co|--collect-only|*::*) workers=() ;; esac
  done
fi
"$PY" -m pytest --durations=15 "${workers[@]}" "$@" || rc=$?
rc=${rc:-0}
if [ "$rc" -eq 5 ]; then echo "test.sh: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
