"""``dpm_node --help``: topics, every parameter (name, unit, default, from ``dpm_ros.config.PARAMS``) and an example.

No rclpy here: the ``dpm_node`` executable calls ``main`` of this module, which prints the help and exits before
rclpy, torch or the engine are imported (fast, and no DDS participant for a ``--help``).
"""
from __future__ import annotations

import sys
from typing import Optional

from dpm_ros.config import PARAMS

# relative names: resolved in the node's namespace; remap with -r NAME:=/your/topic
INPUT_TOPICS = (
    ("image", "sensor_msgs/Image", "camera images (rgb8/bgr8/mono8/...); with image_transport:=compressed the node "
                                   "subscribes to <image>/compressed (sensor_msgs/CompressedImage)"),
    ("camera_info", "sensor_msgs/CameraInfo", "intrinsics K (optional; estimated when absent)"),
    ("depth", "sensor_msgs/Image", "metric depth, 32FC1 m or 16UC1 mm (only with scale_source:=depth; name set by "
                                   "depth_topic)"),
    ("/tf_static", "tf2_msgs/TFMessage", "base_frame → camera extrinsic (only when base_frame is set)"),
)
OUTPUT_TOPICS = (
    ("dpm/points", "sensor_msgs/PointCloud2", "organized cloud: x y z rgb confidence label vx vy vz"),
    ("dpm/motion_mask", "sensor_msgs/Image", "mono8, 255 = moving, input resolution"),
    ("dpm/object_labels", "sensor_msgs/Image", "mono16 object ids, input resolution"),
    ("dpm/depth", "sensor_msgs/Image", "32FC1 z of P1(t1,π1)"),
    ("dpm/camera_info", "sensor_msgs/CameraInfo", "K used (given or estimated), output resolution"),
    ("dpm/odometry", "nav_msgs/Odometry", "ego-motion in odom_frame"),
    ("dpm/objects", "dpm_ros/ObjectMotionArray", "per-object rigid motion and velocity"),
    ("dpm/objects/markers", "visualization_msgs/MarkerArray", "boxes and velocity arrows"),
    ("/tf", "tf2_msgs/TFMessage", "odom_frame → base_frame (or camera)"),
    ("/diagnostics", "diagnostic_msgs/DiagnosticArray", "rates, latency per stage, drops, errors, engine"),
)
EXAMPLE = """\
  dpm_node --ros-args -r image:=/camera/image_raw -r camera_info:=/camera/camera_info \\
           --params-file config/dpm.yaml -p eps_rel:=0.03
  ros2 launch dpm_ros dpm.launch.py image:=/camera/image_raw camera_info:=/camera/camera_info
  ros2 param set /dpm_node eps_rel 0.05          # [runtime] parameters change while it runs"""


def _default(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def help_text() -> str:
    """The text ``dpm_node --help`` prints."""
    lines = ["usage: dpm_node [--help] [--ros-args [-r FROM:=TO] [-p NAME:=VALUE] [--params-file FILE] ...]", "",
             "Dynamic Point Maps node: camera images in; point clouds, motion masks, ego-motion (odometry + TF), "
             "object motions and diagnostics out.", "", "subscribes:"]
    lines += [f"  {name:<22} {kind:<32} {text}" for name, kind, text in INPUT_TOPICS]
    lines += ["", "publishes:"]
    lines += [f"  {name:<22} {kind:<32} {text}" for name, kind, text in OUTPUT_TOPICS]
    lines += ["  (per-pair outputs are built only while someone subscribes; odometry and /tf always)"]
    lines += ["", "parameters ([runtime] = may change while running; the others are read-only after start):",
              f"  {'name':<22} {'unit':<9} {'default':<14} description"]
    for p in PARAMS:
        extra = []
        if p.range is not None:
            extra.append(f"range {p.range[0]}..{p.range[1]}")
        if p.choices:
            extra.append("one of " + "|".join(p.choices))
        if p.runtime:
            extra.append("[runtime]")
        text = p.description + (f" ({'; '.join(extra)})" if extra else "")
        lines.append(f"  {p.name:<22} {p.unit:<9} {_default(p.default):<14} {text}")
    lines += ["", "examples:", EXAMPLE, "",
              "All parameters with comments: config/dpm.yaml (installed in share/dpm_ros/config/)."]
    return "\n".join(lines)


def wants_help(argv: list[str]) -> bool:
    """``-h``/``--help`` anywhere in the arguments (also after ``--ros-args``, which rcl would refuse)."""
    return any(a in ("-h", "--help") for a in argv[1:])


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the ``dpm_node`` executable: ``--help`` here, everything else in ``dpm_ros.ros.node``."""
    argv = list(sys.argv if argv is None else argv)
    if wants_help(argv):
        print(help_text())
        return 0
    from dpm_ros.ros.node import main as node_main

    return node_main(argv)


if __name__ == "__main__":
    sys.exit(main())
