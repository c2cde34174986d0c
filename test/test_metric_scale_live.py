"""The depth topic over DDS: `dpm play` (camera, CameraInfo and a 16UC1 millimetre depth topic of 2 × the true
depth) → `dpm_node` (scale_source depth, ground-truth engine) → `dpm record`. The node subscribes to the depth topic,
matches it to each image by stamp, and publishes a trajectory of 2 × the ground truth; its /tf and /dpm/objects
equal `dpm replay`'s for the same bag byte for byte. Played at 0.2× so no pair is dropped."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from test_metric_scale import depth_16uc1_mm, pair_length_ratios, rewrite_bag, tf_poses
from test_play_record import ROOT, dpm, finish, read_bag

FRAMES, HEIGHT, WIDTH, FPS, T0 = 10, 48, 64, 10.0, 1.0
TOPICS = {"/tf": "tf2_msgs/msg/TFMessage", "/dpm/objects": "dpm_ros/msg/ObjectMotionArray"}
PARAMS = ["-p", "camera_info_sync:=latest", "-p", "scale_source:=depth", "-p", "depth_topic:=/gt/depth",
          "-p", "depth_wait:=1.0"]


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    pytest.importorskip("dpm_ros.pipeline")
    tmp = tmp_path_factory.mktemp("scale_live")
    rc, err = finish(dpm("synth", "--out", tmp / "seq.mcap", "--frames", FRAMES, "--height", HEIGHT, "--width",
                         WIDTH, "--fps", FPS, "--t0", T0, "--seed", 6, "--objects", 1, "--renderer", "numpy"),
                     timeout=120)
    assert rc == 0, err
    mm = rewrite_bag(tmp / "seq.mcap", tmp / "mm.mcap",
                     lambda topic, ns, data: depth_16uc1_mm(data, 2.0) if topic == "/gt/depth" else data)
    return tmp / "seq.mcap", mm


def test_live_node_scales_with_the_depth_topic_like_replay(bags, tmp_path):
    seq, mm = bags
    offline = tmp_path / "offline.mcap"
    rc, err = finish(dpm("replay", mm, "--out", offline, "--engine", f"oracle:{seq}", "--params", "config/dpm.yaml",
                         *PARAMS, "--no-progress"), timeout=120)
    assert rc == 0, err
    expected = [(t, d) for t, _, d in read_bag(offline) if t in TOPICS]

    live = tmp_path / "live.mcap"
    node = subprocess.Popen(
        [sys.executable, "-c", "import sys; from dpm_ros.ros.node import main; sys.exit(main())", "--ros-args",
         "--params-file", str(ROOT / "config" / "dpm.yaml"), "-p", f"engine:=oracle:{seq}",
         "-p", "qos_reliability:=reliable", *PARAMS,
         "-r", "image:=/camera/image_raw", "-r", "camera_info:=/camera/camera_info"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rec = dpm("record", live, *TOPICS, "--max-messages", len(expected), "--duration", 90)
        play = dpm("play", mm, "--topics", "/camera/image_raw", "/camera/camera_info", "/gt/depth", "--rate", 0.2,
                   "--wait-for-subscribers", 60, "--delay", 3.0, "--no-progress")
        rc_play, err_play = finish(play, timeout=120)
        rc_rec, err_rec = finish(rec, timeout=120)
    finally:
        node.terminate()
        try:
            _, node_err = node.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            node.kill()
            _, node_err = node.communicate()
    assert rc_play == 0, err_play
    assert rc_rec == 0, err_rec + node_err
    assert "no depth image" not in node_err                     # every pair found its depth image by stamp
    ratios = pair_length_ratios(tf_poses(live), tf_poses(seq))
    assert len(ratios) == FRAMES - 3 and np.abs(ratios / 2.0 - 1.0).max() <= 2e-3
    from dpm_ros.ros.bag_recorder import canonical_cdr
    got = [(t, canonical_cdr(d, TOPICS[t])) for t, _, d in read_bag(live)]
    for topic in TOPICS:
        assert [d for t, d in got if t == topic] == [d for t, d in expected if t == topic], topic
