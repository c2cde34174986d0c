#!/usr/bin/env bash
# Run the test suite in the project venv, DDS on loopback, message field checks on. Extra args go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=ros_env.sh
. scripts/ros_env.sh
export ROS_PYTHON_CHECK_FIELDS=1
export PYTHONUNBUFFERED=1
# no "test" here: pytest.ini testpaths=test runs the suite when no path is given, and `scripts/test.sh FILE` runs only FILE
exec "${DPM_VENV:-$ROOT/.venv}/bin/python" -m pytest -ra "$@"
