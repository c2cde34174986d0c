#!/usr/bin/env bash
# The ROS 2 Jazzy part of the suite (test/conftest.py PARTS["jazzy"]: the node over DDS with the oracle and the
# shipped ONNX model, dpm replay/play/record, ros2 launch, ONNX Runtime without torch) in .venv-jazzy (Python 3.12),
# DDS on loopback. Skips, saying why, only where no Python 3.12 exists. Extra args go to pytest.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
exec "$ROOT/scripts/test_part.sh" jazzy 3.12 "${DPM_JAZZY_VENV:-$ROOT/.venv-jazzy}" "ROS 2 Jazzy's Python" "$@"
