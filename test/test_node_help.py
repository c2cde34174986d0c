"""``dpm_node --help``: the topics, every parameter of the one table (name, unit, default) and an example, exit 0 in
under 3 s with no rclpy start; ``--ros-args --help`` the same, and bad ROS arguments one line, no traceback."""
from __future__ import annotations

import subprocess
import time

import ros_tools

from dpm_ros.ros.node_help import _default
from dpm_ros.config import PARAMS


def _node(*args, timeout=30):
    t0 = time.monotonic()
    r = subprocess.run([ros_tools.tool("dpm_node"), *args], capture_output=True, text=True, timeout=timeout)
    return r, time.monotonic() - t0


def test_help_lists_topics_parameters_and_example_fast():
    r, wall = _node("--help")
    assert r.returncode == 0, r.stderr
    assert wall < 3.0, f"dpm_node --help took {wall:.2f} s"
    out = r.stdout
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and line.split()}
    for p in PARAMS:
        assert p.name in rows, p.name
        cols = rows[p.name].split()
        assert cols[1] == p.unit and cols[2] == _default(p.default), rows[p.name]
    for topic in ("image", "camera_info", "dpm/points", "dpm/objects", "/diagnostics"):
        assert topic in rows, topic
    assert "ros2 launch dpm_ros dpm.launch.py" in out and "--params-file" in out
    assert "Traceback" not in r.stderr


def test_ros_args_help_and_bad_ros_args():
    r, _ = _node("--ros-args", "--help")
    assert r.returncode == 0 and "eps_rel" in r.stdout and "Traceback" not in r.stderr, r.stderr
    r, _ = _node("--ros-args", "--no-such-flag", timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().startswith("dpm_node: error:") and "--help" in r.stderr, r.stderr
