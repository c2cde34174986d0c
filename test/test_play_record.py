"""`dpm play` → DDS → `dpm record` in separate processes: the recorded bag holds the same bytes, in the same order,
with the original timing; /clock follows the bag time; bad input gives a clear error and a non-zero exit."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import dpm, finish, pad4, read_bag

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out

GAP_NS = 20_000_000   # 20 ms between messages in the test bag
T0_NS = 1_700_000_000_000_000_000


def _messages():
    """(topic, msgtype, rclpy message) for a mix of standard and our own types, 10 of each, interleaved."""
    from builtin_interfaces.msg import Time
    from geometry_msgs.msg import TransformStamped
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import String
    from tf2_msgs.msg import TFMessage

    from dpm_ros.msg import ObjectMotion, ObjectMotionArray

    rng = np.random.default_rng(0)
    out = []
    for i in range(10):
        stamp = Time(sec=1_700_000_000 + i, nanosec=1000 * i)
        img = Image(height=24, width=32, encoding="rgb8", step=96)
        img.header.stamp, img.header.frame_id = stamp, "camera_optical"
        img.data = rng.integers(0, 256, 24 * 96, dtype=np.uint8).tobytes()
        info = CameraInfo(height=24, width=32)
        info.header = img.header
        info.k = [30.0, 0.0, 15.5, 0.0, 30.0, 11.5, 0.0, 0.0, 1.0]
        tf = TransformStamped(child_frame_id="camera_optical")
        tf.header.stamp, tf.header.frame_id = stamp, "world"
        tf.transform.translation.x = 0.1 * i
        tf.transform.rotation.w = 1.0
        objs = ObjectMotionArray(dt=-0.2, metric=True, objects=[ObjectMotion(id=i + 1, point_count=100 + i)])
        objs.header = img.header
        out += [("/camera/image_raw", "sensor_msgs/msg/Image", img),
                ("/camera/camera_info", "sensor_msgs/msg/CameraInfo", info),
                ("/tf", "tf2_msgs/msg/TFMessage", TFMessage(transforms=[tf])),
                ("/dpm/objects", "dpm_ros/msg/ObjectMotionArray", objs),
                ("/chatter", "std_msgs/msg/String", String(data=f"message {i}"))]
    return out


@pytest.fixture(scope="module")
def source_bag(tmp_path_factory) -> tuple[Path, list]:
    """A sqlite3 rosbag2 written with rosbags from rclpy-serialised messages; returns (path, [(topic, ns, bytes)])."""
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer

    from dpm_ros.ros.bag_recorder import bag_typestore

    path = tmp_path_factory.mktemp("play") / "source_bag"
    msgs = _messages()
    store = bag_typestore({t for _, t, _ in msgs})
    written = []
    with Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        conns = {}
        for k, (topic, msgtype, msg) in enumerate(msgs):
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=store)
            data = serialize_message(msg)
            writer.write(conns[topic], T0_NS + k * GAP_NS, data)
            written.append((topic, T0_NS + k * GAP_NS, data))
    return path, written


def test_play_then_record_gives_the_same_bytes_in_order(source_bag, tmp_path):
    bag, written = source_bag
    out = tmp_path / "recorded.mcap"
    topics = sorted({t for t, _, _ in written})
    rec = dpm("record", out, *topics, "--max-messages", len(written), "--duration", 50)
    play = dpm("play", bag, "--wait-for-subscribers", 40, "--delay", 0.5, "--no-progress")
    rc_play, err_play = finish(play)
    rc_rec, err_rec = finish(rec)
    assert rc_play == 0, err_play
    assert rc_rec == 0, err_rec
    assert f"published {len(written)} messages on {len(topics)} topics" in err_play
    assert out.is_file(), err_rec                    # one self-contained MCAP file, no folder
    got = read_bag(out)
    for topic in topics:                             # DDS keeps the order within a topic: exactly the bag's
        assert [d for t, _, d in got if t == topic] == [pad4(d) for t, _, d in written if t == topic]
    # across topics each message arrives on its own reader; at 20 ms spacing the interleaving is the bag's, but
    # when the shared cores stall the recorder, its executor may take two waiting topics in either order
    index = {(t, pad4(d)): k for k, (t, _, d) in enumerate(written)}
    order = [index[(t, d)] for t, _, d in got]
    assert sorted(order) == list(range(len(written)))
    assert sum(b < a for a, b in zip(order, order[1:])) <= len(written) // 10
    # original timing: the receive times keep the 20 ms spacing (loose bounds: 2 shared cores)
    span = (got[-1][1] - got[0][1]) / 1e9
    assert abs(span - (written[-1][1] - written[0][1]) / 1e9) < 0.25
    # schemas stored, our own message type included, and the bytes deserialise with rclpy
    from rclpy.serialization import deserialize_message

    from dpm_ros.msg import ObjectMotionArray
    from dpm_ros.ros.bag_player import open_reader
    reader = open_reader(out)
    types = {c.topic: (c.msgtype, c.msgdef.data) for c in reader.connections}
    reader.close()
    assert types["/dpm/objects"][0] == "dpm_ros/msg/ObjectMotionArray"
    definition = types["/dpm/objects"][1]
    assert "ObjectMotion[] objects" in definition and "MSG: dpm_ros/ObjectMotion" in definition
    objs = [deserialize_message(d, ObjectMotionArray) for t, _, d in got if t == "/dpm/objects"]
    assert [o.objects[0].point_count for o in objs] == list(range(100, 110))


def test_clock_follows_bag_time_and_sigint_closes_the_recording(source_bag, tmp_path):
    """--rate 2 --clock: /clock spans the bag's time range; the recorder stopped by SIGINT leaves a valid MCAP."""
    bag, written = source_bag
    out = tmp_path / "clock.mcap"
    rec = dpm("record", out, "/clock", "/chatter", "--duration", 50)
    play = dpm("play", bag, "--clock", "50", "--rate", "2", "--topics", "/chatter", "--wait-for-subscribers", 40,
               "--delay", 0.5, "--no-progress")
    t_start = time.monotonic()
    rc_play, err_play = finish(play)
    wall = time.monotonic() - t_start
    time.sleep(0.5)
    rec.send_signal(signal.SIGINT)
    rc_rec, err_rec = finish(rec)
    assert rc_play == 0 and rc_rec == 0, err_play + err_rec
    assert "published 10 messages on 1 topics" in err_play
    from rclpy.serialization import deserialize_message
    from rosgraph_msgs.msg import Clock
    got = read_bag(out)
    clocks = [deserialize_message(d, Clock).clock for t, _, d in got if t == "/clock"]
    ns = np.array([c.sec * 1_000_000_000 + c.nanosec for c in clocks])
    chatter = [t_ns for t, t_ns, _ in written if t == "/chatter"]
    assert len(clocks) > 10                          # ~50 Hz over 0.45 s of bag time at rate 2, plus one per message
    assert ns.min() >= chatter[0] and ns.max() == chatter[-1]
    assert np.all(np.diff(ns) >= 0)
    assert [d for t, _, d in got if t == "/chatter"] == [pad4(d) for t, _, d in written if t == "/chatter"]
    assert wall < 20


