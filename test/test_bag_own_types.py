"""Our own bags through our own readers: ``dpm_ros.bag.read_messages`` reads ``/dpm/objects``
(dpm_ros/msg/ObjectMotionArray, not in any ROS typestore) from the definitions stored in the MCAP, field for field
equal to rclpy's reading of the same bytes; ``dpm replay --copy-input`` and ``dpm play`` take a bag holding our
types."""
from __future__ import annotations

import subprocess
import sys

import pytest

from dpm_ros.bag import read_messages, write_sequence
from dpm_ros.cli import main as dpm

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out


@pytest.fixture(scope="module")
def outputs_bag(tmp_path_factory):
    pytest.importorskip("dpm_ros.msg")
    from dpm_ros.synthetic import SyntheticSequence

    tmp = tmp_path_factory.mktemp("own_types")
    seq = SyntheticSequence(seed=4, n_frames=6, fps=10.0, height=48, width=64, n_objects=2, renderer="numpy")
    synth = write_sequence(seq, tmp / "synth.mcap")
    out = tmp / "out.mcap"
    assert dpm(["replay", str(synth), "--out", str(out), "--engine", f"oracle:{synth}", "--copy-input",
                "-p", "camera_info_sync:=latest", "--no-progress"]) == 0
    return out


def test_read_messages_reads_object_motion_arrays(outputs_bag):
    from rclpy.serialization import deserialize_message

    from dpm_ros.bag import open_bag
    from dpm_ros.msg import ObjectMotionArray

    ours = list(read_messages(outputs_bag, ["/dpm/objects"]))
    reader = open_bag(outputs_bag)
    try:
        conns = [c for c in reader.connections if c.topic == "/dpm/objects"]
        raw = [deserialize_message(data, ObjectMotionArray) for _, _, data in reader.messages(connections=conns)]
    finally:
        reader.close()
    assert len(ours) == len(raw) == 5 and sum(len(m.objects) for _, _, m in ours) > 0
    for (_, _, a), b in zip(ours, raw):
        assert (a.header.stamp.sec, a.header.stamp.nanosec, a.dt, a.metric) == (
            b.header.stamp.sec, b.header.stamp.nanosec, b.dt, b.metric)
        assert [o.id for o in a.objects] == [o.id for o in b.objects]
        for oa, ob in zip(a.objects, b.objects):
            t, u = oa.motion.translation, ob.motion.translation
            assert (t.x, t.y, t.z) == (u.x, u.y, u.z)
            assert (oa.linear_velocity.x, oa.confidence) == (ob.linear_velocity.x, ob.confidence)


def test_every_bag_reading_command_takes_our_types(outputs_bag, tmp_path):
    # replay of a bag that holds our types, copying them through
    again = tmp_path / "again.mcap"
    assert dpm(["replay", str(outputs_bag), "--out", str(again), "--image-topic", "/camera/image_raw",
                "--engine", "oracle:" + str(outputs_bag.parent / "synth.mcap"), "--copy-input",
                "-p", "camera_info_sync:=latest", "--no-progress"]) == 0
    assert len(list(read_messages(again, ["/dpm/objects"]))) == 2 * 5   # copied + new
    # play publishes them (rclpy classes from the installed dpm_ros.msg)
    r = subprocess.run([sys.executable, "-m", "dpm_ros.cli", "play", str(outputs_bag), "--topics", "/dpm/objects",
                        "/dpm/points", "--rate", "5", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "published 10 messages on 2 topics" in r.stderr, r.stderr
