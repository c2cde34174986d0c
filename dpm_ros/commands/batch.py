"""``dpm batch IN... --out-dir DIR [--ray [auto|ADDRESS]]``: many bags through ``dpm replay``'s code, one task per
bag, in local worker processes or on a Ray cluster (``dpm_ros/batch.py``)."""
from __future__ import annotations


def add_arguments(parser) -> None:
    from dpm_ros.commands.replay import add_pipeline_arguments

    parser.add_argument("inputs", nargs="+", metavar="IN",
                        help="bags: .mcap/.db3 files, rosbag2 folders, folders of bags, glob patterns; only read")
    parser.add_argument("--out-dir", required=True, metavar="DIR",
                        help="writes DIR/<bag name>.mcap per bag and DIR/manifest.json (created when missing)")
    add_pipeline_arguments(parser)
    parser.add_argument("--ray", nargs="?", const="auto", default=None, metavar="auto|ADDRESS",
                        help="run on Ray: ADDRESS = a cluster's HOST:PORT (see `ray start`); auto (or no value) = "
                             "RAY_ADDRESS or the cluster started on this machine, else a private one for this run "
                             "(127.0.0.1 only); without a value, put it after IN. Needs pip install 'dpm_ros[fleet]'. "
                             "Without --ray: local processes")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="worker processes / Ray actors, each loads the engine once (default: local: one per "
                             "CPU core, one for a GPU engine; Ray: as many as the cluster's CPUs, or GPUs when the "
                             "engine needs one, fit)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C",
                        help="Ray: CPUs each worker declares (default 1)")
    parser.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                        help="Ray: GPUs each worker declares (default 1 when the engine runs on a GPU: tensorrt, "
                             "or auto/torch on a cluster with GPUs; else 0); 0.5 puts two workers on one GPU")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs that exist but are not complete for these settings, when they are "
                             "bags (default: such a bag fails and its file is left alone; a file that is not a bag "
                             "is never replaced); complete ones are always skipped")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args) -> int:
    import sys

    from dpm_ros.batch import expand_inputs, run_batch
    from dpm_ros.commands.replay import _overrides
    from dpm_ros.config import load_config

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be ≥ 1, got {args.workers}")
    if args.cpus_per_worker <= 0 or (args.gpus_per_worker is not None and args.gpus_per_worker < 0):
        raise ValueError("--cpus-per-worker must be > 0 and --gpus-per-worker ≥ 0")
    params = load_config(args.params, _overrides(args))
    bags = expand_inputs(args.inputs, args.out_dir)
    if not bags:
        raise ValueError("no input bags (every input was inside --out-dir)")
    s = run_batch(bags, args.out_dir, params, image_topic=args.image_topic, info_topic=args.camera_info_topic,
                  copy_input=args.copy_input, ray_address=args.ray, workers=args.workers,
                  cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
                  overwrite=args.overwrite, progress=not args.no_progress)
    pool = s.pool.get("kind", "")
    if "workers" in s.pool:
        pool += f", {s.pool['workers']} worker(s)"
    print(f"dpm batch: {s.bags} bags: {s.done} done, {s.skipped} skipped (complete), {s.failed} failed; "
          f"{s.pairs} pairs in {s.seconds:.2f} s ({s.bags_per_s:.3f} bags/s, {s.pairs_per_s:.2f} pairs/s; {pool}); "
          f"manifest {args.out_dir}/manifest.json", file=sys.stderr, flush=True)
    for name, error in s.failures.items():
        print(f"dpm batch: failed: {name}: {error}", file=sys.stderr)
    return 1 if s.failed else 0
