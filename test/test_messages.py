"""Result → message conversion without a node: headers, sizes, cloud layout, object velocities, serialisation."""
from types import SimpleNamespace

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from dpm_ros.msg import ObjectMotionArray
from dpm_ros.pipeline import ObjectMotion
from dpm_ros.pointcloud import cloud_from_bytes
from dpm_ros.ros import messages as M
from dpm_ros.ros.outputs import OutputOptions, pair_messages, relabel

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out


def fake_result(h=12, w=16, dt=-0.2):
    rng = np.random.default_rng(3)
    v, u = np.mgrid[0:h, 0:w]
    z = 2.0 + rng.uniform(0, 1, (h, w))
    p1 = np.stack([(u - w / 2) * z / 20, (v - h / 2) * z / 20, z], -1).astype(np.float32)
    labels = np.zeros((h, w), np.uint16)
    labels[2:6, 3:8] = 1
    labels[8:11, 10:14] = 2
    R = Rotation.from_rotvec([0, 0.1, 0]).as_matrix()
    t = np.array([0.3, 0.0, 0.1])
    p2 = p1.copy()
    m = labels == 1
    p2[m] = p1[m] @ R.T + t
    obj = ObjectMotion(id=1, R=R, t=t, centroid=p1[m].mean(0), extent=np.ptp(p1[m], 0), confidence=2.5,
                       n_points=int(m.sum()))
    obj2 = ObjectMotion(id=2, R=np.eye(3), t=np.zeros(3), centroid=np.ones(3), extent=np.ones(3),
                        confidence=1.0, n_points=12)
    conf = np.full((h, w), 3.0, np.float32)
    conf[0, 0] = 0.5
    return SimpleNamespace(maps={"p1_t1_pi1": p1, "p1_t2_pi1": p2, "conf_p1_t1_pi1": conf}, K=np.diag([20, 20, 1.0]),
                           motion_mask1=labels > 0, labels1=labels, objects=[obj, obj2], dt=dt)


HEADER = Header(frame_id="cam_optical")
HEADER.stamp.sec, HEADER.stamp.nanosec = 12, 345


def test_pair_messages_contract():
    res = fake_result()
    img = np.zeros((48, 64, 3), np.uint8)
    img[..., 0] = 200
    out = pair_messages(res, HEADER, img, ids=[7, 9], options=OutputOptions(cloud_min_confidence=1.0))
    for msg in out.values():
        hdr = msg.markers[0].header if hasattr(msg, "markers") else msg.header
        assert (hdr.stamp.sec, hdr.stamp.nanosec, hdr.frame_id) == (12, 345, "cam_optical")
    mask = out["dpm/motion_mask"]
    assert (mask.height, mask.width, mask.encoding) == (48, 64, "mono8")
    mk = np.frombuffer(mask.data, np.uint8).reshape(48, 64)
    assert set(np.unique(mk)) == {0, 255} and mk[4 * 3, 4 * 4] == 255 and mk[0, 0] == 0
    lab = np.frombuffer(out["dpm/object_labels"].data, "<u2").reshape(48, 64)
    assert set(np.unique(lab)) == {0, 7, 9}
    pc = out["dpm/points"]
    assert (pc.height, pc.width, pc.point_step, pc.row_step, pc.is_dense) == (12, 16, 36, 576, False)
    cloud = cloud_from_bytes(pc.data, 12, 16)
    assert np.isnan(cloud["x"][0, 0])          # confidence 0.5 < 1.0
    m = res.labels1 == 1
    vel = np.stack([cloud["vx"], cloud["vy"], cloud["vz"]], -1)[m]
    expect = (res.maps["p1_t2_pi1"][m] - res.maps["p1_t1_pi1"][m]) / -0.2
    np.testing.assert_allclose(vel, expect, rtol=1e-5)
    assert (cloud["label"][m] == 7).all()
    depth = np.frombuffer(out["dpm/depth"].data, "<f4").reshape(12, 16)
    np.testing.assert_array_equal(depth[1:], res.maps["p1_t1_pi1"][1:, :, 2])
    ci = out["dpm/camera_info"]
    assert (ci.height, ci.width, ci.k[0], ci.p[0]) == (12, 16, 20.0, 20.0)


