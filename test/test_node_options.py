"""dpm_node options over DDS: compressed input, CameraInfo 'latest', base_frame through /tf_static (odometry and TF
of the base, REP 105), runtime parameters (thresholds change, structural ones are read-only, publish_tf switch),
and the default SensorDataQoS (best-effort) subscription."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import dpm_ros.pipeline  # noqa: E402,F401  (a missing or broken module fails here, never skips)

from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from dpm_ros.ros import messages as M  # noqa: E402
from dpm_ros.ros.harness import NodeProcess, Probe  # noqa: E402
from dpm_ros.geometry.procrustes import invert_se3  # noqa: E402

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out

FRAME_ID = "camera_optical"
T_BASE_CAM = np.eye(4)
T_BASE_CAM[:3, :3] = Rotation.from_euler("xyz", [-90, 0, -90], degrees=True).as_matrix()  # REP 103 optical mount
T_BASE_CAM[:3, 3] = [0.3, 0.0, 1.2]


def set_params(probe: Probe, **values) -> list:
    client = probe.node.create_client(SetParameters, "/dpm_node/set_parameters")
    assert client.wait_for_service(timeout_sec=30)
    params = []
    for name, v in values.items():
        if isinstance(v, bool):
            pv = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=v)
        else:
            pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=float(v))
        params.append(Parameter(name=name, value=pv))
    fut = client.call_async(SetParameters.Request(parameters=params))
    assert probe.wait_for(fut.done, 30)
    return fut.result().results


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from dpm_ros.bag import read_images, write_sequence
    from dpm_ros.engine.oracle import OracleEngine
    from dpm_ros.synthetic import SyntheticSequence

    tmp = tmp_path_factory.mktemp("options")
    seq = SyntheticSequence(seed=11, n_frames=8, fps=10.0, height=64, width=80, n_objects=1, renderer="numpy",
                            t0=50.0)
    bag = write_sequence(seq, tmp / "seq.mcap")
    seq = OracleEngine.from_bag(bag).sequence
    images = [img for _, img, _ in read_images(bag)]
    frames = [dict(seq.frame(i), image=images[i]) for i in range(len(seq))]
    args = ["--ros-args", "-r", "image:=/camera/image_raw", "-r", "camera_info:=/camera/camera_info",
            "-p", f"engine:=oracle:{bag}", "-p", "image_transport:=compressed", "-p", "camera_info_sync:=latest",
            "-p", "base_frame:=base_link", "-p", "pair_interval:=0.1", "-p", "max_pair_gap:=0.15",
            "-p", "eps_rel:=0.0001", "-p", "diagnostics_period:=0.5"]   # QoS: default best_effort (SensorDataQoS)
    probe = Probe()
    out = dict(frames=frames, probe=probe)
    with NodeProcess(args, tmp / "node.log") as proc:
        try:
            assert probe.wait_connected(120, proc, (probe.info_pub,)), proc.log()
            probe.tf_static_pub.publish(M.tf_msg(M.sec_to_stamp(0.0), "base_link", FRAME_ID, T_BASE_CAM))
            # one CameraInfo only, stamped long before the images: 'latest' must still use it
            probe.info_pub.publish(M.camera_info_msg(Header(stamp=M.sec_to_stamp(1.0), frame_id=FRAME_ID),
                                                     frames[0]["K"], seq.height, seq.width))

            def send(i):
                f = frames[i]
                ok, png = cv2.imencode(".png", np.ascontiguousarray(f["image"][..., ::-1]))
                msg = CompressedImage(header=Header(stamp=M.sec_to_stamp(f["stamp"]), frame_id=FRAME_ID),
                                      format="png", data=png.tobytes())
                probe.compressed_pub.publish(msg)
                if i:
                    assert probe.wait_for(lambda: f["stamp"] in [M.stamp_to_sec(m.header.stamp)
                                                                 for m in probe.got("dpm/points")], 60), proc.log()

            for i in range(4):
                send(i)
            out["set_eps"] = set_params(probe, eps_rel=0.5)
            out["set_structural"] = set_params(probe, pair_interval=0.3)
            out["set_out_of_range"] = set_params(probe, eps_rel=5.0)
            out["set_tf_off"] = set_params(probe, publish_tf=False)
            send(4)
            send(5)
            n = len(probe.got("diagnostics"))          # two more /diagnostics (period 0.5 s) before reading the log
            assert probe.wait_for(lambda: len(probe.got("diagnostics")) >= n + 2, 30), proc.log()
            out["log"] = proc.log()
            yield out
        finally:
            proc.stop()
            probe.close()


def test_compressed_input_and_best_effort_default_qos(run):
    stamps = sorted(M.stamp_to_sec(m.header.stamp) for m in run["probe"].got("dpm/points"))
    assert stamps == pytest.approx([f["stamp"] for f in run["frames"][1:6]])


def test_latest_camera_info_is_used(run):
    ci = run["probe"].got("dpm/camera_info")[0]
    np.testing.assert_allclose(np.reshape(ci.k, (3, 3)), run["frames"][0]["K"], rtol=1e-6)


def test_base_frame_odometry_and_tf_through_static_extrinsic(run):
    frames, p = run["frames"], run["probe"]
    odo = {M.stamp_to_sec(o.header.stamp): o for o in p.got("dpm/odometry")}
    assert {(o.header.frame_id, o.child_frame_id) for o in odo.values()} == {("odom", "base_link")}
    tfs = [ts for m in p.got("tf") for ts in m.transforms]
    assert {(ts.header.frame_id, ts.child_frame_id) for ts in tfs} == {("odom", "base_link")}
    T_w_base0 = frames[0]["T_w_c"] @ invert_se3(T_BASE_CAM)
    for f in frames[1:6]:
        gt = invert_se3(T_w_base0) @ f["T_w_c"] @ invert_se3(T_BASE_CAM)
        o = odo[f["stamp"]].pose.pose
        q = o.orientation
        est = np.eye(4)
        est[:3, :3] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
        est[:3, 3] = [o.position.x, o.position.y, o.position.z]
        assert np.linalg.norm(est[:3, 3] - gt[:3, 3]) <= 1e-3 * max(np.linalg.norm(gt[:3, 3]), 1e-3)
        assert np.allclose(est[:3, :3], gt[:3, :3], atol=1e-4)


def test_runtime_parameters(run):
    assert run["set_eps"][0].successful
    assert not run["set_structural"][0].successful and "read-only" in run["set_structural"][0].reason.lower()
    assert not run["set_out_of_range"][0].successful
    assert run["set_tf_off"][0].successful
    p = run["probe"]
    tf_stamps = {M.stamp_to_sec(ts.header.stamp) for m in p.got("tf") for ts in m.transforms}
    odo_stamps = {M.stamp_to_sec(o.header.stamp) for o in p.got("dpm/odometry")}
    late = {run["frames"][4]["stamp"], run["frames"][5]["stamp"]}
    assert late <= odo_stamps and not (late & tf_stamps)      # publish_tf off: odometry goes on, TF stops
    masks = {M.stamp_to_sec(m.header.stamp): np.frombuffer(m.data, np.uint8) for m in p.got("dpm/motion_mask")}
    # eps_rel 0.5: almost nothing moves half its distance in 0.1 s, so the mask empties after the change
    before = masks[run["frames"][3]["stamp"]].mean()
    after = masks[run["frames"][5]["stamp"]].mean()
    assert before > 0 and after < 0.1 * before
