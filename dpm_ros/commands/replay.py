"""``dpm replay IN --out OUT.mcap``: a bag through dpm_node's pipeline offline (no DDS), outputs to a new bag."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("bag", help="input rosbag2 (directory, .mcap or .db3) with a camera topic; only read")
    parser.add_argument("--out", required=True, help="output: OUT.mcap (one MCAP file) or a rosbag2 folder name")
    add_pipeline_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace OUT when it is a bag (file or rosbag2 "
                                                                 "folder), once the new one is complete")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def add_pipeline_arguments(parser) -> None:
    """The options that decide what a replay computes (shared with ``dpm batch``)."""
    parser.add_argument("--params", default=None, metavar="YAML",
                        help="dpm_node params file (config/dpm.yaml); checked as dpm_node checks it")
    parser.add_argument("--engine", default=None, help="model file or 'oracle:<synthetic bag>' (overrides params)")
    parser.add_argument("--backend", default=None, help="auto|torch|onnxruntime|tensorrt (overrides params)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="override one node parameter, e.g. -p pair_interval:=0.1 (repeatable; typed and "
                             "checked as dpm_node does)")
    parser.add_argument("--image-topic", default=None, help="camera topic (default: the bag's only one)")
    parser.add_argument("--camera-info-topic", default=None, help="CameraInfo topic (default: <ns>/camera_info)")
    parser.add_argument("--copy-input", action="store_true", help="also copy the input bag's messages")


def _overrides(args) -> dict:
    """name → value of each ``-p NAME:=VALUE`` (typed as dpm_node's rcl parser types it), --engine, --backend."""
    from dpm_ros.config import parse_value

    out = {}
    for item in args.param:
        name, sep, value = item.partition(":=")
        if not sep:
            name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"-p expects NAME:=VALUE, got '{item}'")
        try:
            out[name.strip()] = parse_value(value)
        except ValueError as exc:
            raise ValueError(f"-p {item}: {exc}") from None
    if args.engine is not None:
        out["engine"] = args.engine
    if args.backend is not None:
        out["backend"] = args.backend
    return out


def run(args) -> int:
    import sys

    from dpm_ros.config import load_config
    from dpm_ros.ros.replay import replay_bag

    params = load_config(args.params, _overrides(args))
    stats = replay_bag(args.bag, args.out, params, image_topic=args.image_topic,
                       info_topic=args.camera_info_topic, copy_input=args.copy_input,
                       progress=not args.no_progress, overwrite=args.overwrite)
    topics = ", ".join(f"{t}: {n}" for t, n in sorted(stats.per_topic.items()))
    print(f"dpm replay: {stats.images} images, {stats.pairs} pairs in {stats.wall_s:.2f} s "
          f"({stats.pairs_per_s:.2f} pairs/s); wrote {stats.messages_written} messages to {args.out} ({topics})",
          file=sys.stderr, flush=True)
    dropped = {k: n for k, n in stats.pairing.items() if k not in ("frames_in", "pairs_made") and n}
    if dropped:
        print("dpm replay: images that made no pair: " + ", ".join(f"{k} {n}" for k, n in dropped.items()),
              file=sys.stderr, flush=True)
    if stats.failed_pairs:
        print(f"dpm replay: warning: {stats.failed_pairs} pair(s) failed: {stats.first_error}", file=sys.stderr)
    return 0
