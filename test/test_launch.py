"""launch/dpm.launch.py: its arguments and node spec, and the very process it declares (same executable, params file,
namespace, remappings) started here and checked to come up and process a pair. launch_ros is not installable on
this machine from PyPI: scripts/setup.sh installs the vendored sources (ros_env.md); with them the launch description
itself is run through launch.LaunchService (in the main thread, as it must)."""
from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

import pytest
import yaml

import dpm_ros.pipeline  # noqa: E402,F401  (a missing or broken module fails here, never skips)

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = ROOT / "launch" / "dpm.launch.py"


def load_launch_module():
    spec = importlib.util.spec_from_file_location("dpm_launch", LAUNCH_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)      # must not need launch / launch_ros
    return mod


def test_launch_arguments_and_node_spec():
    mod = load_launch_module()
    assert set(mod.LAUNCH_ARGUMENTS) == {"image", "camera_info", "params_file", "engine", "namespace", "use_sim_time",
                                         "rviz"}
    spec = mod.node_spec(image="/cam/image", camera_info="/cam/info", engine="oracle:/x.mcap", namespace="robot1",
                         use_sim_time="true")
    assert (spec["package"], spec["executable"], spec["name"], spec["namespace"]) == (
        "dpm_ros", "dpm_node", "dpm_node", "robot1")
    params_file, overrides = spec["parameters"]
    assert Path(params_file).name == "dpm.yaml" and Path(params_file).is_file()
    assert "ros__parameters" in yaml.safe_load(Path(params_file).read_text())["/**"]
    assert overrides == {"use_sim_time": True, "engine": "oracle:/x.mcap"}
    assert dict(spec["remappings"]) == {"image": "/cam/image", "camera_info": "/cam/info"}
    # an empty engine argument leaves the params file's value alone
    assert "engine" not in mod.node_spec()["parameters"][1]


def test_command_line_matches_spec():
    mod = load_launch_module()
    spec = mod.node_spec(image="/cam/image", namespace="robot1", params_file="/p.yaml")
    cmd = mod.command_line(spec, "/bin/dpm_node")
    assert cmd[:2] == ["/bin/dpm_node", "--ros-args"]
    joined = " ".join(cmd)
    for piece in ("-r __node:=dpm_node", "-r __ns:=/robot1", "--params-file /p.yaml", "-p use_sim_time:=false",
                  "-r image:=/cam/image", "-r camera_info:=/camera/camera_info"):
        assert piece in joined, piece


def _synthetic_bag(tmp):
    from dpm_ros.bag import read_images, write_sequence
    from dpm_ros.synthetic import SyntheticSequence

    seq = SyntheticSequence(seed=5, n_frames=3, fps=10.0, height=48, width=64, n_objects=1, renderer="numpy")
    path = write_sequence(seq, tmp / "seq.mcap")
    return path, [(ns, img) for ns, img, _ in read_images(path)]


def _feed_and_expect_output(probe, frames, namespace_topic="dpm/points", timeout=90.0):
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from dpm_ros.ros import messages as M
    from dpm_ros.ros.image_convert import fill_image

    for ns, img in frames:
        probe.image_pub.publish(fill_image(Image(header=Header(stamp=M.sec_to_stamp(ns * 1e-9),
                                                               frame_id="camera_optical")), img, "rgb8"))
        time.sleep(0.3)
    return probe.wait_for(lambda: len(probe.got(namespace_topic)) >= 1, timeout)


def test_declared_process_comes_up_and_processes_a_pair(tmp_path):
    from dpm_ros.ros.harness import NodeProcess, Probe, node_command

    mod = load_launch_module()
    bag, frames = _synthetic_bag(tmp_path)
    # the source tree's params file (the default resolves to the installed share/, which may predate this checkout)
    spec = mod.node_spec(image="/cam/image", camera_info="/cam/info", engine=f"oracle:{bag}", namespace="robot1",
                         params_file=str(ROOT / "config" / "dpm.yaml"))
    exe = node_command()
    assert Path(exe[0]).name == "dpm_node" or exe[-1] == "dpm_ros.ros.node"
    cmd = mod.command_line(spec, exe[0]) if len(exe) == 1 else exe + mod.command_line(spec, "x")[1:]
    probe = Probe(namespace="robot1", image_topic="/cam/image", camera_info_topic="/cam/info")
    try:
        with NodeProcess([], tmp_path / "node.log", command=cmd) as proc:
            assert probe.wait_connected(120, proc), proc.log()
            assert _feed_and_expect_output(probe, frames), proc.log()
            pc = probe.got("dpm/points")[0]
            assert (pc.height, pc.width, pc.header.frame_id) == (48, 64, "camera_optical")
            assert proc.stop() == 0, proc.log()
    finally:
        probe.close()


