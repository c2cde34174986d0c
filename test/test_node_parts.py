"""Node parts that need no running node: the parameter table vs config/dpm.yaml, descriptors, /tf_static lookups,
diagnostic counters."""
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from rcl_interfaces.msg import ParameterType
from tf2_msgs.msg import TFMessage

from dpm_ros.ros import messages as M
from dpm_ros.ros.diagnostics import NodeHealth, RateMeter
from dpm_ros.geometry.procrustes import invert_se3
from dpm_ros.config import PARAMS
from dpm_ros.ros.params import descriptor
from dpm_ros.ros.static_tf import StaticTransforms
from scipy.spatial.transform import Rotation

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out

ROOT = Path(__file__).resolve().parents[1]


def pose(rotvec, t):
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    T[:3, 3] = t
    return T


def test_config_yaml_lists_every_parameter_with_its_default_unit_and_comment():
    text = (ROOT / "config" / "dpm.yaml").read_text()
    values = yaml.safe_load(text)["/**"]["ros__parameters"]
    assert list(values) == [p.name for p in PARAMS]
    for p in PARAMS:
        assert values[p.name] == p.default and type(values[p.name]) is type(p.default), p.name
        block = re.search(rf"((?:    #.*\n)+)    {p.name}:", text).group(1)
        assert "unit:" in block and "default:" in block, p.name


def test_descriptors_types_ranges_and_read_only():
    d = {p.name: descriptor(p) for p in PARAMS}
    assert d["eps_rel"].type == ParameterType.PARAMETER_DOUBLE and not d["eps_rel"].read_only
    assert d["eps_rel"].floating_point_range[0].to_value == 1.0
    assert d["pair_interval"].read_only and d["engine"].read_only
    assert d["min_object_pixels"].integer_range[0].from_value == 1
    assert d["publish_tf"].type == ParameterType.PARAMETER_BOOL
    assert "(one of: best_effort, reliable)" in d["qos_reliability"].description


def test_static_transform_chain_lookup_both_directions():
    T_base_mount = pose([0, 0, 0.3], [0.1, 0, 0.5])
    T_mount_cam = pose([-np.pi / 2, 0, -np.pi / 2], [0, 0.05, 0])
    msg = TFMessage(transforms=[M.tf_msg(M.sec_to_stamp(0), "base_link", "mount", T_base_mount).transforms[0],
                                M.tf_msg(M.sec_to_stamp(0), "mount", "cam_optical", T_mount_cam).transforms[0]])
    st = StaticTransforms()
    assert st.lookup("base_link", "cam_optical") is None
    st.add_message(msg)
    np.testing.assert_allclose(st.lookup("base_link", "cam_optical"), T_base_mount @ T_mount_cam, atol=1e-9)
    np.testing.assert_allclose(st.lookup("cam_optical", "/base_link"), invert_se3(T_base_mount @ T_mount_cam),
                               atol=1e-9)
    assert st.lookup("base_link", "elsewhere") is None


def test_rate_meter_and_health_report():
    r = RateMeter(window=10)
    for k in range(11):
        r.tick(now=100 + 0.1 * k)
    assert r.rate(now=101.0) == pytest.approx(10.0)
    h = NodeHealth()
    h.frame_in()
    h.error("encoding", "image encoding 'mono16' not supported")
    level, text, values = h.report({"no_partner": 1}, dropped_pairs=2)
    assert level == "warn" and "mono16" in text
    assert values["errors_encoding"] == 1 and values["pairs_dropped"] == 2 and values["no_partner"] == 1
    h.pair_done(50.0, 70.0)
    level, _, values = h.report({}, 0)
    assert level == "ok" and values["latency_ms_last"] == 70.0
