"""Pure functions from DPM results to ROS messages (no node needed).

The node and ``dpm replay`` both build their outputs here, so replay output is bit-identical to the node's. Frames:
every per-pair output is in camera 1's optical frame (REP 103: z forward, x right, y down), stamped with I1's stamp;
positions in metres when the scale is metric, else model units; velocities per second.
"""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose, Quaternion, Transform, TransformStamped, Vector3
from nav_msgs.msg import Odometry
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import Marker, MarkerArray

from dpm_ros.msg import ObjectMotion, ObjectMotionArray
from dpm_ros.pointcloud import FIELDS, cloud_bytes, cloud_layout
from dpm_ros.engine.pair_io import crop_box
from dpm_ros.geometry.motion import object_velocities
from dpm_ros.ros.image_convert import fill_image, image_msg_into, nearest_into

# --- small conversions ------------------------------------------------------------------------------------------


def calibration(msg):
    """sensor_msgs/CameraInfo → ``stream.step.Calibration`` (its stamp in seconds, K, D, image size)."""
    from dpm_ros.stream.step import Calibration

    return Calibration(stamp_to_sec(msg.header.stamp), msg.k, msg.d, msg.height, msg.width, msg.distortion_model)


def stamp_to_sec(stamp) -> float:
    """builtin_interfaces/Time → seconds."""
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def header_at(stamp_ns: int, frame_id: str) -> Header:
    """A Header at ``stamp_ns`` (integer nanoseconds, exact) in ``frame_id``."""
    return Header(stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000), frame_id=frame_id)