def test_launch_description_runs_with_launch_ros(tmp_path):
    """The launch description itself through launch.LaunchService, which must run in the main thread (it installs
    signal handlers and owns the asyncio loop); the probe drives the node from a second thread and then asks the
    service to shut down. Exit code 0 = every launched process ended cleanly."""
    import ros_tools

    ros_tools.require()
    from launch import LaunchDescription, LaunchService
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    from dpm_ros.ros.harness import Probe

    bag, frames = _synthetic_bag(tmp_path)
    ld = LaunchDescription([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
        launch_arguments={"image": "/cam/image", "camera_info": "/cam/info", "engine": f"oracle:{bag}",
                          "namespace": "robot1", "params_file": str(ROOT / "config" / "dpm.yaml")}.items())])
    service = LaunchService(argv=[])
    service.include_launch_description(ld)
    result: dict = {}

    def drive():
        probe = None
        try:
            probe = Probe(namespace="robot1", image_topic="/cam/image", camera_info_topic="/cam/info")
            result["connected"] = probe.wait_connected(120)
            result["output"] = result["connected"] and _feed_and_expect_output(probe, frames)
            if result["output"]:
                pc = probe.got("dpm/points")[0]
                result["cloud"] = (pc.height, pc.width, pc.header.frame_id)
        except Exception as exc:  # reported by the main thread
            result["error"] = exc
        finally:
            if probe is not None:
                probe.close()
            service.shutdown()

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    code = service.run()            # main thread, until drive() shuts it down
    driver.join(timeout=30)
    assert "error" not in result, result
    assert result.get("connected") and result.get("output"), result
    assert result["cloud"] == (48, 64, "camera_optical")
    assert code == 0


def test_ros2_launch_show_args_and_rviz_argument():
    """The real ``ros2 launch`` loads the installed launch file and lists every argument; rviz:=true adds rviz2 with
    config/dpm.rviz, false (the default) does not."""
    import os
    import subprocess

    import ros_tools

    ros_tools.require()
    from launch import LaunchContext

    r = subprocess.run([ros_tools.tool("ros2"), "launch", "dpm_ros", "dpm.launch.py", "--show-args"],
                       capture_output=True, text=True, timeout=60, env=os.environ.copy())
    assert r.returncode == 0, r.stderr
    mod = load_launch_module()
    for name, (default, _) in mod.LAUNCH_ARGUMENTS.items():
        assert f"'{name}':" in r.stdout, (name, r.stdout)
    for rviz, expected in (("true", ["dpm_node", "rviz2"]), ("false", ["dpm_node"])):
        ctx = LaunchContext()
        ctx.launch_configurations.update({k: d for k, (d, _) in mod.LAUNCH_ARGUMENTS.items()}, rviz=rviz)
        nodes = mod._launch_setup(ctx)
        assert [n.node_executable for n in nodes] == expected
    spec = mod.rviz_spec()
    assert spec["arguments"][0] == "-d" and Path(spec["arguments"][1]).name == "dpm.rviz"
    assert Path(spec["arguments"][1]).is_file()


def test_rviz_and_foxglove_configs_show_what_the_node_publishes():
    """config/dpm.rviz and config/foxglove_layout.json parse and every topic they show is one the node publishes (a
    renamed output would leave an empty pane)."""
    import json

    from dpm_ros.ros.node import OUTPUT_TYPES

    published = {"/" + t for t in OUTPUT_TYPES} | {"/dpm/odometry", "/tf", "/diagnostics"}
    rviz = yaml.safe_load((ROOT / "config" / "dpm.rviz").read_text())
    displays = rviz["Visualization Manager"]["Displays"]
    topics = {d["Topic"]["Value"] for d in displays if "Topic" in d}
    assert topics and topics <= published, topics - published
    by_class = {d["Class"].split("/")[-1]: d for d in displays}
    assert {"PointCloud2", "Image", "MarkerArray", "Odometry", "TF"} <= set(by_class)
    cloud = next(d for d in displays if d["Class"].endswith("PointCloud2") and d["Enabled"])
    assert (cloud["Topic"]["Value"], cloud["Color Transformer"], cloud["Channel Name"]) == (
        "/dpm/points", "Intensity", "label")
    assert rviz["Visualization Manager"]["Global Options"]["Fixed Frame"] == "odom"

    fox = json.loads((ROOT / "config" / "foxglove_layout.json").read_text())
    shown = set(fox["configById"]["3D!dpm"]["topics"])
    for key, cfg in fox["configById"].items():
        if key.startswith("Image!") and "imageTopic" in cfg.get("imageMode", {}):
            shown.add(cfg["imageMode"]["imageTopic"])
        for path in cfg.get("paths", []):
            shown.add(path["value"].split(".")[0])
        if "topicPath" in cfg:
            shown.add(cfg["topicPath"].split(".")[0])
    assert (shown - {"/camera/image_raw"}) <= published, shown - published
    assert fox["configById"]["3D!dpm"]["topics"]["/dpm/points"]["colorField"] == "label"
