#!/usr/bin/env bash
# One-shot GPU training run: continue the committed learning curve (training_state/curve.json) on CUDA with bf16
# autocast for a fixed wall time, checkpoint every minute, and leave the weights, the checkpoint and the logs in the
# folder the caller names (the caller collects it; evaluate it afterwards on any machine with `dpm curve eval`).
#
#   scripts/gpu_train.sh OUT [--minutes 7.5] [--batch 64] [--workers N] [--state S] [--device cuda] [-- CURVE ARGS]
#
# Runs from a plain checkout (no `make setup`): PYTHONPATH is the repository. The machine must have torch, numpy,
# OpenCV, safetensors and tqdm; other wheels (moderngl + glcontext for the EGL renderer; without them the generator
# falls back to the numpy ray caster) are installed from gpu_wheels/ when present (fetch them here with
# `scripts/gpu_train.sh --fetch-wheels` and carry the folder). Exit status: that of the training.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}

if [ "${1:-}" = "--fetch-wheels" ]; then        # on a machine with network: wheels for the GPU machine's Pythons
  mkdir -p "$ROOT/gpu_wheels"
  for v in 3.10 3.11 3.12 3.13; do
    "$PY" -m pip download -q --only-binary=:all: --python-version "$v" --platform manylinux2014_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d "$ROOT/gpu_wheels" moderngl glcontext \
      || echo "[gpu_train] no wheels for Python $v" >&2
  done
  du -sh "$ROOT/gpu_wheels"; exit 0
fi

OUT=${1:?usage: scripts/gpu_train.sh OUT [--minutes M] [--batch B] [--workers N] [--state S] [-- CURVE ARGS]}
shift
MINUTES=7.5; BATCH=64; WORKERS=""; STATE="$ROOT/training_state/curve.json"; DEVICE=cuda; LR=4e-4; THREADS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES=$2; shift 2;;
    --batch) BATCH=$2; shift 2;;
    --workers) WORKERS=$2; shift 2;;
    --state) STATE=$2; shift 2;;
    --device) DEVICE=$2; shift 2;;
    --lr) LR=$2; shift 2;;
    --threads) THREADS=$2; shift 2;;
    --) shift; break;;
    *) echo "gpu_train.sh: unknown option $1" >&2; exit 2;;
  esac
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/gpu_train.log"
log() { echo "[gpu_train $(date -u +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }
CORES=$(nproc)
# data workers: every core but the trainer's (its threads + one for the CUDA launch/collation)
[ -n "$WORKERS" ] || WORKERS=$(( CORES > THREADS + 2 ? CORES - THREADS - 1 : 1 ))

if [ -d "$ROOT/gpu_wheels" ] && ls "$ROOT"/gpu_wheels/*.whl >/dev/null 2>&1; then
  log "installing carried wheels from gpu_wheels/ (no index)"
  "$PY" -m pip install -q --no-index --find-links "$ROOT/gpu_wheels" --user moderngl glcontext >>"$LOG" 2>&1 \
    || log "carried wheels did not install (the generator uses the numpy ray caster)"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=$THREADS PYTHONUNBUFFERED=1
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG" >&2
import torch, numpy, cv2, safetensors, tqdm
from dpm_ros.synthetic.render import gl_available
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", "| GL renderer:", gl_available())
EOF
log "training: device $DEVICE, batch $BATCH, $WORKERS workers, $THREADS threads, $MINUTES min, out $OUT"
set +e
( cd "$ROOT" && "$PY" -m dpm_ros.cli curve continue --foreground --no-progress --nice 0 --state "$STATE" \
    --runs "$OUT/runs" --device "$DEVICE" --precision bf16 --batch "$BATCH" --lr "$LR" --workers "$WORKERS" \
    --threads "$THREADS" --ckpt-minutes 1 --max-minutes "$MINUTES" --export "$OUT/model.safetensors" "$@" ) \
  > "$OUT/result.json" 2>>"$LOG"
rc=$?
set -e
cat "$OUT/result.json" >&2 || true
# throughput summary from the trainer's log (pairs/s, data wait share, generator CPU per pair)
"$PY" - "$OUT" "$BATCH" <<'EOF' 2>&1 | tee -a "$LOG" >&2 || true
import json, sys, glob
out, batch = sys.argv[1], int(sys.argv[2])
rows = [json.loads(l) for f in glob.glob(out + "/runs/*/log.jsonl") for l in open(f) if l.strip()]
if len(rows) > 2:
    a, b = rows[1], rows[-1]
    steps = b["step"] - a["step"]
    wall = b["wall_s"] - a["wall_s"]
    parts = {k: sum(r[k] for r in rows[1:]) for k in ("t_data", "t_fwd", "t_loss", "t_bwd", "t_opt")}
    tot = sum(parts.values()) or 1.0
    print(json.dumps({"steps": b["step"], "pairs_per_s": round(steps * batch / max(wall, 1e-9), 1),
                      "share_of_logged_steps": {k: round(v / tot, 3) for k, v in parts.items()},
                      "generator_cpu_s_per_pair": round(sum(r["gen_cpu_s"] for r in rows) / (len(rows) * batch), 5),
                      "last_loss": b["loss"]}))
EOF
cp "$OUT"/runs/*/log.jsonl "$OUT/log.jsonl" 2>/dev/null || true
log "done (exit $rc): $OUT/model.safetensors, $OUT/runs/*/last.pt, $OUT/log.jsonl"
exit $rc
