"""`dpm replay` of a `dpm synth` bag with the oracle engine: the node's topics, one message per pair, I1's stamps and
frame ids, TF that follows the ground-truth camera poses, masks that match the ground-truth moving pixels; the input
bag is untouched; failures leave no output and exit non-zero."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from conftest import dpm, finish, read_bag

import dpm_ros.pipeline  # noqa: E402,F401  (a missing or broken module fails here, never skips)

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out

FRAMES, HEIGHT, WIDTH, FPS, T0 = 12, 48, 64, 10.0, 1.0
NODE_TOPICS = {"/dpm/points": "sensor_msgs/msg/PointCloud2", "/dpm/motion_mask": "sensor_msgs/msg/Image",
               "/dpm/object_labels": "sensor_msgs/msg/Image", "/dpm/depth": "sensor_msgs/msg/Image",
               "/dpm/camera_info": "sensor_msgs/msg/CameraInfo", "/dpm/objects": "dpm_ros/msg/ObjectMotionArray",
               "/dpm/objects/markers": "visualization_msgs/msg/MarkerArray", "/dpm/odometry": "nav_msgs/msg/Odometry",
               "/tf": "tf2_msgs/msg/TFMessage"}


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def synth_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "seq.mcap"
    rc, err = finish(dpm("synth", "--out", path, "--frames", FRAMES, "--height", HEIGHT, "--width", WIDTH,
                         "--fps", FPS, "--t0", T0, "--seed", 4, "--objects", 2, "--renderer", "numpy"), timeout=120)
    assert rc == 0, err
    return path


@pytest.fixture(scope="module")
def replayed(synth_bag, tmp_path_factory):
    out = tmp_path_factory.mktemp("replay_out") / "out.mcap"
    before = sha256(synth_bag)
    rc, err = finish(dpm("replay", synth_bag, "--out", out, "--engine", f"oracle:{synth_bag}",
                         "--params", "config/dpm.yaml", "-p", "camera_info_sync:=latest", "--no-progress"),
                     timeout=120)
    assert rc == 0, err
    assert sha256(synth_bag) == before          # the input bag is only read
    return out, err


def _deserialise(rows, msgtype):
    from rclpy.serialization import deserialize_message

    from dpm_ros.ros.bag_player import resolve_msg_class
    return [deserialize_message(d, resolve_msg_class(msgtype)) for d in rows]


def test_replay_writes_every_node_topic_once_per_pair_with_i1_stamps(replayed):
    out, err = replayed
    got = read_bag(out)
    by_topic: dict = {}
    for topic, ns, data in got:
        by_topic.setdefault(topic, []).append((ns, data))
    assert set(by_topic) == set(NODE_TOPICS)
    n_pairs = FRAMES - 1                          # frame 0 has no partner; every later frame is I1 of one pair
    assert f"{FRAMES} images, {n_pairs} pairs" in err and "pairs/s" in err
    expected_ns = [int(round((T0 + i / FPS) * 1e9)) for i in range(1, FRAMES)]
    for topic, rows in by_topic.items():
        assert [ns for ns, _ in rows] == expected_ns, topic
        msgs = _deserialise([d for _, d in rows], NODE_TOPICS[topic])
        for ns, msg in zip(expected_ns, msgs):
            header = msg.transforms[0].header if topic == "/tf" else getattr(msg, "header", None)
            if header is None:                    # MarkerArray: each marker carries the header
                header = msg.markers[0].header if msg.markers else None
            if header is not None:
                assert header.stamp.sec * 1_000_000_000 + header.stamp.nanosec == ns, topic
    mask = _deserialise([by_topic["/dpm/motion_mask"][0][1]], NODE_TOPICS["/dpm/motion_mask"])[0]
    assert (mask.height, mask.width, mask.encoding, mask.header.frame_id) == (HEIGHT, WIDTH, "mono8",
                                                                              "camera_optical_frame")
    tf = _deserialise([by_topic["/tf"][0][1]], NODE_TOPICS["/tf"])[0].transforms[0]
    assert (tf.header.frame_id, tf.child_frame_id) == ("odom", "camera_optical_frame")


def test_replayed_tf_and_masks_match_ground_truth(synth_bag, replayed):
    """Oracle engine: TF odom → camera equals the ground-truth pose relative to the first frame, and the motion
    mask of each pair (I1 = frame k, I2 = the frame closest to t1 − 0.2 s) equals the theory's mask on the
    ground-truth maps, ‖P1(t2,π1) − P1(t1,π1)‖ > 0.02·‖P1(t1,π1)‖, at the input resolution."""
    from dpm_ros.bag import read_synth_info
    from dpm_ros.ros.messages import transform_to_matrix
    from dpm_ros.synthetic import SyntheticSequence
    out, _ = replayed
    seq = SyntheticSequence(**read_synth_info(synth_bag)["params"], renderer="numpy")
    source = read_bag(synth_bag)
    gt_tf = [m.transforms[0] for m in _deserialise([d for t, _, d in source if t == "/tf"], "tf2_msgs/msg/TFMessage")]
    gt_T = [transform_to_matrix(t.transform) for t in gt_tf]
    got = read_bag(out)
    tfs = _deserialise([d for t, _, d in got if t == "/tf"], "tf2_msgs/msg/TFMessage")
    masks = _deserialise([d for t, _, d in got if t == "/dpm/motion_mask"], "sensor_msgs/msg/Image")
    T_first_inv = np.linalg.inv(gt_T[0])
    errors, ious, moving_pixels = [], [], 0
    for k, (tf, mask) in enumerate(zip(tfs, masks), start=1):
        est = transform_to_matrix(tf.transforms[0].transform)
        errors.append(np.abs(est - T_first_inv @ gt_T[k]).max())
        gt = seq.pair(k, max(k - 2, 0))
        a, b = gt["p1_t1_pi1"].astype(np.float64), gt["p1_t2_pi1"].astype(np.float64)
        with np.errstate(invalid="ignore"):
            expected = np.linalg.norm(b - a, axis=-1) > 0.02 * np.linalg.norm(a, axis=-1)
        m = np.frombuffer(bytes(mask.data), np.uint8).reshape(HEIGHT, WIDTH) > 0
        moving_pixels += int(expected.sum())
        ious.append((m & expected).sum() / max((m | expected).sum(), 1) if (m | expected).any() else 1.0)
    assert max(errors) < 1e-4
    assert moving_pixels > 100                      # the sequence has moving objects to find
    assert min(ious) >= 0.99


def test_replay_is_deterministic(synth_bag, replayed, tmp_path):
    out, _ = replayed
    again = tmp_path / "again.mcap"
    rc, err = finish(dpm("replay", synth_bag, "--out", again, "--engine", f"oracle:{synth_bag}",
                         "--params", "config/dpm.yaml", "-p", "camera_info_sync:=latest", "--no-progress",
                         "--copy-input"), timeout=120)
    assert rc == 0, err
    first = [(t, d) for t, _, d in read_bag(out)]
    source = {(t, d) for t, _, d in read_bag(synth_bag)}
    second = [(t, d) for t, _, d in read_bag(again)]
    assert [row for row in second if row not in source] == first      # same outputs, byte for byte
    assert source <= set(second)                                     # --copy-input keeps every input message


def test_replay_failures_exit_non_zero_and_leave_no_output(synth_bag, tmp_path):
    out = tmp_path / "out.mcap"
    out.write_bytes(b"keep")
    rc, err = finish(dpm("replay", synth_bag, "--out", out, "--engine", f"oracle:{synth_bag}"))
    assert rc == 1 and "already exists" in err and out.read_bytes() == b"keep"
    rc, err = finish(dpm("replay", synth_bag, "--out", tmp_path / "x.mcap", "-p", "pair_interval:=fast"))
    assert rc == 1 and "parameter 'pair_interval' must be float" in err
    rc, err = finish(dpm("replay", synth_bag, "--out", tmp_path / "x.mcap", "-p", "no_such:=1"))
    assert rc == 1 and "unknown dpm_node parameter(s): no_such" in err
    rc, err = finish(dpm("replay", synth_bag, "--out", tmp_path / "x.mcap", "--engine", "/nonexistent.onnx"))
    assert rc == 1 and "engine file '/nonexistent.onnx' not found" in err
    assert not (tmp_path / "x.mcap").exists()


def test_replay_uses_the_bags_tf_static_for_base_frame(synth_bag, tmp_path):
    """With base_frame set, the node waits for /tf_static base → camera; replay feeds it from the bag, so odometry
    and TF are for the base (odom → base_link), one per pair, with T_odom_base = T_bc · T_odom_cam · T_bc⁻¹."""
    from geometry_msgs.msg import TransformStamped
    from rclpy.serialization import serialize_message
    from tf2_msgs.msg import TFMessage

    from dpm_ros.ros.bag_player import open_reader
    from dpm_ros.ros.bag_recorder import BagWriter
    from dpm_ros.ros.messages import transform_to_matrix
    with_static = tmp_path / "with_static.mcap"
    source = read_bag(synth_bag)
    ts = TransformStamped(child_frame_id="camera_optical_frame")
    ts.header.frame_id = "base_link"
    ts.transform.translation.x, ts.transform.translation.z = 0.2, 0.5
    ts.transform.rotation.x, ts.transform.rotation.y, ts.transform.rotation.z, ts.transform.rotation.w = \
        -0.5, 0.5, -0.5, 0.5                          # REP 103 body (x fwd, z up) → optical (z fwd, y down)
    T_bc = transform_to_matrix(ts.transform)
    reader = open_reader(synth_bag)
    types = {c.topic: c.msgtype for c in reader.connections}
    reader.close()
    with BagWriter(with_static) as writer:
        writer.add_topic("/tf_static", "tf2_msgs/msg/TFMessage")
        writer.write("/tf_static", source[0][1], serialize_message(TFMessage(transforms=[ts])))
        for topic, ns, data in source:
            writer.add_topic(topic, types[topic])
            writer.write(topic, ns, data)
    out = tmp_path / "base.mcap"
    rc, err = finish(dpm("replay", with_static, "--out", out, "--engine", f"oracle:{synth_bag}",
                         "-p", "base_frame:=base_link", "--no-progress"), timeout=120)
    assert rc == 0, err
    got = read_bag(out)
    tfs = _deserialise([d for t, _, d in got if t == "/tf"], "tf2_msgs/msg/TFMessage")
    odom = _deserialise([d for t, _, d in got if t == "/dpm/odometry"], "nav_msgs/msg/Odometry")
    assert len(tfs) == len(odom) == FRAMES - 1
    assert {(m.transforms[0].header.frame_id, m.transforms[0].child_frame_id) for m in tfs} == {("odom", "base_link")}
    assert {o.child_frame_id for o in odom} == {"base_link"}
    # the camera's own trajectory (ground truth relative to frame 0) seen through the extrinsic
    gt = [transform_to_matrix(m.transforms[0].transform)
          for m in _deserialise([d for t, _, d in source if t == "/tf"], "tf2_msgs/msg/TFMessage")]
    for k, m in enumerate(tfs, start=1):
        T_odom_cam = np.linalg.inv(gt[0]) @ gt[k]
        expected = T_bc @ T_odom_cam @ np.linalg.inv(T_bc)
        np.testing.assert_allclose(transform_to_matrix(m.transforms[0].transform), expected, atol=1e-4)