def test_unknown_message_type_is_skipped_with_a_warning(source_bag, tmp_path):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import get_types_from_msg

    from rosbags.typesys import Stores, get_typestore
    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg("int32 x", "not_installed_msgs/msg/Thing"))
    path = tmp_path / "odd.mcap"
    with Writer(tmp_path / "odd", version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c1 = w.add_connection("/thing", "not_installed_msgs/msg/Thing", typestore=store)
        c2 = w.add_connection("/chatter", "std_msgs/msg/String", typestore=store)
        w.write(c1, 1, store.serialize_cdr(store.types["not_installed_msgs/msg/Thing"](x=3),
                                           "not_installed_msgs/msg/Thing"))
        w.write(c2, 2, store.serialize_cdr(store.types["std_msgs/msg/String"](data="hi"), "std_msgs/msg/String"))
    os.replace(next((tmp_path / "odd").glob("*.mcap")), path)
    rc, err = finish(dpm("play", path, "--no-progress"))
    assert rc == 0, err
    assert "skipping 1 topic(s) whose message type cannot be imported" in err and "/thing" in err
    assert "published 1 messages on 1 topics" in err


@pytest.mark.parametrize("kind", ["truncated", "garbage", "missing"])
def test_corrupt_or_missing_bag_gives_a_clear_error_naming_the_file(source_bag, tmp_path, kind):
    bag, _ = source_bag
    target = tmp_path / f"{kind}.mcap"
    if kind == "truncated":
        good = tmp_path / "good"
        rc, err = finish(dpm("record", good, "/nothing", "--duration", 0.1))   # any valid MCAP ...
        data = next(good.glob("*.mcap")).read_bytes()
        target.write_bytes(data[: len(data) // 2])                              # ... cut in half
    elif kind == "garbage":
        target.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    rc, err = finish(dpm("play", target, "--no-progress"))
    assert rc != 0
    assert str(target) in err and "error" in err
    assert "Traceback" not in err


def test_user_errors_are_reported_without_a_traceback(source_bag, tmp_path):
    bag, _ = source_bag
    rc, err = finish(dpm("play", bag, "--topics", "/nope", "--no-progress"))
    assert rc == 1 and "has no topic /nope" in err and "/chatter (std_msgs/msg/String)" in err
    existing = tmp_path / "exists.mcap"
    existing.write_bytes(b"x")
    rc, err = finish(dpm("record", existing, "/chatter", "--duration", 1))
    assert rc == 1 and "already exists" in err and existing.read_bytes() == b"x"
    rc, err = finish(dpm("play", bag, "--rate", "0"))
    assert rc == 1 and "--rate must be > 0" in err


def test_loop_plays_again_until_sigterm(source_bag):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    from dpm_ros.ros.harness import Probe

    bag, written = source_bag
    per_loop = sum(t == "/chatter" for t, _, _ in written)
    probe = Probe()
    heard = []
    probe.node.create_subscription(String, "/chatter", heard.append,     # best effort: matches any offered QoS
                                   QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT))
    play = dpm("play", bag, "--loop", "--rate", 5, "--no-progress")
    looped = False
    try:   # wait until 3 loops' worth of /chatter arrived (not a fixed sleep: start-up takes 2-10 s under load)
        looped = probe.wait_for(lambda: len(heard) >= 3 * per_loop, 90)
    finally:
        probe.close()
        if not looped:
            play.kill()
    assert looped, f"heard {len(heard)} /chatter messages in 90 s\n{finish(play)[1]}"
    play.send_signal(signal.SIGTERM)
    rc, err = finish(play)
    assert rc == 0, err
    published = int(err.split("published ")[1].split(" ")[0])
    assert published > 2 * len(written) and "(stopped)" in err
