"""The real third-party ROS 2 bags of ../shared/data/evo_testdata (nav2_turtlebot.mcap: odom, tf, amcl; tf_example/:
a sqlite3 bag with tf only) read, play and record without errors; the tools say clearly that they have no camera
topic; truncated copies give a clear error naming the file."""
from __future__ import annotations

import shutil

import pytest

from conftest import dpm, finish, pad4, read_bag

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out


@pytest.fixture(scope="module")
def evo(shared_data):
    return shared_data / "evo_testdata"


def test_real_bags_read_with_their_topics_counts_and_qos(evo):
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    from dpm_ros.ros.bag_player import camera_topics, open_reader, qos_from_offered
    reader = open_reader(evo / "nav2_turtlebot.mcap")
    conns = {c.topic: c for c in reader.connections}
    assert {t: c.msgcount for t, c in conns.items()} == {"/odom": 2639, "/tf": 5422, "/tf_static": 1,
                                                         "/amcl_pose": 135}
    assert camera_topics(reader.connections) == []
    latched = qos_from_offered(conns["/tf_static"].ext.offered_qos_profiles)
    assert (latched.reliability, latched.durability, latched.depth) == (
        ReliabilityPolicy.RELIABLE, DurabilityPolicy.TRANSIENT_LOCAL, 1)
    odom = qos_from_offered(conns["/odom"].ext.offered_qos_profiles)
    assert (odom.reliability, odom.durability, odom.depth) == (ReliabilityPolicy.RELIABLE,
                                                               DurabilityPolicy.VOLATILE, 10)
    reader.close()
    reader = open_reader(evo / "tf_example")      # sqlite3, no recorded QoS: reliable, volatile, depth 10
    assert sum(c.msgcount for c in reader.connections) == 518
    default = qos_from_offered(reader.connections[0].ext.offered_qos_profiles)
    assert (default.reliability, default.durability, default.depth) == (
        ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE, 10)
    reader.close()


def test_nav2_bag_plays_every_message_and_says_it_has_no_camera(evo):
    rc, err = finish(dpm("play", evo / "nav2_turtlebot.mcap", "--rate", 50, "--no-progress"))
    assert rc == 0, err
    assert "has no camera topic (sensor_msgs/msg/Image or CompressedImage)" in err
    assert "/odom (nav_msgs/msg/Odometry)" in err
    assert "published 8197 messages on 4 topics" in err


def test_tf_example_plays_and_records_back_byte_for_byte(evo, tmp_path):
    out = tmp_path / "tf.mcap"
    rec = dpm("record", out, "/tf", "/tf_static", "--max-messages", 518, "--duration", 50)
    play = dpm("play", evo / "tf_example", "--rate", 10, "--wait-for-subscribers", 40, "--delay", 0.5,
               "--no-progress")
    rc_play, err_play = finish(play)
    rc_rec, err_rec = finish(rec)
    assert rc_play == 0 and rc_rec == 0, err_play + err_rec
    source = read_bag(evo / "tf_example")
    got = read_bag(out)
    assert len(got) == 518
    for topic in ("/tf", "/tf_static"):
        assert [d for t, _, d in got if t == topic] == [pad4(d) for t, _, d in source if t == topic]


def test_replay_of_a_bag_without_camera_fails_clearly(evo, tmp_path):
    for bag in (evo / "nav2_turtlebot.mcap", evo / "tf_example"):
        out = tmp_path / "never.mcap"
        rc, err = finish(dpm("replay", bag, "--out", out, "--engine", "oracle:/nonexistent"))
        assert rc == 1
        assert f"bag '{bag}' has no camera topic" in err and "/tf (tf2_msgs/msg/TFMessage)" in err
        assert not out.exists()


@pytest.mark.parametrize("command", ["play", "replay"])
def test_truncated_copies_of_the_real_bags_give_an_error_naming_the_file(evo, tmp_path, command):
    mcap = tmp_path / "nav2_cut.mcap"
    data = (evo / "nav2_turtlebot.mcap").read_bytes()
    mcap.write_bytes(data[: len(data) * 2 // 3])
    sqlite = tmp_path / "tf_cut"
    shutil.copytree(evo / "tf_example", sqlite)
    db = sqlite / "tf_example.db3"
    db.chmod(0o644)
    db.write_bytes(db.read_bytes()[:50_000])
    for bag in (mcap, sqlite):
        extra = ["--out", tmp_path / "o.mcap"] if command == "replay" else ["--no-progress"]
        rc, err = finish(dpm(command, bag, *extra))
        assert rc == 1, err
        assert f"bag '{bag}' cannot be read (corrupt, truncated or not a rosbag2)" in err
        assert "Traceback" not in err
