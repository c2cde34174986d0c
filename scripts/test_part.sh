#!/usr/bin/env bash
# One extra part of the suite (test/conftest.py PARTS[PART]) in its own venv with its own Python, DDS on loopback.
# Usage: scripts/test_part.sh PART PYTHON_VERSION VENV WHY [pytest args...]; scripts/test_jazzy.sh and
# scripts/test_py310.sh call it. Skips, saying why, only where no interpreter of that version exists.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PART=$1 PYVER=$2 VENV=$3 WHY=$4
shift 4
# shellcheck source=find_python.sh
. "$ROOT/scripts/find_python.sh"
if ! find_python "$PYVER" > /dev/null; then
  echo "[test-$PART] SKIPPED: no Python $PYVER interpreter on this machine ($WHY; set DPM_PYTHON${PYVER//./})"
  exit 0
fi
[ -x "$VENV/bin/python" ] || { echo "[test-$PART] $VENV missing: run scripts/setup_$PART.sh (make test does)"; exit 1; }
DPM_VENV=$VENV exec "$ROOT/scripts/test.sh" --part "$PART" "$@"
