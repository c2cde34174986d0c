"""``dpm soak --minutes N --rate 30 [--out JSON] [--engine ...] [--subscribe LIST]``: drive dpm_node with a
synthetic camera stream and log its memory, latency, drops, CPU shares and per-stage latency over time
(``dpm_ros.ros.soak``). Exit code 1 when the node dies or never answers."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--minutes", type=float, default=1.0, help="length of the run in minutes (default 1)")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate in Hz (default 30)")
    parser.add_argument("--out", default=None, help="JSON file, rewritten after every sample (default: none)")
    parser.add_argument("--engine", default="", help="node 'engine' parameter: a model file, 'oracle' (ground truth "
                                                     "of the synthetic loop) or empty for the shipped model")
    parser.add_argument("--width", type=int, default=256, help="image width in pixels (default 256)")
    parser.add_argument("--height", type=int, default=192, help="image height in pixels (default 192)")
    parser.add_argument("--frames", type=int, default=30, help="frames in the looped sequence (default 30)")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples (default 5)")
    parser.add_argument("--warmup-s", type=float, default=None,
                        help="seconds before the memory reference sample (default 20%% of the run, 5..120 s)")
    parser.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: 101..200 from the pid)")
    parser.add_argument("--plot", default=None, metavar="PNG", help="also plot RSS, latency and pairs/s over time")
    parser.add_argument("--subscribe", default="all", metavar="LIST",
                        help="per-pair outputs the probe subscribes to, comma-separated, 'all' (default) or 'none' "
                             "(the node builds only subscribed ones; /dpm/odometry always): points, motion_mask, "
                             "object_labels, depth, camera_info, objects, markers")
    parser.add_argument("--node-cmd", default=None, metavar="CMD",
                        help="run CMD (split like a shell) instead of dpm_node, e.g. another checkout's "
                             "'env PYTHONPATH=/path/to/old .venv/bin/python -m dpm_ros.ros.node', for A/B runs")
    parser.add_argument("--loop-cache", default=None, metavar="DIR",
                        help="keep the rendered camera loop in DIR and reuse it in later runs (rendering 1920×1080 "
                             "takes minutes on a loaded machine; A/B runs)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="extra node parameter (repeatable), e.g. --param pair_interval:=0.1")


def run(args) -> int:
    import sys

    import shlex

    from dpm_ros.ros.soak import SoakConfig, format_summary, parse_subscribe, plot_soak, run_soak

    node_args = []
    for p in args.param:
        if ":=" not in p:
            raise ValueError(f"--param '{p}' must be NAME:=VALUE")
        node_args += ["-p", p]
    cfg = SoakConfig(minutes=args.minutes, rate=args.rate, engine=args.engine, width=args.width,
                     height=args.height, frames=args.frames, sample_s=args.sample_s, warmup_s=args.warmup_s,
                     out=args.out, domain_id=args.domain_id, node_args=node_args,
                     subscribe=parse_subscribe(args.subscribe),
                     node_command=shlex.split(args.node_cmd) if args.node_cmd else None,
                     loop_cache=args.loop_cache)
    try:
        doc = run_soak(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    except RuntimeError as exc:
        print(f"dpm soak: error: {exc}", file=sys.stderr)
        return 1
    print(format_summary(doc["summary"]))
    if args.plot:
        print(f"plot: {plot_soak(doc, args.plot)}")
    ok = doc["summary"].get("node_alive_at_end") and doc["summary"].get("outputs", 0) > 0
    return 0 if ok else 1
