#!/usr/bin/env bash
# One prepared validation run of the TensorRT path on a GPU machine without network (<= 9 min), writing one JSON
# report (default bench_out/gpu_validate.json): versions, the TensorRT tests, fp32/fp16 engines built then cached,
# inspector per-layer precision (fused attention), TensorRT vs ONNX Runtime errors and NaN/Inf on three pairs,
# CUDA graph vs plain run, driver peak memory, `dpm bench engine` (dpm_small; dust3r_vitl_224_linear time allowing).
# TensorRT must already be installed in the venv (or DPM_TRT_WHEELS=/dir of wheels to install offline, --no-index).
# Without a GPU the CPU-only steps run and the GPU steps are reported as skipped with the reason.
# Usage: scripts/gpu_validate.sh [--out FILE] [--budget-s 540] [--skip-tests] [--onnx engines/NAME.onnx]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=${DPM_VENV:-$ROOT/.venv}
[ -x "$VENV/bin/python" ] || { echo "gpu_validate: no venv at $VENV (run scripts/setup.sh first)" >&2; exit 2; }
if [ -n "${DPM_TRT_WHEELS:-}" ]; then
  "$VENV/bin/pip" install -q --no-index --find-links "$DPM_TRT_WHEELS" tensorrt-cu12 2>&1 | tail -3 || true
fi
# shellcheck source=ros_env.sh
. scripts/ros_env.sh   # DDS on loopback for the tests' sake (none of these start rclpy, but keep the rule)
export PYTHONUNBUFFERED=1
exec timeout --signal=TERM --kill-after=10 570 "$VENV/bin/python" -m dpm_ros.engine.gpu_validate "$@"
