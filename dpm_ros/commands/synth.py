"""``dpm synth --out seq.mcap --frames N``: write a synthetic dynamic sequence with ground truth as a rosbag2
(topics in ``dpm_ros.bag``: rgb8 images, CameraInfo, /tf ground-truth poses, 32FC1 depth, instances, synth_info)."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="output: NAME.mcap / NAME.db3 (one file) or a folder name "
                                                     "(rosbag2 folder)")
    parser.add_argument("--frames", type=int, default=50, help="number of frames (default 50)")
    parser.add_argument("--height", type=int, default=192, help="image height in pixels (default 192)")
    parser.add_argument("--width", type=int, default=256, help="image width in pixels (default 256)")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate in Hz (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    parser.add_argument("--objects", type=int, default=4, help="number of rigid objects (default 4)")
    parser.add_argument("--kind", choices=("dynamic", "static"), default="dynamic",
                        help="dynamic: objects move; static: only the camera moves")
    parser.add_argument("--t0", type=float, default=1.0, help="stamp of the first frame in seconds (default 1.0)")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="rosbag2 storage plugin")
    parser.add_argument("--renderer", choices=("auto", "gl", "numpy"), default="auto",
                        help="auto: OpenGL on EGL when available, else the numpy ray-caster")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out when it is a bag (file or rosbag2 folder), once the new one is complete")


def run(args) -> int:
    import sys
    import time

    from dpm_ros.bag import write_sequence
    from dpm_ros.synthetic import SyntheticSequence

    if args.storage == "sqlite3" and args.out.endswith(".mcap") or args.storage == "mcap" and args.out.endswith(".db3"):
        raise ValueError(f"--out '{args.out}' does not match --storage {args.storage} (use .mcap for mcap, .db3 for "
                         "sqlite3, or a folder name)")
    seq = SyntheticSequence(seed=args.seed, n_frames=args.frames, fps=args.fps, height=args.height,
                            width=args.width, n_objects=args.objects, kind=args.kind, t0=args.t0,
                            renderer=args.renderer)
    start = time.perf_counter()
    path = write_sequence(seq, args.out, storage=args.storage, overwrite=args.overwrite, progress=True)
    took = time.perf_counter() - start
    print(f"dpm synth: wrote {args.frames} frames ({args.width}×{args.height}, seed {args.seed}) to {path} "
          f"in {took:.1f} s", file=sys.stderr, flush=True)
    return 0
