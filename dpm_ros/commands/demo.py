"""``dpm demo``: the whole product on a synthetic sequence, scored against its ground truth.

1. write a synthetic dynamic sequence with ground truth (``input.mcap``, as ``dpm synth``);
2. live (default): start ``dpm_node`` on the shipped engine, ``dpm record`` its outputs, ``dpm play`` the sequence
   with ``/clock`` — three processes over DDS on loopback; ``--offline``: ``dpm replay`` (same code, no DDS);
3. the same sequence through the oracle engine (ground truth through the pipeline: the reference column);
4. ``overview.png`` (input, depth, motion mask, objects with velocity arrows, flow, trajectory) and ``metrics.md``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

RECORD_TOPICS = ["/dpm/points", "/dpm/motion_mask", "/dpm/object_labels", "/dpm/depth", "/dpm/camera_info",
                 "/dpm/objects", "/dpm/objects/markers", "/dpm/odometry", "/tf", "/diagnostics"]


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out/)")
    parser.add_argument("--engine", default="", help="model file, or 'oracle' for ground truth "
                        "(default: the shipped engines/dpm_small.onnx)")
    parser.add_argument("--frames", type=int, default=40, help="frames in the synthetic sequence (default 40)")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate of the sequence (default 10)")
    parser.add_argument("--size", type=int, default=128, help="image height and width in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=7, help="scene seed (default 7)")
    parser.add_argument("--rate", type=float, default=0.5, help="playback speed factor of the live run (default 0.5)")
    parser.add_argument("--offline", action="store_true", help="run the node's code on the bag without DDS")
    parser.add_argument("--eps-mask", action="store_true", help="motion mask from the ε threshold of dpm_theory.md "
                        "even for a network (default for networks: the learned gate m > 0.5, use_learned_mask)")


def _tool(name: str) -> list[str]:
    exe = Path(sys.executable).with_name(name)
    if exe.is_file():
        return [str(exe)]
    return [sys.executable, "-m", "dpm_ros.cli"] if name == "dpm" else [sys.executable, "-m", "dpm_ros.ros.node"]


def _stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_live(input_bag: Path, output_bag: Path, engine: str, rate: float, out: Path, params: dict) -> None:
    """dpm_node + dpm record + dpm play as three processes over DDS (loopback)."""
    from dpm_ros.dds_env import loopback_env

    env = loopback_env(dict(os.environ))
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    logs = {name: open(out / f"{name}.log", "w") for name in ("node", "record")}
    node = subprocess.Popen(_tool("dpm_node") + [
        "--ros-args", "-p", f"engine:={engine}", "-p", "use_sim_time:=true",
        *[a for k, v in params.items() for a in ("-p", f"{k}:={str(v).lower() if isinstance(v, bool) else v}")],
        "-r", "image:=/camera/image_raw", "-r", "camera_info:=/camera/camera_info"],
        env=env, stdout=logs["node"], stderr=subprocess.STDOUT)
    record = subprocess.Popen(_tool("dpm") + ["record", str(output_bag), *RECORD_TOPICS, "--overwrite"],
                              env=env, stdout=logs["record"], stderr=subprocess.STDOUT)
    try:
        play = subprocess.run(_tool("dpm") + ["play", str(input_bag), "--clock", "--rate", str(rate),
                                              "--wait-for-subscribers", "60", "--delay", "3",
                                              "--topics", "/camera/image_raw", "/camera/camera_info"], env=env)
        if play.returncode != 0:
            raise RuntimeError(f"dpm play failed (exit {play.returncode})")
        time.sleep(4.0)  # let the node finish the last pair and the recorder write it
        if node.poll() is not None:
            raise RuntimeError(f"dpm_node exited early (code {node.returncode}); see {out / 'node.log'}")
    finally:
        _stop(record)
        _stop(node)
        for f in logs.values():
            f.close()


def run(args) -> int:
    from dpm_ros.bag import write_sequence
    from dpm_ros.demo_report import draw_overview, metrics_markdown, read_outputs, score_sequence
    from dpm_ros.config import load_config
    from dpm_ros.engine.select import default_engine_path
    from dpm_ros.ros.replay import replay_bag
    from dpm_ros.synthetic import SyntheticSequence

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    engine = args.engine
    if engine == "oracle":
        engine = ""
        use_oracle = True
    else:
        use_oracle = False
        if not engine:
            try:
                engine = str(default_engine_path())
            except ValueError as exc:
                print(f"dpm demo: {exc}\ndpm demo: running the oracle engine (ground truth) instead", file=sys.stderr)
                use_oracle = True
    seq = SyntheticSequence(seed=args.seed, n_frames=args.frames, fps=args.fps, height=args.size, width=args.size)
    input_bag = out / "input.mcap"
    print(f"[demo] writing the synthetic sequence: {input_bag} ({args.frames} frames, {args.size}×{args.size})")
    write_sequence(seq, input_bag, overwrite=True, progress=True)
    model_spec = f"oracle:{input_bag.resolve()}" if use_oracle else engine
    model_name = "oracle" if use_oracle else Path(engine).name
    # the small shipped network's ε-mask is empty on realistic motion; its learned gate m is the better mask
    node_params = {} if use_oracle or args.eps_mask else {"use_learned_mask": True}
    runs = {}
    output_bag = out / "output.mcap"
    if args.offline:
        print(f"[demo] dpm replay with {model_name} → {output_bag}")
        replay_bag(input_bag, output_bag, load_config(None, {"engine": model_spec, **node_params}), overwrite=True)
    else:
        print(f"[demo] live: dpm_node ({model_name}) + dpm record + dpm play --clock over DDS (loopback) "
              f"→ {output_bag}")
        run_live(input_bag, output_bag, model_spec, args.rate, out, node_params)
    runs[model_name + (" (live)" if not args.offline else "")] = read_outputs(output_bag)
    if not use_oracle:
        ref_bag = out / "oracle.mcap"
        print(f"[demo] reference: the same sequence through the oracle engine (dpm replay) → {ref_bag}")
        replay_bag(input_bag, ref_bag, load_config(None, {"engine": f"oracle:{input_bag.resolve()}"}),
                   overwrite=True, progress=False)
        runs["oracle"] = read_outputs(ref_bag)
    scores = {name: score_sequence(input_bag, outputs, seq) for name, outputs in runs.items()}
    first = next(iter(runs))
    if scores[first].n_pairs == 0:
        raise ValueError(f"the node published no usable output for the sequence; see {out}/node.log")
    md = metrics_markdown(scores, f"dpm demo: seed {args.seed}, {args.frames} frames at {args.fps:g} fps, "
                                  f"{args.size}×{args.size}")
    (out / "metrics.md").write_text(md)
    png = draw_overview(runs[first], seq, scores[first], out / "overview.png", title=f"dpm_ros demo — {first}")
    print(md)
    print(f"[demo] done in {time.time() - t0:.0f} s:\n  {png}\n  {out / 'metrics.md'}\n  {output_bag} "
          "(open in Foxglove with input.mcap)")
    return 0
