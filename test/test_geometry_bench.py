"""`dpm bench geometry`: JSON with the median/p95 time of every geometry step and of the default post-processing."""
import json
import subprocess
import sys

import pytest

from dpm_ros.benchmarks import time_call


def test_bench_geometry_prints_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "dpm_ros.cli", "bench", "geometry", "--height", "48", "--width",
                           "64", "--repeats", "2", "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report == json.loads(out.read_text())
    assert (report["target"], report["height"], report["width"], report["threads"]) == ("geometry", 48, 64, 1)
    steps = report["steps"]
    for name in ("motion_masks_both", "ego_pixel_aligned_stride4", "objects_split_and_fit", "object_flow",
                 "scene_flow", "default_post_processing", "nearest_neighbours"):
        assert 0 < steps[name]["median_ms"] <= steps[name]["p95_ms"], name
    assert report["default_post_processing_ms"] == steps["default_post_processing"]["median_ms"]
    parts = report["default_post_processing_parts_ms"]                   # the same run, part by part
    assert set(parts) == {"ego_motion", "flows_and_masks", "objects"} and all(v > 0 for v in parts.values())
    assert report["thread_limits"]["openblas"] is True                    # BLAS on one thread too
    assert report["meets_target"] == (report["default_post_processing_ms"] <= report["target_ms"] == 5.0)


def test_bench_rejects_bad_arguments():
    proc = subprocess.run([sys.executable, "-m", "dpm_ros.cli", "bench", "geometry", "--repeats", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "--repeats must be >= 1" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "dpm_ros.cli", "bench", "nothing"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_time_call_statistics(monkeypatch):
    """Known call durations through a fake clock: 5, 1, 7, 3, 2, 6, 4 ms (the warm-up calls are not timed)."""
    import dpm_ros.benchmarks as bench
    calls, durations = [], iter([5.0, 1.0, 7.0, 3.0, 2.0, 6.0, 4.0])
    clock = {"t": 100.0}

    def fn():
        calls.append(1)
        if len(calls) > 3:                                   # a timed call: advance the fake clock by its duration
            clock["t"] += next(durations) / 1000.0

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock["t"])
    r = time_call(fn, repeats=7, warmup=3)
    assert len(calls) == 10 and r["n"] == 7
    assert (r["min_ms"], r["median_ms"]) == (pytest.approx(1.0), pytest.approx(4.0))
    assert r["p95_ms"] == pytest.approx(6.7)                 # numpy's linear percentile of 1..7 at 95 %
