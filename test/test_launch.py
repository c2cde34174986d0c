"""launch/dpm.launch.py: its arguments and node spec, and the very process it declares (same executable, params file,
namespace, remappings) started here and checked to come up and process a pair. launch_ros is not installable on
this machine (ros_env.md); where it is, the launch description itself is run through launch.LaunchService."""
from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

import pytest
import yaml

import dpm_ros.pipeline  # noqa: E402,F401  (a missing or broken module fails here, never skips)

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = ROOT / "launch" / "dpm.launch.py"


def load_launch_module():
    spec = importlib.util.spec_from_file_location("dpm_launch", LAUNCH_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)      # must not need launch / launch_ros
    return mod


def test_launch_arguments_and_node_spec():
    mod = load_launch_module()
    assert set(mod.LAUNCH_ARGUMENTS) == {"image", "camera_info", "params_file", "engine", "namespace", "use_sim_time"}
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
    pytest.importorskip("launch_ros", reason="launch_ros is not installable here (ros_env.md); runs on a ROS install")
    from launch import LaunchDescription, LaunchService
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    from dpm_ros.ros.harness import Probe

    bag, frames = _synthetic_bag(tmp_path)
    ld = LaunchDescription([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
        launch_arguments={"image": "/cam/image", "camera_info": "/cam/info", "engine": f"oracle:{bag}",
                          "namespace": "robot1"}.items())])
    service = LaunchService(argv=[])
    service.include_launch_description(ld)
    runner = threading.Thread(target=service.run, daemon=True)
    probe = Probe(namespace="robot1", image_topic="/cam/image", camera_info_topic="/cam/info")
    try:
        runner.start()
        assert probe.wait_connected(120)
        assert _feed_and_expect_output(probe, frames)
    finally:
        service.shutdown()
        runner.join(timeout=30)
        probe.close()