def test_object_velocities_from_rigid_motion():
    res = fake_result()
    out = pair_messages(res, HEADER, np.zeros((12, 16, 3), np.uint8), ids=[7, 9])
    arr = out["dpm/objects"]
    assert [o.id for o in arr.objects] == [7, 9] and arr.dt == -0.2
    o = arr.objects[0]
    c = res.objects[0].centroid
    lin = (res.objects[0].R @ c + res.objects[0].t - c) / -0.2
    np.testing.assert_allclose([o.linear_velocity.x, o.linear_velocity.y, o.linear_velocity.z], lin, rtol=1e-9)
    np.testing.assert_allclose(o.angular_velocity.y, 0.1 / -0.2, rtol=1e-9)
    T = M.transform_to_matrix(o.motion)
    np.testing.assert_allclose(T[:3, :3], res.objects[0].R, atol=1e-12)
    assert o.point_count == res.objects[0].n_points
    mk = out["dpm/objects/markers"].markers
    assert len(mk) == 1 + 2 * 2 and mk[0].action == mk[0].DELETEALL


def _same(a, b, path="", ros_type="") -> list[str]:
    """Field-by-field differences between an rclpy message ``a`` and a rosbags dataclass ``b`` (NaN == NaN; a
    ``float`` (float32) field of ``a`` is compared after rounding to float32, as the wire carries it)."""
    if hasattr(a, "get_fields_and_field_types"):
        return [d for f, t in a.get_fields_and_field_types().items()
                for d in _same(getattr(a, f), getattr(b, f), f"{path}.{f}", t)]
    if ros_type == "float":
        a = np.float32(a)
    if isinstance(a, (list, tuple)) and a and hasattr(a[0], "get_fields_and_field_types"):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _same(x, y, f"{path}[{i}]")]
    if isinstance(a, str):
        return [] if a == b else [f"{path}: {a!r} vs {b!r}"]
    x, y = np.asarray(a), np.asarray(b)
    ok = x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
    return [] if ok else [f"{path}: {x!r:.80} vs {y!r:.80}"]


def test_messages_serialise_and_read_back_by_an_independent_cdr_reader():
    """rclpy's C serialiser writes each output; rosbags' pure-Python CDR reader (its own definitions of the ROS 2
    types, and dpm_ros/msg from msg/*.msg) reads it back with every field equal."""
    from dpm_ros.ros.bag_recorder import bag_typestore
    out = pair_messages(fake_result(), HEADER, np.zeros((12, 16, 3), np.uint8))
    for key, msg in out.items():
        msgtype = f"{type(msg).__module__.split('.')[0]}/msg/{type(msg).__name__}"
        raw = serialize_message(msg)
        back = bag_typestore([msgtype]).deserialize_cdr(raw, msgtype)
        assert _same(msg, back) == [], (key, _same(msg, back)[:5])
        assert _same(deserialize_message(raw, type(msg)), back) == [], key   # and rclpy's own reader agrees
    pc = deserialize_message(serialize_message(out["dpm/points"]), PointCloud2)
    assert [f.name for f in pc.fields] == ["x", "y", "z", "rgb", "confidence", "label", "vx", "vy", "vz"]
    assert isinstance(out["dpm/objects"], ObjectMotionArray)


def test_relabel_and_transform_round_trip():
    lab = np.array([[0, 1], [2, 2]], np.uint16)
    objs = [SimpleNamespace(id=1), SimpleNamespace(id=2)]
    assert relabel(lab, objs, [40, 3]).tolist() == [[0, 40], [3, 3]]
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec([0.1, -0.2, 0.3]).as_matrix()
    T[:3, 3] = [1, 2, 3]
    np.testing.assert_allclose(M.transform_to_matrix(M.transform_msg(T)), T, atol=1e-12)
    assert M.stamp_to_sec(M.sec_to_stamp(1234.000000123)) == 1234.000000123


def test_odometry_and_tf_and_diagnostics():
    T = np.eye(4)
    T[:3, 3] = [1, 2, 3]
    st = M.sec_to_stamp(5.5)
    od = M.odometry_msg(st, "odom", "base_link", T, np.array([1.0, 0, 0]), np.zeros(3))
    assert od.header.frame_id == "odom" and od.child_frame_id == "base_link" and od.pose.pose.position.z == 3
    tf = M.tf_msg(st, "odom", "base_link", T)
    assert tf.transforms[0].transform.translation.y == 2 and tf.transforms[0].header.stamp.sec == 5
    assert (tf.transforms[0].header.frame_id, tf.transforms[0].child_frame_id) == ("odom", "base_link")
    d = M.diagnostics_msg(st, "dpm_node: pipeline", "cpu", "warn", "drops", {"drops": 3, "rate_hz": 9.87654321})
    assert d.status[0].level == d.status[0].WARN
    assert {kv.key: kv.value for kv in d.status[0].values} == {"drops": "3", "rate_hz": "9.87654"}


