"""``dpm bench TARGET``: benchmarks of the hot paths, JSON on stdout (and in ``--json PATH``).

Targets live in ``TARGETS`` (name -> function taking the parsed args and returning a JSON-able dict); another
module can add one (e.g. ``engine``) by adding an entry and its options."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _geometry(args) -> dict:
    from dpm_ros.benchmarks.geometry import run_geometry

    return run_geometry(height=args.height, width=args.width, repeats=args.repeats, seed=args.seed,
                        keep_heap_memory=not args.no_keep_heap)


def _engine(args) -> dict:
    from dpm_ros.benchmarks.engine import engine_target

    return engine_target(args)


def _batch(args) -> dict:
    from dpm_ros.benchmarks.batch import run_batch_bench

    h, _, w = args.bag_size.partition("x")
    return run_batch_bench(bags=args.bags, frames=args.bag_frames, height=int(h), width=int(w), ray=not args.no_ray)


def _train(args) -> dict:
    from dpm_ros.benchmarks.train import train_target

    return train_target(args)


def _io(args) -> dict:
    from dpm_ros.ros.io_bench import run_io

    return run_io(height=args.height, width=args.width, repeats=args.repeats, seed=args.seed)


def _ort(args) -> dict:
    from dpm_ros.benchmarks.ort_options import run_ort_benchmark

    return run_ort_benchmark(model=args.model, rate=args.rate, repeats=args.repeats, warmup=args.warmup)


TARGETS = {"geometry": _geometry, "engine": _engine, "batch": _batch, "train": _train, "io": _io, "ort": _ort}


def add_arguments(parser) -> None:
    parser.add_argument("target", choices=sorted(TARGETS), help="what to benchmark")
    parser.add_argument("--height", type=int, default=384, help="output resolution rows (default 384)")
    parser.add_argument("--width", type=int, default=512, help="output resolution columns (default 512)")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per step (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic scene seed (default 0)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the JSON here")
    parser.add_argument("--no-keep-heap", action="store_true",
                        help="leave glibc's malloc defaults (large temporaries page-fault on every call)")
    parser.add_argument("--bags", type=int, default=8, help="batch: number of synthetic bags (default 8)")
    parser.add_argument("--bag-frames", type=int, default=20, help="batch: frames per bag (default 20)")
    parser.add_argument("--bag-size", default="96x128", metavar="HxW", help="batch: image size (default 96x128)")
    parser.add_argument("--no-ray", action="store_true", help="batch: skip the Ray runs")
    parser.add_argument("--model", default=None, metavar="ONNX",
                        help="ort: model file (default the shipped engines/dpm_small.onnx)")
    parser.add_argument("--rate", type=float, default=30.0, help="ort: pairs per second the calls are paced at "
                                                                  "(default 30)")
    from dpm_ros.benchmarks.engine import add_engine_arguments

    add_engine_arguments(parser)  # engine target: --preset --weights --resolution --backend --warmup --threads
    from dpm_ros.benchmarks.train import add_train_arguments

    add_train_arguments(parser)   # train target (also uses --preset and the first --resolution; default 128x96)


def run(args) -> int:
    if args.height < 8 or args.width < 8:
        raise ValueError(f"--height/--width must be at least 8 pixels, got {args.height}×{args.width}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    report = TARGETS[args.target](args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    sys.stdout.flush()
    return 0
