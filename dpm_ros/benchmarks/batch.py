"""``dpm bench batch``: throughput of many bags — a plain loop of ``dpm replay`` (one process per bag) against
``dpm batch`` in 1 and 2 local worker processes and, when Ray is installed, on a private one-node Ray (127.0.0.1)
with 1 and 2 actors. Every run is a fresh ``dpm`` command, timed from start to exit (start-up, engine load and
for Ray the cluster start included: what a user waits for); ``in_run_s`` is the time inside ``run_batch``."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _dpm(*args, env=None) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dpm_ros.cli", *map(str, args)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"dpm {' '.join(map(str, args))} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return took


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in sorted(folder.glob("*.mcap"))}


def run_batch_bench(bags: int = 8, frames: int = 20, height: int = 96, width: int = 128, ray: bool = True) -> dict:
    """Synthesises ``bags`` bags of ``frames`` frames (height × width) and times each mode once; outputs of every
    mode are checked byte-identical to the replay loop's."""
    work = Path(tempfile.mkdtemp(prefix="dpm_bench_batch_"))
    try:
        src = work / "in"
        src.mkdir()
        for i in range(bags):
            _dpm("synth", "--out", src / f"bag{i:02d}.mcap", "--frames", frames, "--height", height, "--width",
                 width, "--seed", i, "--objects", 2, "--renderer", "numpy")
        pairs = bags * (frames - 1)
        rows = []

        def row(mode: str, workers: int | None, wall: float, out: Path, manifest: bool = True) -> None:
            r = {"mode": mode, "workers": workers, "wall_s": round(wall, 2), "bags_per_s": round(bags / wall, 3),
                 "pairs_per_s": round(pairs / wall, 2)}
            if manifest:
                last = json.loads((out / "manifest.json").read_text())["last_run"]
                r["in_run_s"] = last["seconds"]
                r["in_run_pairs_per_s"] = round(pairs / last["seconds"], 2)
            r["identical_to_replay"] = _digest(out) == reference if mode != "replay loop" else True
            rows.append(r)

        out = work / "replay"
        out.mkdir()
        start = time.perf_counter()
        for bag in sorted(src.glob("*.mcap")):
            _dpm("replay", bag, "--out", out / bag.name, "--no-progress")
        wall = time.perf_counter() - start
        reference = _digest(out)
        row("replay loop", 1, wall, out, manifest=False)
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        modes = [("local", n, []) for n in (1, 2)]
        if ray and importlib.util.find_spec("ray") is not None:
            modes += [("ray (private, 127.0.0.1)", n, ["--ray", "auto"]) for n in (1, 2)]
        for mode, n, extra in modes:
            out = work / f"{mode.split()[0]}{n}"
            wall = _dpm("batch", src, "--out-dir", out, "--workers", n, "--no-progress", *extra, env=env)
            row(mode, n, wall, out)
        return {"bags": bags, "frames_per_bag": frames, "pairs": pairs, "size": f"{width}x{height}",
                "engine": "shipped engines/dpm_small.onnx (auto backend)", "cpus": os.cpu_count(),
                "load_avg_1min": round(os.getloadavg()[0], 2), "runs": rows}
    finally:
        shutil.rmtree(work, ignore_errors=True)
