"""dpm_node with no input: /diagnostics warns and names the topic and QoS it waits on; with use_sim_time its clock
follows /clock (bag replay); Ctrl-C exits cleanly."""
from __future__ import annotations

import dpm_ros.pipeline  # noqa: F401  (a missing or broken module fails here, never skips)

from rosgraph_msgs.msg import Clock  # noqa: E402

from dpm_ros.ros import messages as M  # noqa: E402
from dpm_ros.ros.harness import NodeProcess, Probe  # noqa: E402
import pytest

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out


def test_idle_node_warns_with_topic_and_follows_sim_time(tmp_path):
    from dpm_ros.bag import write_sequence
    from dpm_ros.synthetic import SyntheticSequence

    bag = write_sequence(SyntheticSequence(seed=1, n_frames=2, height=16, width=16, n_objects=1, renderer="numpy"),
                         tmp_path / "s.mcap")
    args = ["--ros-args", "-r", "image:=/front/image_raw", "-p", f"engine:=oracle:{bag}", "-p", "use_sim_time:=true",
            "-p", "diagnostics_period:=0.2"]
    probe = Probe(image_topic="/front/image_raw")
    clock_pub = probe.node.create_publisher(Clock, "/clock", 10)
    try:
        with NodeProcess(args, tmp_path / "node.log") as proc:
            assert probe.wait_connected(120, proc), proc.log()

            def sim_stamped():
                clock_pub.publish(Clock(clock=M.sec_to_stamp(1234.5)))
                return any(d.header.stamp.sec == 1234 for d in probe.got("diagnostics"))
            assert probe.wait_for(sim_stamped, 30, poll=0.1), proc.log()
            assert proc.stop() == 0, proc.log()
    finally:
        probe.close()
    last = [d for d in probe.got("diagnostics") if d.header.stamp.sec == 1234][-1].status[0]
    assert last.level == last.WARN
    assert "no images received on /front/image_raw" in last.message and "qos_reliability=best_effort" in last.message
