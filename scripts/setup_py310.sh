#!/usr/bin/env bash
# Python 3.10 with the oldest libraries of a Humble / JetPack 6 robot: .venv-py310 holding exactly
# requirements-py310.txt (numpy 1.21, SciPy 1.8, OpenCV 4.5.4, ...), for the pure core's tests (scripts/test_py310.sh).
# No ROS, no torch: the tests import dpm_ros from the source tree. Idempotent: skipped while the file is unchanged.
# No Python 3.10 here: says so and exits 0 (the test part then skips with the same reason).
# Usage: scripts/setup_py310.sh      (DPM_PY310_VENV=/path overrides .venv-py310; DPM_PYTHON310=/path the interpreter)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${DPM_PY310_VENV:-$ROOT/.venv-py310}
REQ=$ROOT/requirements-py310.txt
log() { printf '[setup-py310] %s\n' "$*"; }
# shellcheck source=find_python.sh
. "$ROOT/scripts/find_python.sh"
t0=$(date +%s)
PY310=$(find_python 3.10) || { log "skipped: no Python 3.10 interpreter found (set DPM_PYTHON310)"; exit 0; }

[ -x "$VENV/bin/python" ] || { log "creating $VENV with $PY310"; "$PY310" -m venv "$VENV"; }
req_hash=$(sha256sum "$REQ" | cut -c1-16)
if [ "$(cat "$VENV/.dpm_requirements" 2>/dev/null)" != "$req_hash" ]; then
  log "installing the Humble/JetPack 6 minimum versions (requirements-py310.txt)"
  # PyYAML 5.4.1 (Ubuntu 22.04's) has no cp310 wheel and its setup.py fails with Cython 3: build it with Cython < 3.
  cons=$(mktemp); echo 'Cython<3' > "$cons"
  PIP_CONSTRAINT=$cons "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ" 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
  rm -f "$cons"
  echo "$req_hash" > "$VENV/.dpm_requirements"
fi
"$VENV/bin/python" - "$REQ" <<'PY' || { log "the installed versions differ from requirements-py310.txt"; exit 1; }
import sys
from importlib.metadata import version
pins = [l.split("#")[0].strip() for l in open(sys.argv[1])]
bad = [(n, v, version(n)) for n, v in (p.split("==") for p in pins if "==" in p) if version(n) != v]
if bad:
    sys.exit(f"version mismatch: {bad}")
PY
log "ready in $(( $(date +%s) - t0 )) s: $VENV (Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())'))"
