"""``dpm curve``: one learning curve over many runs, continued from what is committed (training_state/curve.json).

    dpm curve continue            # in the background at nice 19; checkpoints every 3 min and on SIGTERM
    dpm curve stop                # SIGTERM to the background run (it checkpoints and exits)
    dpm curve continue            # again: resumes exactly where it stopped
    dpm curve eval                # newest checkpoint on the held-out set -> one row in engines/README.md
    dpm curve eval --adopt        # ... and make it the committed state (weights + curve.json) for the next clone
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path


def add_arguments(parser) -> None:
    from dpm_ros.training.curve import DEFAULT_CARD, DEFAULT_RUNS, DEFAULT_STATE
    parser.add_argument("action", choices=("continue", "stop", "eval"), help="what to do")
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help="committed curve state (JSON)")
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="where segment run folders live")
    g = parser.add_argument_group("continue")
    g.add_argument("--foreground", action="store_true", help="train in this process (default: background)")
    g.add_argument("--nice", type=int, default=19, help="scheduling niceness of the training process")
    g.add_argument("--steps", type=int, default=None, help="segment length in steps (default: the state's recipe)")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in this call")
    g.add_argument("--max-minutes", type=float, default=None, help="stop after this much wall time (checkpointed)")
    g.add_argument("--export", type=Path, default=None, help="also write the weights here (.safetensors) at the end")
    g.add_argument("--batch", type=int, default=None)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--warmup", type=int, default=None)
    g.add_argument("--height", type=int, default=None, help="training resolution (default: the weights')")
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--threads", type=int, default=None)
    g.add_argument("--workers", type=int, default=None)
    g.add_argument("--ckpt-minutes", type=float, default=None)
    g.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=None)
    g.add_argument("--device", default="auto")
    g.add_argument("--no-progress", action="store_true")
    g = parser.add_argument_group("eval")
    g.add_argument("--checkpoint", type=Path, default=None, help="default: the newest runs/curve/*/last.pt")
    g.add_argument("--pairs", type=int, default=200, help="held-out pairs")
    g.add_argument("--card", type=Path, default=DEFAULT_CARD, help="model card whose learning-curve table grows")
    g.add_argument("--cache-dir", default="runs/eval_cache")
    g.add_argument("--adopt", action="store_true",
                   help="also write the checkpoint's weights over the state's weights and advance curve.json")


def _overrides(args) -> dict:
    return {k: getattr(args, k) for k in ("steps", "batch", "lr", "warmup", "height", "width", "threads",
                                          "workers", "ckpt_minutes", "precision")}


def _background(args) -> int:
    from dpm_ros.training.curve import load_state, segment_dir
    out = segment_dir(load_state(args.state), args.runs)
    out.mkdir(parents=True, exist_ok=True)
    pid_file = out / "pid"
    from dpm_ros.training.curve import is_curve_process
    if pid_file.exists() and is_curve_process(int(pid_file.read_text() or 0)):
        raise ValueError(f"a continuation is already running (pid {pid_file.read_text().strip()}; dpm curve stop)")
    argv = [a for a in sys.argv[1:]] if sys.argv and "curve" in sys.argv else None
    if argv is None:
        raise ValueError("background start needs the dpm command line (use --foreground from Python)")
    cmd = [sys.executable, "-m", "dpm_ros.cli", *argv, "--foreground", "--no-progress"]
    log = open(out / "train.out", "ab")
    nice = args.nice
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=lambda: os.nice(nice) if nice else None)
    pid_file.write_text(f"{proc.pid}\n")
    print(json.dumps({"pid": proc.pid, "out": str(out), "log": str(out / "train.out"),
                      "stop": "dpm curve stop"}))
    return 0


def run(args) -> int:
    from dpm_ros.training import curve
    if args.action == "continue":
        if not args.foreground:
            return _background(args)
        if args.nice and os.nice(0) < args.nice:
            os.nice(args.nice - os.nice(0))
        result = curve.continue_training(args.state, args.runs, _overrides(args), args.max_steps,
                                         progress=not args.no_progress, device=args.device,
                                         max_minutes=args.max_minutes)
        if args.export:
            from dpm_ros.training import evaluate as ev
            from dpm_ros.model import save_model
            pos = curve.checkpoint_position(Path(result["checkpoint"]))
            net = ev.load_weights(Path(result["checkpoint"]))
            result["export"] = str(save_model(net, args.export, record={"curve": pos}))
        print(json.dumps(result))
        return 0
    if args.action == "stop":
        out = curve.segment_dir(curve.load_state(args.state), args.runs)
        pid_file = out / "pid"
        pid = int(pid_file.read_text().strip() or 0) if pid_file.exists() else 0
        if not pid or not curve.is_curve_process(pid):
            print(json.dumps({"stopped": False, "reason": f"no running continuation recorded in {pid_file}"}))
            return 0
        os.kill(pid, signal.SIGTERM)
        print(json.dumps({"stopped": True, "pid": pid, "note": "it checkpoints and exits after the current step"}))
        return 0
    ckpt = args.checkpoint or curve.newest_checkpoint(args.runs)
    if args.pairs < 1:
        raise ValueError(f"--pairs must be >= 1, got {args.pairs}")
    pos = curve.checkpoint_position(ckpt)
    results = curve.evaluate_checkpoint(ckpt, args.pairs, Path(args.cache_dir) if args.cache_dir else None)
    row = curve.format_row(pos, results, ckpt)
    rows = curve.append_row(args.card, row)
    report = {"checkpoint": str(ckpt), **pos, "row": row, "rows_in_table": rows,
              "model": {k: results["model"][k] for k in ("lrel_p1_t1_pi1", "of_epe_fwd", "mask_iou_learned")},
              "static_of_epe_fwd": results["static"]["of_epe_fwd"]}
    if "parallax" in results:
        report["parallax_gain_p1_t1_pi1"] = results["parallax"]["gain"]["p1_t1_pi1"]
    if args.adopt:
        report["adopted"] = str(curve.adopt(ckpt, args.state, pos))
        report["next"] = "re-export the ONNX file: dpm export (engines/README.md)"
    print(json.dumps(report, indent=2))
    return 0