# --- /dpm/points read the way a consumer reads it: by the message's declared fields, not by our own dtype ---------
# Hand-computed from the documented layout (dpm_ros/pointcloud.py's table), independent of POINT_DTYPE / FIELDS:
# name -> (byte offset, PointField datatype, numpy type). 36-byte points, little-endian.
LAYOUT = {"x": (0, 7, "<f4"), "y": (4, 7, "<f4"), "z": (8, 7, "<f4"), "rgb": (12, 7, "<f4"),
          "confidence": (16, 7, "<f4"), "label": (20, 4, "<u2"), "vx": (24, 7, "<f4"), "vy": (28, 7, "<f4"),
          "vz": (32, 7, "<f4")}


def _cloud_case():
    """A cloud whose every field differs per point and from every other field, so a swapped offset shows."""
    from dpm_ros.pointcloud import build_cloud
    h, w = 3, 4
    rng = np.random.default_rng(11)
    pts = rng.uniform(1, 2, (h, w, 3)).astype(np.float32)
    vel = (rng.uniform(-3, -2, (h, w, 3)) * [1, 10, 100]).astype(np.float32)
    conf = rng.uniform(5, 6, (h, w)).astype(np.float32)
    lab = np.arange(h * w, dtype=np.uint16).reshape(h, w) + 300
    rgb = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    return pts, vel, conf, lab, rgb, build_cloud(pts, colors=rgb, confidence=conf, labels=lab, velocity=vel)


def _read_declared(msg, name):
    """Field ``name`` of every point, decoded at the offset and type the message DECLARES (as RViz/PCL would)."""
    f = next(f for f in msg.fields if f.name == name)
    dtype = {7: "<f4", 4: "<u2"}[f.datatype]
    rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(-1, msg.point_step)
    raw = rows[:, f.offset:f.offset + np.dtype(dtype).itemsize]
    return np.ascontiguousarray(raw).view(dtype).reshape(msg.height, msg.width)


def test_pointcloud_msg_fields_match_the_hand_computed_layout_and_bytes():
    pts, vel, conf, lab, rgb, cloud = _cloud_case()
    msg = M.pointcloud_msg(HEADER, cloud)
    assert {f.name: (f.offset, f.datatype, f.count) for f in msg.fields} == {
        k: (off, dt, 1) for k, (off, dt, _) in LAYOUT.items()}
    assert (msg.point_step, msg.row_step, msg.is_bigendian, len(msg.data)) == (36, 36 * 4, False, 36 * 12)
    data = np.frombuffer(bytes(msg.data), np.uint8).reshape(12, 36)
    for name, (off, _, typ) in LAYOUT.items():       # the bytes at the hand offsets hold the right values
        got = np.ascontiguousarray(data[:, off:off + np.dtype(typ).itemsize]).view(typ).reshape(3, 4)
        want = {"x": pts[..., 0], "y": pts[..., 1], "z": pts[..., 2], "vx": vel[..., 0], "vy": vel[..., 1],
                "vz": vel[..., 2], "confidence": conf, "label": lab,
                "rgb": ((rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8)
                        | rgb[..., 2]).view(np.float32)}[name]
        np.testing.assert_array_equal(got.view(np.uint8), np.ascontiguousarray(want, typ).view(np.uint8), err_msg=name)
    for name in ("vx", "vy", "vz", "label"):           # and a consumer reading the declared fields agrees
        want = {"vx": vel[..., 0], "vy": vel[..., 1], "vz": vel[..., 2], "label": lab}[name]
        np.testing.assert_array_equal(_read_declared(msg, name), want, err_msg=name)
    assert np.all(data[:, 22:24] == 0)                 # the label's 2 padding bytes


def test_pointcloud_msg_read_by_sensor_msgs_py():
    """The ROS reference reader (sensor_msgs_py.point_cloud2, vendored from common_interfaces; scripts/setup.sh
    installs it where it can) decodes the message by its declared fields."""
    try:
        from sensor_msgs_py import point_cloud2
    except ImportError:
        pytest.skip("sensor_msgs_py is not installed in this environment (the hand-computed layout test runs)")
    pts, vel, conf, lab, rgb, cloud = _cloud_case()
    msg = M.pointcloud_msg(HEADER, cloud)
    arr = point_cloud2.read_points(msg, field_names=["x", "y", "z", "label", "vx", "vy", "vz", "confidence"],
                                   skip_nans=False)
    got = {n: np.asarray(arr[n]).reshape(3, 4) for n in arr.dtype.names}
    np.testing.assert_array_equal(got["x"], pts[..., 0])
    np.testing.assert_array_equal(got["z"], pts[..., 2])
    np.testing.assert_array_equal(got["vx"], vel[..., 0])
    np.testing.assert_array_equal(got["vy"], vel[..., 1])
    np.testing.assert_array_equal(got["vz"], vel[..., 2])
    np.testing.assert_array_equal(got["label"], lab)
    np.testing.assert_array_equal(got["confidence"], conf)
