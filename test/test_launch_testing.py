"""launch_testing test of launch/dpm.launch.py: the launch file's node comes up with the given remaps, namespace and
engine, turns published frames into /<ns>/dpm/points, and exits cleanly (code 0) when launch shuts it down.

Runs under pytest (launch_testing's pytest plugin collects it) and on its own:
``launch_test test/test_launch_testing.py`` (after ``. scripts/ros_env.sh``; the module sets DDS loopback itself).
Needs the vendored ROS 2 tools (scripts/setup.sh installs them where ../shared/ros/vendor exists)."""
from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
import time
import unittest
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))          # launch_test runs this file without conftest: source tree first
sys.path.insert(0, str(ROOT / "test"))
import ros_tools  # noqa: E402

ros_tools.require()

from dpm_ros.dds_env import loopback_env  # noqa: E402

import os  # noqa: E402

if "FASTDDS_DEFAULT_PROFILES_FILE" not in os.environ:   # under pytest conftest did it; under launch_test do it here
    loopback_env()
os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)

import launch_testing  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from launch import LaunchDescription  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out

NS, IMAGE, INFO = "lt", "/lt_cam/image", "/lt_cam/info"
H, W, FRAMES = 48, 64, 4
_TMP = Path(tempfile.mkdtemp(prefix="dpm_launch_test_"))
atexit.register(shutil.rmtree, _TMP, True)


def _synthetic_bag() -> Path:
    from dpm_ros.bag import write_sequence
    from dpm_ros.synthetic import SyntheticSequence

    seq = SyntheticSequence(seed=11, n_frames=FRAMES, fps=10.0, height=H, width=W, n_objects=1, renderer="numpy")
    return write_sequence(seq, _TMP / "seq.mcap")


@pytest.mark.launch_test
def generate_test_description():
    bag = _synthetic_bag()
    include = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(ROOT / "launch" / "dpm.launch.py")),
        launch_arguments={"image": IMAGE, "camera_info": INFO, "engine": f"oracle:{bag}", "namespace": NS,
                          "params_file": str(ROOT / "config" / "dpm.yaml")}.items())
    return LaunchDescription([include, launch_testing.actions.ReadyToTest()]), {"bag": bag}


class TestDpmLaunch(unittest.TestCase):
    """While the launch runs: the node is up and turns frames into clouds on the remapped, namespaced topics."""

    def test_node_processes_frames(self, proc_output, bag):
        from sensor_msgs.msg import Image
        from std_msgs.msg import Header

        from dpm_ros.bag import read_images
        from dpm_ros.ros import messages as M
        from dpm_ros.ros.harness import Probe
        from dpm_ros.ros.image_convert import fill_image

        proc_output.assertWaitFor("dpm_node ready", timeout=120, stream="stderr")
        probe = Probe(namespace=NS, image_topic=IMAGE, camera_info_topic=INFO)
        try:
            self.assertTrue(probe.wait_connected(60), "the launched node never subscribed to " + IMAGE)
            for ns, img, _ in read_images(bag):
                header = Header(stamp=M.sec_to_stamp(ns * 1e-9), frame_id="camera_optical")
                probe.image_pub.publish(fill_image(Image(header=header), img, "rgb8"))
                time.sleep(0.2)
            self.assertTrue(probe.wait_for(lambda: len(probe.got("dpm/points")) >= FRAMES - 1, 60),
                            f"{len(probe.got('dpm/points'))} clouds for {FRAMES - 1} pairs")
            pc = probe.got("dpm/points")[-1]
            self.assertEqual((pc.height, pc.width, pc.header.frame_id), (H, W, "camera_optical"))
        finally:
            probe.close()


@launch_testing.post_shutdown_test()
class TestDpmLaunchShutdown(unittest.TestCase):
    """After launch shut everything down: the node exited with code 0 (a clean shutdown, no traceback)."""

    def test_exit_code_zero(self, proc_info, proc_output):
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0])
        for out in proc_output:
            self.assertNotIn("Traceback", out.text.decode(errors="replace"))
