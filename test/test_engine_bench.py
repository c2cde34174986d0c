"""``dpm bench engine``: the JSON has every stage as p50/p95, consistent pairs/s, the cloud size, and versions."""
from __future__ import annotations

import json

import pytest

from dpm_ros.benchmarks.engine import STAGES, network_flops, parse_resolution, percentiles, run_engine_benchmark
from dpm_ros.pointcloud import POINT_DTYPE


def test_percentiles_of_known_samples():
    p = percentiles(list(range(1, 101)))
    assert p["p50"] == pytest.approx(50.5) and p["p95"] == pytest.approx(95.05) and p["n"] == 100


def test_resolution_is_width_by_height():
    assert parse_resolution("512x384") == (384, 512)
    with pytest.raises(ValueError, match="use WIDTHxHEIGHT"):
        parse_resolution("512")


def test_engine_benchmark_report(tmp_path):
    report = run_engine_benchmark("dpm_tiny", resolutions=[(32, 48), (16, 24)], backends=["onnxruntime", "torch"],
                                  repeats=3, warmup=1, threads=1)
    json.dumps(report)  # plain JSON
    env = report["environment"]
    assert env["onnxruntime"] and env["torch"] and env["cpu_count"] >= 1
    assert [(r["backend"], r["resolution"]) for r in report["results"]] == [
        ("onnxruntime", "48x32"), ("torch", "48x32"), ("onnxruntime", "24x16"), ("torch", "24x16")]
    for r in report["results"]:
        assert set(r["stages_ms"]) == set(STAGES)
        for stage in r["stages_ms"].values():
            assert 0 < stage["p50"] <= stage["p95"] and stage["n"] == 3
        total = sum(s["p50"] for s in r["stages_ms"].values())
        assert r["pairs_per_s"] == pytest.approx(1000 / total, rel=1e-2)
        w, h = (int(v) for v in r["resolution"].split("x"))
        assert r["cloud_bytes"] == w * h * POINT_DTYPE.itemsize
        assert r["network_pairs_per_s"] >= r["pairs_per_s"]
    # the network's cost scales with pixels (and more, through attention): 4x the pixels, > 4x the FLOPs
    gflop = {r["resolution"]: r["network_gflop_per_pair"] for r in report["results"]}
    assert gflop["48x32"] > 4 * gflop["24x16"] > 0


def test_flop_count_of_the_dust3r_size_model_matches_the_issue_estimate():
    """3.4 TFLOP per symmetric 512x384 pair (counted on the meta device: no weights, no compute)."""
    assert network_flops("dust3r_vitl_512_dpt", 384, 512) == pytest.approx(3.4e12, rel=0.02)


def test_dpm_bench_engine_command_writes_json(tmp_path, capsys):
    from dpm_ros.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "engine", "--preset", "dpm_tiny", "--resolution", "48x32", "--backend", "onnxruntime",
                 "--repeats", "2", "--warmup", "1", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert [(r["backend"], r["resolution"]) for r in report["results"]] == [("onnxruntime", "48x32")]
