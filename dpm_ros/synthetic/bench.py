"""Throughput of ``make_pair`` (what the trainer's data workers pay per sample): ``python -m
dpm_ros.synthetic.bench [--height 64 --width 64 --objects 4 --pairs 50]`` prints JSON for both renderers."""
from __future__ import annotations

import argparse
import json
import time

from .pairs import make_pair
from .render import gl_available


def bench_make_pair(height: int = 64, width: int = 64, n_objects: int = 4, renderer: str = "auto",
                    pairs: int = 50) -> dict:
    """Pairs per second (wall clock) and CPU milliseconds per pair (this process, all threads) of make_pair."""
    if pairs < 1:
        raise ValueError(f"pairs must be >= 1, got {pairs}")
    used = "gl" if renderer == "gl" or (renderer == "auto" and gl_available()) else "numpy"
    make_pair(0, height, width, n_objects, renderer=used)      # warm-up: context, shaders, buffers
    wall, cpu = time.perf_counter(), time.process_time()
    for seed in range(1, pairs + 1):
        make_pair(seed, height, width, n_objects, renderer=used)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"renderer": used, "height": height, "width": width, "n_objects": n_objects, "pairs": pairs,
            "pairs_per_s": round(pairs / wall, 1), "cpu_ms_per_pair": round(1000 * cpu / pairs, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=50)
    args = parser.parse_args(argv)
    renderers = (["gl"] if gl_available() else []) + ["numpy"]
    print(json.dumps([bench_make_pair(args.height, args.width, args.objects, r, args.pairs) for r in renderers]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
