"""``dpm bench ort``: ONNX Runtime session options on a model file (default the shipped engines/dpm_small.onnx) at a
camera's pair rate, as JSON: what one pair's network costs in wall time and in CPU time of the whole process.

Each configuration (intra-op threads × pool spinning) runs ``repeats`` calls paced at ``rate`` Hz like the node's
worker (one call, then idle until the next pair is due). ``cpu_ms_per_pair`` is the process's CPU time
(``time.process_time``: every thread, ONNX Runtime's pool included) over a whole period, so pool threads that
busy-wait after a call (ONNX Runtime's default, ``session.intra_op.allow_spinning`` = 1) are counted: on a 2-core
machine that CPU is taken from the node's frame conversion, geometry and publishing. ``cpu_share_pct`` = CPU per
pair × rate (percent of one core). Every configuration's outputs are checked bit-identical to the first's
(``outputs_identical``): the options change speed, not numbers.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

#: (intra-op threads or None = ONNX Runtime's choice, spinning); the first is ONNX Runtime's own default
DEFAULT_CONFIGS = ((None, True), (None, False), (1, False), (2, False), (1, True))


def _stats(values: list[float]) -> dict:
    a = np.asarray(values, np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "mean": round(float(a.mean()), 3)}


def bench_config(model: Path, threads: int | None, spinning: bool, x1: np.ndarray, x2: np.ndarray, rate: float,
                 repeats: int, warmup: int) -> tuple[dict, dict]:
    """(report, outputs) of one configuration: paced calls at ``rate`` Hz, wall ms of each call, process CPU ms
    of each whole period."""
    from dpm_ros.engine.onnxruntime_backend import OnnxRuntimeEngine

    engine = OnnxRuntimeEngine(model, threads=threads, spinning=spinning)
    outputs = engine.run_network(x1, x2)
    for _ in range(warmup):
        engine.run_network(x1, x2)
    period = 1.0 / rate
    wall, cpu = [], []
    due = time.perf_counter()
    c_prev = time.process_time()
    for _ in range(repeats):
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        c0 = time.process_time()
        t0 = time.perf_counter()
        engine.run_network(x1, x2)
        wall.append(1000.0 * (time.perf_counter() - t0))
        due = max(due + period, time.perf_counter())
        cpu.append(1000.0 * (c0 - c_prev))   # the previous period: its call and the idle time after it
        c_prev = c0
    cpu = cpu[1:] or cpu   # the first entry is the warm-up's tail
    used = engine.session.get_session_options()
    report = {"threads": threads, "spinning": spinning, "intra_op_num_threads_option": int(used.intra_op_num_threads),
              "wall_ms": _stats(wall), "cpu_ms_per_pair": _stats(cpu),
              "cpu_share_pct": round(statistics.mean(cpu) * rate / 10.0, 1)}
    return report, outputs


def run_ort_benchmark(model: str | None = None, rate: float = 30.0, repeats: int = 60, warmup: int = 5,
                      configs=DEFAULT_CONFIGS, camera_hw: tuple[int, int] = (1080, 1920)) -> dict:
    """The JSON-ready report (see module docstring). ``camera_hw``: the synthetic camera frames' size (they are
    cropped and area-resized to the network's input like the node's)."""
    from dpm_ros.benchmarks.engine import environment
    from dpm_ros.engine.onnx_model import read_onnx_info
    from dpm_ros.engine.pair_io import prepare_pair
    from dpm_ros.engine.select import default_engine_path
    from dpm_ros.synthetic import SyntheticSequence

    if not rate > 0 or repeats < 2:
        raise ValueError(f"need rate > 0 Hz and repeats ≥ 2, got {rate} Hz, {repeats}")
    path = Path(model) if model else default_engine_path()
    info = read_onnx_info(path)
    seq = SyntheticSequence(seed=0, n_frames=2, fps=rate, height=camera_hw[0] // 4, width=camera_hw[1] // 4,
                            n_objects=3, renderer="numpy")
    x1, x2 = prepare_pair(seq.frame(1)["image"], seq.frame(0)["image"], info.height, info.width, str(path),
                          info.normalisation)
    results, first = [], None
    for threads, spinning in configs:
        report, outputs = bench_config(path, threads, spinning, x1, x2, rate, repeats, warmup)
        if first is None:
            first = outputs
        report["outputs_identical"] = all(np.array_equal(outputs[k], first[k]) for k in first)
        results.append(report)
    return {"benchmark": "ort", "model": str(path), "network_input": f"{info.width}x{info.height}",
            "rate_hz": rate, "repeats": repeats, "warmup": warmup, "environment": environment(),
            "results": results}
