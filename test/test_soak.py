"""`dpm soak`: a short real run against dpm_node (oracle engine, DDS loopback) writes the JSON the 60-minute run
writes; the summary arithmetic and the RSS reader are checked on their own."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dpm_ros.ros.soak import SoakConfig, percentile, rss_mb, summarise

import dpm_ros.engine.oracle  # noqa: E402,F401  (a missing or broken module fails here, never skips)

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out

RATE = 30.0
MINUTES = 0.25
SUBSCRIBED = ("points", "motion_mask", "object_labels", "depth", "camera_info", "objects")   # not "markers"


def test_rss_reader_matches_proc_status():
    text = open(f"/proc/{os.getpid()}/status").read()
    kb = int(next(line for line in text.splitlines() if line.startswith("VmRSS:")).split()[1])
    assert rss_mb(os.getpid()) == pytest.approx(kb / 1024, rel=0.05)


def test_summary_growth_latency_and_drops_from_samples():
    samples = [dict(t_s=t, rss_mb=r, outputs=o, latency_ms_p95=lat, diag=dict(frames_in=str(f), pairs_dropped=str(d),
                                                                           errors_total="2"))
               for t, r, o, lat, f, d in [(5, 300.0, 10, 90.0, 150, 5), (10, 400.0, 20, 100.0, 300, 9),
                                        (20, 404.0, 40, 110.0, 600, 20), (30, 410.0, 60, 120.0, 895, 31)]]
    s = summarise(samples, [10.0, 20.0, 30.0, 40.0, 1000.0], warmup=10.0, published=900)
    assert s["rss_mb_start_after_warmup"] == 400.0 and s["rss_mb_end"] == 410.0
    assert s["growth_pct"] == pytest.approx(2.5)
    assert s["rss_mb_max_after_warmup"] == 410.0
    assert s["pairs_per_s"] == pytest.approx((60 - 20) / (30 - 10))
    assert s["latency_ms_p50"] == 30.0 and s["latency_ms_p95"] == pytest.approx(808.0)
    assert (s["drops"], s["errors"], s["frames_in"], s["frames_lost_in_transport"]) == (31, 2, 895, 5)


def test_percentile_and_config_errors():
    assert percentile([], 50) is None and percentile([1, 2, 3], 50) == 2.0
    for bad in (dict(minutes=0), dict(rate=-1), dict(frames=1), dict(sample_s=0)):
        with pytest.raises(ValueError):
            SoakConfig(**bad).check()
    assert SoakConfig(minutes=60).warmup == 120.0 and SoakConfig(minutes=0.25).warmup == 5.0


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("soak") / "soak.json"
    cmd = [sys.executable, "-m", "dpm_ros.cli", "soak", "--minutes", str(MINUTES), "--rate", str(RATE),
           "--engine", "oracle", "--width", "128", "--height", "96", "--frames", "10", "--sample-s", "2",
           "--out", str(out), "--plot", str(out.with_suffix(".png")), "--subscribe", ",".join(SUBSCRIBED)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=dict(os.environ))
    return proc, out


def test_short_soak_writes_samples_and_summary(short_run):
    proc, out = short_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["complete"] is True and doc["config"]["engine_param"].startswith("oracle:")
    samples, s = doc["samples"], doc["summary"]
    t = [x["t_s"] for x in samples]
    assert len(samples) >= 6 and all(b > a for a, b in zip(t, t[1:])), t
    assert all(50.0 < x["rss_mb"] < 4000.0 for x in samples)
    # the publisher kept the rate; best-effort transport on loaded cores may lose a few frames (reported, not hidden)
    assert s["frames_published"] == pytest.approx(RATE * 60 * MINUTES, rel=0.1), s
    assert s["frames_in"] >= 0.8 * s["frames_published"], s
    assert s["frames_lost_in_transport"] == s["frames_published"] - s["frames_in"]
    assert s["errors"] == 0 and s["node_alive_at_end"] and s["node_exit_code"] == 0, s
    # Measured on this 2-core machine under load average 14-21 (7 helpers), two runs: 20.5 and 5.9 pairs/s (336 and
    # 93 outputs), latency p95 121 ms, RSS growth 0.29 % and -0.9 % after warm-up. Bounds ~4x below the slower run,
    # ~12x the latency and ~5x the growth measured, so a stalled or leaking node fails while a loaded CI box passes.
    assert s["pairs_per_s"] > 1.5 and s["outputs"] >= 20, s
    assert 0.0 < s["latency_ms_p50"] <= s["latency_ms_p95"] < 1500.0, s
    assert np.isfinite(s["growth_pct"]) and abs(s["growth_pct"]) < 5.0, s
    # latest wins: every frame is either paired and processed, dropped, or had no partner (the first one)
    diag = samples[-1]["diag"]
    assert int(diag["pairs_out"]) + s["drops"] <= s["frames_in"]
    assert "RSS after warm-up" in proc.stdout and "pairs/s" in proc.stdout
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_short_soak_reports_stages_cpu_and_builds_only_subscribed_outputs(short_run):
    proc, out = short_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    s, last = doc["summary"], doc["samples"][-1]
    assert doc["config"]["subscribe"] == list(SUBSCRIBED)
    pairs = int(last["diag"]["pairs_out"])
    # lazy outputs: the one topic nobody subscribed to (markers) is skipped in every pair, the others arrive
    assert int(last["diag"]["outputs_skipped"]) == pairs, last["diag"]
    assert set(last["received"]) == set(SUBSCRIBED) and min(last["received"].values()) > 0, last["received"]
    stages = s["stages_ms"]
    assert "convert_resize" in stages or "convert_resize_late" in stages, stages
    for key in ("receive", "deserialize", "queue", "inference", "geometry", "points_convert",
                "motion_mask_convert", "motion_mask_publish", "odometry_publish", "total"):
        assert key in stages and 0.0 <= stages[key] < 10000.0, (key, stages)
    assert "markers_convert" not in stages and "markers_publish" not in stages, stages
    assert stages["inference"] <= stages["total"]
    assert 0.0 < s["publisher_cpu_pct"] < 100.0 * s["cpus"] and 0.0 < s["node_cpu_pct"] < 100.0 * s["cpus"], s
    assert s["loadavg_1min"] >= 0.0 and "publisher+probe" in proc.stdout and "stages (ms, mean)" in proc.stdout


def test_subscribe_option():
    from dpm_ros.ros.soak import OUTPUTS, parse_subscribe

    assert parse_subscribe("all") == list(OUTPUTS) and parse_subscribe("none") == []
    assert parse_subscribe("points, depth") == ["points", "depth"]
    with pytest.raises(ValueError, match="unknown output"):
        SoakConfig(subscribe=["points", "mask"]).check()


def test_loop_cache_is_written_once_and_read_back(tmp_path, monkeypatch):
    """--loop-cache: the rendered loop is stored (npz, no pickle) and a later run reads it instead of rendering; a
    file of another shape is rendered again."""
    from dpm_ros.ros import soak
    from dpm_ros.synthetic import SyntheticSequence

    cfg = SoakConfig(width=40, height=24, frames=3, loop_cache=str(tmp_path / "loops"))
    images, K, engine = soak.camera_loop(cfg, tmp_path)
    cached = list((tmp_path / "loops").glob("*.npz"))
    assert [p.name for p in cached] == ["soak_loop_3_30_40x24.npz"] and engine == ""
    fresh = [SyntheticSequence(seed=7, n_frames=3, fps=30.0, height=24, width=40, n_objects=3,
                               renderer="numpy").frame(i)["image"] for i in range(3)]
    assert all(np.array_equal(a, b) for a, b in zip(images, fresh)) and len(images) == 3

    def no_render(self, i):
        raise AssertionError("rendered although the loop is cached")

    monkeypatch.setattr(SyntheticSequence, "frame", no_render)
    again, K2, _ = soak.camera_loop(cfg, tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(again, fresh)) and np.array_equal(K, K2)
    np.savez(cached[0], images=np.zeros((2, 24, 40, 3), np.uint8))   # not this loop: rendered again
    with pytest.raises(AssertionError, match="rendered although"):
        soak.camera_loop(cfg, tmp_path)
