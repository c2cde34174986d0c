"""The real ROS 2 tools against the real node, as a user runs them: ``ros2 launch dpm_ros dpm.launch.py`` in its own
process group with remapped topics, a params file and an engine given as launch arguments, frames from ``dpm play``
of a bag written by ``dpm import``; then ``ros2 node info``, ``ros2 param get/set`` (a refused out-of-range set),
``ros2 topic hz`` and ``sensor_msgs_py.point_cloud2.read_points`` on the live cloud; a node listening on a mistyped
topic says so within 10 s; Ctrl-C (SIGINT to the process group) ends everything with code 0.

One launch for the whole module (each test reads a different part of it); the tests run in file order and the last
one stops it."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import ros_tools

ros_tools.require()
pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]
H, W, FRAMES, STRIDE = 48, 64, 10, 2
K_GIVEN = (71.0, 73.0, 31.5, 23.5)       # fx fy cx cy given to `dpm import`: must come out on /dpm/camera_info
IMAGE, INFO = "/cam/front/image", "/cam/front/camera_info"


def _run(*cmd, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def _session(cmd, log: Path) -> subprocess.Popen:
    """A process in its own process group (as a shell runs a foreground job), output to ``log``."""
    return subprocess.Popen([str(c) for c in cmd], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env=os.environ.copy(), start_new_session=True)


def _stop_group(proc: subprocess.Popen, sig=signal.SIGINT, timeout=30.0) -> int:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


class Live:
    """Everything the module's tests look at."""


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    import cv2

    from dpm_ros.bag import read_images, write_sequence
    from dpm_ros.ros.harness import Probe
    from dpm_ros.synthetic import SyntheticSequence

    tmp = tmp_path_factory.mktemp("ros2_tools")
    seq = SyntheticSequence(seed=7, n_frames=FRAMES, fps=10.0, height=H, width=W, n_objects=1, renderer="numpy")
    synth = write_sequence(seq, tmp / "synth.mcap")
    # the frames as a folder of PNGs (lossless: the oracle recognises them by their bytes), imported as a user would
    (tmp / "frames").mkdir()
    for k, (_, img, _) in enumerate(read_images(synth)):
        cv2.imwrite(str(tmp / "frames" / f"frame_{k:04d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    imported = tmp / "imported.mcap"
    r = _run(ros_tools.tool("dpm"), "import", tmp / "frames", "--out", imported, "--topic", IMAGE,
             "--K", ",".join(map(str, K_GIVEN)), "--rate", 10, "--no-progress", timeout=120)
    assert r.returncode == 0, r.stderr
    # a params file of the user's own: stride 2 and eps_rel 0.03 must take effect
    params = yaml.safe_load((ROOT / "config" / "dpm.yaml").read_text())
    params["/**"]["ros__parameters"].update(cloud_stride=STRIDE, eps_rel=0.03, camera_info_sync="latest")
    params_file = tmp / "my_params.yaml"
    params_file.write_text(yaml.safe_dump(params))

    lv = Live()
    lv.tmp, lv.synth = tmp, synth
    lv.launch_log, lv.play_log, lv.lonely_log = tmp / "launch.log", tmp / "play.log", tmp / "lonely.log"
    lv.launch = _session([ros_tools.tool("ros2"), "launch", "dpm_ros", "dpm.launch.py", f"image:={IMAGE}",
                          f"camera_info:={INFO}", f"params_file:={params_file}", f"engine:=oracle:{synth}"],
                         lv.launch_log)
    # a second node whose user mistyped the topic (…/imag): it must point at the real one
    lv.lonely_started = time.monotonic()
    lv.lonely = _session([ros_tools.tool("dpm_node"), "--ros-args", "-r", "__node:=dpm_lonely", "-r",
                          "__ns:=/lonely", "-r", "image:=/cam/front/imag", "-p", f"engine:=oracle:{synth}"],
                         lv.lonely_log)
    lv.probe = Probe(image_topic="/dpm_test/unused", camera_info_topic="/dpm_test/unused_info")
    lv.play = None
    try:
        ok = lv.probe.wait_for(lambda: lv.probe.node.count_publishers("/dpm/points") > 0
                               or lv.launch.poll() is not None, 120)
        assert ok and lv.launch.poll() is None, lv.launch_log.read_text()
        lv.play = _session([ros_tools.tool("dpm"), "play", imported, "--loop", "--no-progress",
                            "--wait-for-subscribers", 30], lv.play_log)
        yield lv
    finally:
        lv.probe.close()
        for p in (lv.play, lv.lonely, lv.launch):
            if p is not None:
                _stop_group(p)


def test_points_arrive_with_the_launch_arguments(live):
    """Remaps (data flows only on the remapped topics), params file (stride 2 → 24×32), camera_info remap (K given at
    import = K used), engine argument (the oracle)."""
    from sensor_msgs_py import point_cloud2

    from dpm_ros.geometry.camera import scale_intrinsics

    probe = live.probe
    assert probe.wait_for(lambda: len(probe.got("dpm/points")) >= 3, 90), (live.launch_log.read_text()[-3000:] +
                                                                          live.play_log.read_text()[-2000:])
    pc = probe.got("dpm/points")[-1]
    assert (pc.height, pc.width) == (H // STRIDE, W // STRIDE)
    info = probe.got("dpm/camera_info")[-1]
    fx, fy, cx, cy = K_GIVEN
    np.testing.assert_allclose(np.reshape(info.k, (3, 3)),
                               scale_intrinsics([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], (H, W), (H, W)), atol=1e-9)
    # the standard reader sees our layout on the live message
    pts = point_cloud2.read_points(pc, skip_nans=False).reshape(pc.height, pc.width)   # (see test_cloud_reader)
    assert pts.dtype.names == ("x", "y", "z", "rgb", "confidence", "label", "vx", "vy", "vz")
    assert np.isfinite(pts["z"]).mean() > 0.5 and np.nanmin(pts["z"]) > 0
    assert "engine oracle on cpu" in live.launch_log.read_text()   # engine:= (the params file says the ONNX model)


def test_ros2_node_info_lists_the_remapped_topics(live):
    for _ in range(3):   # --no-daemon: a fresh process, whose graph discovery can take a while on a loaded machine
        r = _run(ros_tools.tool("ros2"), "node", "info", "/dpm_node", "--no-daemon", "--spin-time", "3", timeout=60)
        if "Unable to find node" not in r.stderr:
            break
    assert r.returncode == 0, r.stderr
    subs = r.stdout.split("Subscribers:")[1].split("Publishers:")[0]
    pubs = r.stdout.split("Publishers:")[1].split("Service Servers:")[0]
    assert f"{IMAGE}: sensor_msgs/msg/Image" in subs and f"{INFO}: sensor_msgs/msg/CameraInfo" in subs, r.stdout
    for topic, kind in (("/dpm/points", "sensor_msgs/msg/PointCloud2"),
                        ("/dpm/objects", "dpm_ros/msg/ObjectMotionArray"), ("/dpm/odometry", "nav_msgs/msg/Odometry")):
        assert f"{topic}: {kind}" in pubs, r.stdout
    assert "/dpm_node/set_parameters: rcl_interfaces/srv/SetParameters" in r.stdout


def test_ros2_param_get_and_set_at_runtime(live):
    def param(*args):  # --no-daemon: no daemon left behind; --timeout: a fresh process waits for discovery
        return _run(ros_tools.tool("ros2"), "param", *args, "--no-daemon", "--timeout", "20")

    r = param("get", "/dpm_node", "eps_rel")
    assert r.returncode == 0 and "Double value is: 0.03" in r.stdout, r.stdout + r.stderr   # from the params file
    r = param("set", "/dpm_node", "eps_rel", "0.05")
    assert r.returncode == 0 and "Set parameter successful" in r.stdout, r.stdout + r.stderr
    r = param("set", "/dpm_node", "eps_rel", "5.0")   # range 0..1: refused
    assert "Setting parameter failed" in r.stderr and "out of range" in r.stderr, r.stdout + r.stderr
    r = param("set", "/dpm_node", "cloud_stride", "4")  # read-only after start
    assert "Setting parameter failed" in r.stderr and "read-only" in r.stderr, r.stdout + r.stderr
    r = param("get", "/dpm_node", "eps_rel")
    assert "Double value is: 0.05" in r.stdout, r.stdout


def test_ros2_topic_hz_measures_the_cloud_rate(live):
    """`ros2 topic hz` as a user runs it (until Ctrl-C). dpm play sends 10 frames/s and every frame makes a pair."""
    proc = subprocess.Popen([ros_tools.tool("ros2"), "topic", "hz", "/dpm/points", "--window", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy(),
                            start_new_session=True)
    time.sleep(8.0)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    rates = [float(x) for x in re.findall(r"average rate: ([0-9.]+)", out)]
    assert rates, out
    assert 4.0 < rates[-1] < 14.0, out   # 10 Hz, minus what a loaded 2-core machine drops (latest pair wins)


def test_a_node_on_a_mistyped_topic_says_so_within_10_s(live):
    marker = "no image received on /cam/front/imag "
    end = live.lonely_started + 60.0      # start-up (imports) on a loaded machine, then ≤ 10 s after it is ready
    text = live.lonely_log.read_text()
    while time.monotonic() < end and marker not in text:
        time.sleep(0.2)
        text = live.lonely_log.read_text()
    assert marker in text, text
    ready = re.search(r"\[(\d+\.\d+)\] \[lonely\.dpm_lonely\]: dpm_node ready", text)
    warned = re.search(r"\[(\d+\.\d+)\] \[lonely\.dpm_lonely\]: no image received", text)
    assert ready and warned, text
    assert float(warned.group(1)) - float(ready.group(1)) <= 10.0, text
    assert f"did you mean -r image:={IMAGE} ?" in text, text


def test_ctrl_c_ends_the_launch_and_its_node_cleanly(live):
    """Last: SIGINT to the launch's process group, as a terminal's Ctrl-C does."""
    pids = [int(p) for p in re.findall(r"\[dpm_node-1\]: process started with pid \[(\d+)\]",
                                       live.launch_log.read_text())]
    assert len(pids) == 1, live.launch_log.read_text()
    assert _stop_group(live.play) == 0, live.play_log.read_text()
    assert _stop_group(live.launch) == 0, live.launch_log.read_text()
    text = live.launch_log.read_text()
    assert "[dpm_node-1]: process has finished cleanly" in text, text
    assert "Traceback" not in text, text
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)
    assert _stop_group(live.lonely) == 0, live.lonely_log.read_text()
