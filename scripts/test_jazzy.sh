#!/usr/bin/env bash
# The ROS 2 Jazzy part of the suite (test/conftest.py PARTS["jazzy"]: the node over DDS with the oracle and the
# shipped ONNX model, dpm replay/play/record, ros2 launch, ONNX Runtime without torch) in .venv-jazzy (Python 3.12),
# DDS on loopback. Skips, saying why, only where no Python 3.12 exists. Extra args go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=find_python.sh
. "$ROOT/scripts/find_python.sh"
if ! find_python 3.12 > /dev/null; then
  echo "[test-jazzy] SKIPPED: no Python 3.12 interpreter on this machine (ROS 2 Jazzy's Python; set DPM_PYTHON312)"
  exit 0
fi
VENV=${DPM_JAZZY_VENV:-$ROOT/.venv-jazzy}
[ -x "$VENV/bin/python" ] || { echo "[test-jazzy] $VENV missing: run scripts/setup_jazzy.sh (make test does)"; exit 1; }
DPM_VENV=$VENV exec "$ROOT/scripts/test.sh" --part jazzy "$@"
