#!/usr/bin/env bash
# The pure core's tests (test/conftest.py PARTS["py310"]: geometry, pairing, pipeline, bags, the ONNX Runtime engine)
# on Python 3.10 with the oldest libraries of a Humble / JetPack 6 robot (.venv-py310, requirements-py310.txt).
# No ROS, no torch. Skips, saying why, only where no Python 3.10 exists. Extra args go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=find_python.sh
. "$ROOT/scripts/find_python.sh"
if ! find_python 3.10 > /dev/null; then
  echo "[test-py310] SKIPPED: no Python 3.10 interpreter on this machine (Humble's Python; set DPM_PYTHON310)"
  exit 0
fi
VENV=${DPM_PY310_VENV:-$ROOT/.venv-py310}
[ -x "$VENV/bin/python" ] || { echo "[test-py310] $VENV missing: run scripts/setup_py310.sh (make test does)"; exit 1; }
DPM_VENV=$VENV exec "$ROOT/scripts/test.sh" --part py310 "$@"
