#!/usr/bin/env bash
# The pure core's tests (test/conftest.py PARTS["py310"]: geometry, pairing, pipeline, bags, the ONNX Runtime engine)
# on Python 3.10 with the oldest libraries of a Humble / JetPack 6 robot (.venv-py310, requirements-py310.txt).
# No ROS, no torch. Skips, saying why, only where no Python 3.10 exists. Extra args go to pytest.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
exec "$ROOT/scripts/test_part.sh" py310 3.10 "${DPM_PY310_VENV:-$ROOT/.venv-py310}" "Humble's Python" "$@"
