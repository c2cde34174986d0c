"""test/ros_tools.require(): without ../shared/ros/vendor (a user's clone) the tests that need the ROS 2 tools skip
and say why; where the vendored sources exist but were not installed they fail (CI has ../shared: no silent skip)."""
from __future__ import annotations

import pytest

import ros_tools

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out


def test_require_skips_without_vendor_and_fails_with_it(monkeypatch, tmp_path):
    monkeypatch.setattr(ros_tools, "MODULES", ("launch_ros", "no_such_ros_tool_xyz"))
    monkeypatch.setattr(ros_tools, "VENDOR", tmp_path / "absent")
    with pytest.raises(pytest.skip.Exception, match=r"no_such_ros_tool_xyz not installed .*scripts/setup\.sh"):
        ros_tools.require()
    monkeypatch.setattr(ros_tools, "VENDOR", tmp_path)
    with pytest.raises(pytest.fail.Exception, match=r"no_such_ros_tool_xyz are not installed although .*setup\.sh"):
        ros_tools.require()
    monkeypatch.setattr(ros_tools, "MODULES", ("launch_ros",))
    if ros_tools.VENDOR.is_dir() and not ros_tools.missing():
        ros_tools.require()   # installed: nothing happens
