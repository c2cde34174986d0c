"""The depth topic over DDS: `dpm play` (camera, CameraInfo and a 16UC1 millimetre depth topic of 2 × the true
depth) → `dpm_node` (scale_source depth, ground-truth engine) → `dpm record`. The node subscribes to the depth topic,
matches it to each image by stamp, and publishes a trajectory of 2 × the ground truth; its /tf and /dpm/objects
equal `dpm replay`'s for the same bag byte for byte. Played at 0.2× so no pair is dropped."""
from __future__ import annotations


import numpy as np
import pytest

from test_metric_scale import depth_16uc1_mm, pair_length_ratios, rewrite_bag, tf_poses
from conftest import dpm, finish, read_bag
from test_replay_live import run_live_node

import dpm_ros.pipeline  # noqa: E402,F401  (a missing or broken module fails here, never skips)

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out

FRAMES, HEIGHT, WIDTH, FPS, T0 = 10, 48, 64, 10.0, 1.0
TOPICS = {"/tf": "tf2_msgs/msg/TFMessage", "/dpm/objects": "dpm_ros/msg/ObjectMotionArray"}
PARAMS = ["-p", "camera_info_sync:=latest", "-p", "scale_source:=depth", "-p", "depth_topic:=/gt/depth",
          "-p", "depth_wait:=1.0"]


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
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
    node_err = run_live_node(mm, live, ["-p", f"engine:=oracle:{seq}", *PARAMS], TOPICS, len(expected),
                             ["/camera/image_raw", "/camera/camera_info", "/gt/depth"])
    assert "no depth image" not in node_err                     # every pair found its depth image by stamp
    ratios = pair_length_ratios(tf_poses(live), tf_poses(seq))
    assert len(ratios) == FRAMES - 3 and np.abs(ratios / 2.0 - 1.0).max() <= 2e-3
    from dpm_ros.ros.bag_recorder import canonical_cdr
    got = [(t, canonical_cdr(d, TOPICS[t])) for t, _, d in read_bag(live)]
    for topic in TOPICS:
        assert [d for t, d in got if t == topic] == [d for t, d in expected if t == topic], topic