def sec_to_stamp(t: float) -> Time:
    """Seconds → builtin_interfaces/Time (nanoseconds rounded)."""
    ns = int(round(t * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def copy_header(header, frame_id: str | None = None) -> Header:
    """A new Header with ``header``'s stamp and frame_id (or ``frame_id`` when given)."""
    return Header(stamp=Time(sec=header.stamp.sec, nanosec=header.stamp.nanosec),
                  frame_id=header.frame_id if frame_id is None else frame_id)


def quaternion(R: np.ndarray) -> Quaternion:
    x, y, z, w = Rotation.from_matrix(np.asarray(R, float)).as_quat()
    return Quaternion(x=float(x), y=float(y), z=float(z), w=float(w))


def vector3(v) -> Vector3:
    return Vector3(x=float(v[0]), y=float(v[1]), z=float(v[2]))


def transform_msg(T: np.ndarray) -> Transform:
    """4×4 homogeneous transform → geometry_msgs/Transform."""
    return Transform(translation=vector3(T[:3, 3]), rotation=quaternion(T[:3, :3]))


def transform_to_matrix(tf) -> np.ndarray:
    """geometry_msgs/Transform → 4×4."""
    T = np.eye(4)
    q = tf.rotation
    T[:3, :3] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
    T[:3, 3] = [tf.translation.x, tf.translation.y, tf.translation.z]
    return T


# --- images and clouds ------------------------------------------------------------------------------------------


def pointcloud_msg(header: Header, cloud: np.ndarray) -> PointCloud2:
    """Organized PointCloud2 from a ``dpm_ros.pointcloud`` structured array (H, W)."""
    lay = cloud_layout(cloud)
    msg = PointCloud2(header=header, height=lay["height"], width=lay["width"], is_bigendian=False,
                      point_step=lay["point_step"], row_step=lay["row_step"], is_dense=lay["is_dense"])
    msg.fields = [PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in FIELDS]
    msg.data = cloud_bytes(cloud)
    return msg


def motion_mask_msg(header: Header, mask: np.ndarray, height: int, width: int) -> Image:
    """mono8 at the INPUT resolution (height × width): 255 moving, 0 static (nearest-neighbour upsampling into the
    engine's centre crop, 0 outside it, written straight into the message's buffer from the small mask)."""
    msg = Image(header=header)
    small = np.where(np.asarray(mask, bool), np.uint8(255), np.uint8(0))
    _uncrop_into(small, image_msg_into(msg, height, width, "mono8"))
    return msg


def labels_msg(header: Header, labels: np.ndarray, height: int, width: int) -> Image:
    """mono16 object ids at the INPUT resolution (0 static; 0 outside the engine's centre crop), upsampled straight
    into the message's buffer."""
    msg = Image(header=header)
    _uncrop_into(np.asarray(labels, np.uint16), image_msg_into(msg, height, width, "mono16"))
    return msg


def _uncrop_into(small: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``small`` (h, w) upsampled into the engine's centre-crop window of the zeroed input-size ``out`` (H, W)."""
    top, left, ch, cw = crop_box(out.shape[0], out.shape[1], small.shape[0], small.shape[1])
    nearest_into(small, out[top:top + ch, left:left + cw])
    return out


def depth_msg(header: Header, depth: np.ndarray) -> Image:
    """32FC1 depth z (metres or model units) at the output resolution; NaN where invalid."""
    return fill_image(Image(header=header), np.asarray(depth, np.float32), "32FC1")


def camera_info_msg(header: Header, K: np.ndarray, height: int, width: int) -> CameraInfo:
    """Pinhole CameraInfo (no distortion) for intrinsics K (pixels) at resolution height × width."""
    K = np.asarray(K, float)
    P = np.zeros((3, 4))
    P[:, :3] = K
    return CameraInfo(header=header, height=int(height), width=int(width), distortion_model="plumb_bob",
                      d=[0.0] * 5, k=K.ravel().tolist(), r=np.eye(3).ravel().tolist(), p=P.ravel().tolist())


# --- objects ----------------------------------------------------------------------------------------------------


def _velocities(objects: list, dt: float, velocities: list | None) -> list:
    return velocities if velocities is not None else [object_velocities(o, dt) for o in objects]


def objects_msg(header: Header, objects: list, dt: float, metric: bool,
                velocities: list | None = None) -> ObjectMotionArray:
    """ObjectMotionArray of ``dpm_ros.pipeline.ObjectMotion`` objects; ``dt`` = t2 − t1 in seconds (negative);
    ``velocities``: (linear, angular) per object (``geometry.motion.object_velocities``; computed when None)."""
    out = []
    for o, (lin, ang) in zip(objects, _velocities(objects, dt, velocities)):
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = o.R, o.t
        c = np.asarray(o.centroid, float)
        out.append(ObjectMotion(id=int(o.id), motion=transform_msg(T), linear_velocity=vector3(lin),
                                angular_velocity=vector3(ang), centroid=Point(x=c[0], y=c[1], z=c[2]),
                                extent=vector3(o.extent), confidence=float(o.confidence),
                                point_count=int(o.n_points)))
    return ObjectMotionArray(header=header, dt=float(dt), metric=bool(metric), objects=out)


def _colour(obj_id: int) -> ColorRGBA:
    hue = (obj_id * 0.618033988749895) % 1.0
    r, g, b = (np.clip(np.abs((hue * 6 + np.array([0, 4, 2])) % 6 - 3) - 1, 0, 1)).tolist()
    return ColorRGBA(r=float(r), g=float(g), b=float(b), a=0.6)


def markers_msg(header: Header, objects: list, dt: float, ns: str = "dpm_objects",
                velocities: list | None = None) -> MarkerArray:
    """A DELETEALL, then per object a box (centroid, extent) and an arrow of 1 s of linear velocity."""
    markers = [Marker(header=header, ns=ns, action=Marker.DELETEALL)]
    for o, (lin, _) in zip(objects, _velocities(objects, dt, velocities)):
        c = np.asarray(o.centroid, float)
        colour = _colour(int(o.id))
        size = np.maximum(np.asarray(o.extent, float), 0.01)
        markers.append(Marker(header=header, ns=ns, id=2 * int(o.id), type=Marker.CUBE, action=Marker.ADD,
                              pose=Pose(position=Point(x=c[0], y=c[1], z=c[2]), orientation=Quaternion(w=1.0)),
                              scale=vector3(size), color=colour))
        tip = c + lin
        markers.append(Marker(header=header, ns=ns, id=2 * int(o.id) + 1, type=Marker.ARROW, action=Marker.ADD,
                              pose=Pose(orientation=Quaternion(w=1.0)),
                              points=[Point(x=c[0], y=c[1], z=c[2]), Point(x=tip[0], y=tip[1], z=tip[2])],
                              scale=Vector3(x=0.02, y=0.05, z=0.05), color=colour))
    return MarkerArray(markers=markers)


# --- ego-motion -------------------------------------------------------------------------------------------------


def odometry_msg(stamp, odom_frame: str, child_frame: str, T_odom_child: np.ndarray, linear: np.ndarray,
                 angular: np.ndarray) -> Odometry:
    """nav_msgs/Odometry: pose of ``child_frame`` in ``odom_frame``; twist in ``child_frame`` (REP 105)."""
    msg = Odometry(header=Header(stamp=stamp, frame_id=odom_frame), child_frame_id=child_frame)
    p = T_odom_child[:3, 3]
    msg.pose.pose = Pose(position=Point(x=float(p[0]), y=float(p[1]), z=float(p[2])),
                         orientation=quaternion(T_odom_child[:3, :3]))
    msg.twist.twist.linear = vector3(linear)
    msg.twist.twist.angular = vector3(angular)
    return msg


def tf_msg(stamp, parent: str, child: str, T_parent_child: np.ndarray) -> TFMessage:
    """TFMessage with one transform: pose of ``child`` in ``parent`` (p_parent = T p_child)."""
    return TFMessage(transforms=[TransformStamped(header=Header(stamp=stamp, frame_id=parent), child_frame_id=child,
                                                  transform=transform_msg(T_parent_child))])


# --- diagnostics ------------------------------------------------------------------------------------------------

LEVELS = {"ok": DiagnosticStatus.OK, "warn": DiagnosticStatus.WARN, "error": DiagnosticStatus.ERROR,
          "stale": DiagnosticStatus.STALE}


def diagnostics_msg(stamp, name: str, hardware_id: str, level: str, message: str, values: dict) -> DiagnosticArray:
    """One DiagnosticStatus; ``values`` become KeyValue strings (floats with 6 significant digits)."""
    kv = [KeyValue(key=str(k), value=f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in values.items()]
    status = DiagnosticStatus(level=LEVELS[level], name=name, message=message, hardware_id=hardware_id, values=kv)
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])
