"""The real ROS 2 Python tools (launch, launch_ros, launch_testing, ros2cli, sensor_msgs_py): not on PyPI;
``scripts/setup.sh`` installs them into .venv from ``../shared/ros/vendor`` when that folder exists. Tests that need
them call ``require()``: a skip that says why on a user's clone without ../shared, a failure where the vendored
sources are present but were not installed (CI has ../shared: these tests must run there)."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENDOR = Path(os.environ.get("DPM_ROS_VENDOR", ROOT.parent / "shared" / "ros" / "vendor"))
MODULES = ("launch", "launch_ros", "launch_testing", "launch_testing_ros", "ros2cli", "ros2launch", "ros2topic",
           "ros2param", "ros2node", "sensor_msgs_py")


def missing() -> list[str]:
    return [m for m in MODULES if importlib.util.find_spec(m) is None]


def require() -> None:
    gone = missing()
    if not gone:
        return
    if VENDOR.is_dir():
        pytest.fail(f"ROS 2 tools {', '.join(gone)} are not installed although their sources are at {VENDOR}: "
                    "run scripts/setup.sh")
    pytest.skip(f"ROS 2 tools {', '.join(gone)} not installed (not on PyPI; scripts/setup.sh installs them from "
                f"../shared/ros/vendor, absent here; on a ROS install they come with ROS)", allow_module_level=True)


def tool(name: str) -> str:
    """Path of a console script (ros2, launch_test, dpm, dpm_node) next to this interpreter."""
    return str(Path(sys.executable).with_name(name))
