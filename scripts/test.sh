#!/usr/bin/env bash
# Fresh machine -> whole test suite. Creates .venv, installs edgekit with every extra it tests,
# makes sure Mosquitto is there (apt-get), then runs pytest. Exit code = pytest's (5 "no tests" -> 1).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup_env.sh
"$PY" -m pytest "$@" || rc=$?
rc=${rc:-0}
if [ "$rc" -eq 5 ]; then echo "test.sh: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
