"""/dpm/points read by the standard reader, ``sensor_msgs_py.point_cloud2``: our fields (x y z rgb confidence label
vx vy vz) with the values we packed, NaN where the point is invalid, organized (height × width) for full and strided
clouds, after a CDR round trip as a subscriber receives it. Expectations are built from the inputs, not from our
packer, so a broken layout (offsets, types, step, row order) fails here."""
from __future__ import annotations

import numpy as np
import pytest

import ros_tools

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out

ros_tools.require()

NAMES = ("x", "y", "z", "rgb", "confidence", "label", "vx", "vy", "vz")


@pytest.mark.parametrize("h,w,stride", [(6, 8, 1), (7, 9, 2), (11, 5, 3)])
def test_read_points_returns_what_we_packed(h, w, stride):
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import PointCloud2
    from sensor_msgs_py import point_cloud2
    from std_msgs.msg import Header

    from dpm_ros.pointcloud import build_cloud
    from dpm_ros.ros.messages import pointcloud_msg

    rng = np.random.default_rng(h * 100 + stride)
    pts = rng.normal(size=(h, w, 3)).astype(np.float32)
    pts[..., 2] = np.abs(pts[..., 2]) + 0.5
    pts[0, 1] = np.nan                                   # a non-finite point
    col = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    conf = rng.uniform(0, 5, (h, w)).astype(np.float32)
    lab = rng.integers(0, 70000 // 10, (h, w)).astype(np.uint16) * 9   # up to ~63000: the full uint16 range
    vel = rng.normal(size=(h, w, 3)).astype(np.float32)
    valid = rng.random((h, w)) > 0.25
    cloud = build_cloud(pts, col, conf, lab, vel, valid=valid, stride=stride)
    msg = deserialize_message(serialize_message(pointcloud_msg(Header(frame_id="cam"), cloud)), PointCloud2)

    flat = point_cloud2.read_points(msg, skip_nans=False)
    assert flat.dtype.names == NAMES
    s = slice(None, None, stride)
    hh, ww = len(range(0, h, stride)), len(range(0, w, stride))
    assert (msg.height, msg.width) == (hh, ww) and flat.shape == (hh * ww,)
    # row-major, row_step apart (PointCloud2's definition). Note: this sensor_msgs_py's reshape_organized_cloud=True
    # reshapes to (width, height), which scrambles any organized cloud with height > 1; reshape yourself.
    got = flat.reshape(msg.height, msg.width)
    ok = valid[s, s] & np.isfinite(pts[s, s]).all(-1)
    assert 0 < ok.sum() < ok.size
    for k, name in enumerate(("x", "y", "z")):
        np.testing.assert_array_equal(got[name], np.where(ok, pts[s, s][..., k], np.nan))
    for k, name in enumerate(("vx", "vy", "vz")):
        np.testing.assert_array_equal(got[name], np.where(ok, vel[s, s][..., k], np.nan))
    np.testing.assert_array_equal(got["confidence"], conf[s, s])
    np.testing.assert_array_equal(got["label"], np.where(ok, lab[s, s], 0))
    c = col[s, s].astype(np.uint32)
    np.testing.assert_array_equal(np.ascontiguousarray(got["rgb"]).view(np.uint32),
                                  (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2])
    # skip_nans drops exactly the invalid points; read_points_numpy reads the positions as one float array
    assert len(point_cloud2.read_points(msg, field_names=("x", "y", "z"), skip_nans=True)) == ok.sum()
    xyz = point_cloud2.read_points_numpy(msg, field_names=("x", "y", "z"))
    np.testing.assert_array_equal(xyz.reshape(hh, ww, 3), np.where(ok[..., None], pts[s, s], np.nan))
