"""Launch ``dpm_node``: ``ros2 launch dpm_ros dpm.launch.py image:=/camera/image_raw camera_info:=/camera/camera_info``.

Arguments: image, camera_info (topics), params_file (default share/dpm_ros/config/dpm.yaml), engine (model file or
``oracle:<bag>``; empty = the params file's value), namespace, use_sim_time, rviz (true: also rviz2 with
config/dpm.rviz).
The node is described by the plain function ``node_spec`` (no launch imports), which ``generate_launch_description``
turns into a launch_ros Node; tests use ``node_spec`` + ``command_line`` to start the very same process where
launch_ros is not installed.
"""
from __future__ import annotations

from pathlib import Path

# name -> (default, description)
LAUNCH_ARGUMENTS = {
    "image": ("/camera/image_raw", "input image topic (sensor_msgs/Image; '<image>/compressed' when "
                                   "image_transport is compressed)"),
    "camera_info": ("/camera/camera_info", "input CameraInfo topic (optional)"),
    "params_file": ("", "parameter YAML; empty = dpm_ros share/config/dpm.yaml"),
    "engine": ("", "model file or oracle:<synthetic bag>; empty = the params file's value"),
    "namespace": ("", "node namespace (outputs go to <namespace>/dpm/...)"),
    "use_sim_time": ("false", "use /clock (bag replay)"),
    "rviz": ("false", "also start rviz2 with share/dpm_ros/config/dpm.rviz"),
}


def config_file(name: str) -> str:
    """share/dpm_ros/config/<name> when installed, else the source tree's config/<name>."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("dpm_ros")) / "config" / name
        if installed.is_file():
            return str(installed)
    except Exception:  # not installed / not on AMENT_PREFIX_PATH
        pass
    return str(Path(__file__).resolve().parents[1] / "config" / name)


def default_params_file() -> str:
    """share/dpm_ros/config/dpm.yaml when installed, else the source tree's config/dpm.yaml."""
    return config_file("dpm.yaml")


def rviz_spec(use_sim_time: str = "false") -> dict:
    """rviz2 with config/dpm.rviz, as launch_ros.actions.Node keyword arguments (started with rviz:=true)."""
    return dict(package="rviz2", executable="rviz2", name="rviz2", output="screen",
                arguments=["-d", config_file("dpm.rviz")],
                parameters=[{"use_sim_time": str(use_sim_time).lower() in ("true", "1", "yes")}])


def node_spec(image: str = "/camera/image_raw", camera_info: str = "/camera/camera_info", params_file: str = "",
              engine: str = "", namespace: str = "", use_sim_time: str = "false") -> dict:
    """The node this launch file starts, as plain data: launch_ros.actions.Node keyword arguments."""
    overrides = {"use_sim_time": str(use_sim_time).lower() in ("true", "1", "yes")}
    if engine:
        overrides["engine"] = engine
    return dict(package="dpm_ros", executable="dpm_node", name="dpm_node", namespace=namespace, output="screen",
                parameters=[params_file or default_params_file(), overrides],
                remappings=[("image", image), ("camera_info", camera_info)])


def command_line(spec: dict, executable: str) -> list[str]:
    """The command launch_ros runs for ``spec`` (executable path, --ros-args with name, namespace, params,
    remappings)."""
    cmd = [executable, "--ros-args", "-r", f"__node:={spec['name']}"]
    if spec["namespace"]:
        cmd += ["-r", f"__ns:=/{spec['namespace'].strip('/')}"]
    for p in spec["parameters"]:
        if isinstance(p, dict):
            for k, v in p.items():
                cmd += ["-p", f"{k}:={str(v).lower() if isinstance(v, bool) else v}"]
        else:
            cmd += ["--params-file", str(p)]
    for src, dst in spec["remappings"]:
        cmd += ["-r", f"{src}:={dst}"]
    return cmd


def _launch_setup(context, *args, **kwargs):
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    values = {name: LaunchConfiguration(name).perform(context) for name in LAUNCH_ARGUMENTS}
    rviz = values.pop("rviz").lower() in ("true", "1", "yes")
    return [Node(**node_spec(**values))] + ([Node(**rviz_spec(values["use_sim_time"]))] if rviz else [])


def generate_launch_description():
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, (default, text) in LAUNCH_ARGUMENTS.items()]
        + [OpaqueFunction(function=_launch_setup)])
