"""The offline and the live path give the same messages: a synthetic bag through `dpm replay` and through
`dpm play` → `dpm_node` → `dpm record` (three processes over DDS, loopback) yields byte-identical outputs once the
live bytes' alignment padding is zeroed (rclpy leaves it uninitialised; DDS pads payloads to 4 bytes), as replay
writes them. Played at 0.2× so the node never drops a pair (dropped pairs change the odometry chain)."""
from __future__ import annotations

import sys

import pytest

from conftest import ROOT, finish, read_bag
from test_replay import FPS, FRAMES, HEIGHT, NODE_TOPICS, T0, WIDTH, dpm

import dpm_ros.pipeline  # noqa: E402,F401  (a missing or broken module fails here, never skips)

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out

PARAMS = ["-p", "camera_info_sync:=latest"]


@pytest.fixture(scope="module")
def synth_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("live") / "seq.mcap"
    rc, err = finish(dpm("synth", "--out", path, "--frames", FRAMES, "--height", HEIGHT, "--width", WIDTH,
                         "--fps", FPS, "--t0", T0, "--seed", 5, "--objects", 2, "--renderer", "numpy"), timeout=120)
    assert rc == 0, err
    return path


def run_live_node(bag, out, node_args: list, topics, n_messages: int, play_topics: list) -> str:
    """dpm_node (reliable input QoS, config/dpm.yaml + ``node_args``) as a process, ``dpm record`` of ``topics`` into
    ``out`` until ``n_messages``, ``dpm play`` of ``play_topics`` from ``bag`` at 0.2×; asserts both tools succeeded
    and returns the node's stderr."""
    import subprocess

    node = subprocess.Popen(
        [sys.executable, "-c", "import sys; from dpm_ros.ros.node import main; sys.exit(main())", "--ros-args",
         "--params-file", str(ROOT / "config" / "dpm.yaml"), "-p", "qos_reliability:=reliable", *node_args,
         "-r", "image:=/camera/image_raw", "-r", "camera_info:=/camera/camera_info"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rec = dpm("record", out, *topics, "--max-messages", n_messages, "--duration", 90)
        play = dpm("play", bag, "--topics", *play_topics, "--rate", 0.2, "--wait-for-subscribers", 60,
                   "--delay", 3.0, "--no-progress")
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
    return node_err


def test_replay_equals_the_live_node_byte_for_byte(synth_bag, tmp_path):
    offline = tmp_path / "offline.mcap"
    rc, err = finish(dpm("replay", synth_bag, "--out", offline, "--engine", f"oracle:{synth_bag}",
                         "--params", "config/dpm.yaml", *PARAMS, "--no-progress"), timeout=120)
    assert rc == 0, err
    expected = read_bag(offline)

    live = tmp_path / "live.mcap"
    node_err = run_live_node(synth_bag, live, ["-p", f"engine:=oracle:{synth_bag}", *PARAMS],
                             NODE_TOPICS, len(expected), ["/camera/image_raw", "/camera/camera_info"])
    from dpm_ros.ros.bag_recorder import canonical_cdr
    got = read_bag(live)
    for topic, msgtype in NODE_TOPICS.items():
        offline_rows = [d for t, _, d in expected if t == topic]
        live_rows = [canonical_cdr(d, msgtype) for t, _, d in got if t == topic]
        assert len(offline_rows) == FRAMES - 1
        assert live_rows == offline_rows, f"{topic}: live and replay differ\n{node_err[-2000:]}"
