"""dpm_node as a separate process over DDS (loopback) on a synthetic sequence, once with the ground-truth (oracle)
engine and once with the shipped ONNX model on ONNX Runtime (the robot's default engine; this file also runs in the
torch-less Jazzy environment, test/conftest.py PARTS).

Each node run feeds a synthetic sequence frame by frame (waiting for each output, so no pair is dropped), then a
burst of malformed images (unsupported encoding, data shorter than step×height), then more good frames. The tests
check the contract (stamps, frames, cloud layout, mask size, TF/odometry, diagnostics) with both engines,
exactness against ground truth with the oracle (mask IoU ≥ 0.99, ego-motion through the TF chain ≤ 1e-3 relative,
object motions and velocities), and that bad input is logged, counted in /diagnostics, skipped, and the next good
frame processed.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import dpm_ros.pipeline  # noqa: E402,F401  (a missing or broken module fails here, never skips)
import dpm_ros.engine.oracle  # noqa: E402,F401  (a missing or broken module fails here, never skips)

from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from dpm_ros.engine.pair_io import crop_intrinsics  # noqa: E402
from dpm_ros.pointcloud import cloud_from_bytes  # noqa: E402
from dpm_ros.ros import messages as M  # noqa: E402
from dpm_ros.ros.harness import NodeProcess, Probe  # noqa: E402
from dpm_ros.ros.image_convert import fill_image  # noqa: E402
from dpm_ros.geometry.procrustes import invert_se3  # noqa: E402

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out

N_GOOD = 10          # frames of the first run
N_AFTER = 2          # good frames after the malformed ones
N_BAD = 3            # malformed images of each kind in the burst
FRAME_ID = "camera_optical"
T0 = 100.0
# numpy renderer: the oracle renders ground truth on the node's worker thread, and an EGL context made on another
# thread returns garbage there (dpm_ros/synthetic/gl.py is not thread-safe).
SEQ_KW = dict(seed=3, fps=10.0, height=96, width=128, n_objects=2, renderer="numpy")


def synthetic_bag(tmp, seq):
    """Write ``seq`` as a `dpm synth` bag; return (bag path, frames as the node will see them + ground truth)."""
    from dpm_ros.bag import read_images, write_sequence
    from dpm_ros.engine.oracle import OracleEngine

    path = write_sequence(seq, tmp / "seq.mcap")
    oracle = OracleEngine.from_bag(path)        # the sequence as rendered for the bag (same renderer)
    images = [img for _, img, _ in read_images(path)]
    frames = [dict(oracle.sequence.frame(i), image=images[i]) for i in range(len(images))]
    return path, oracle.sequence, frames


def image_msg(rgb: np.ndarray, stamp: float, encoding: str = "rgb8") -> Image:
    return fill_image(Image(header=Header(stamp=M.sec_to_stamp(stamp), frame_id=FRAME_ID)), rgb, encoding)


def stamps_of(msgs) -> list[float]:
    return [M.stamp_to_sec(m.header.stamp) for m in msgs]


@pytest.fixture(scope="module", params=["oracle", "onnx"])
def run(tmp_path_factory, request):
    from dpm_ros.synthetic import SyntheticSequence

    tmp = tmp_path_factory.mktemp("node")
    bag, seq, frames = synthetic_bag(tmp, SyntheticSequence(t0=T0, n_frames=N_GOOD + N_AFTER, **SEQ_KW))
    if request.param == "onnx":
        pytest.importorskip("onnxruntime")
        from dpm_ros.engine.select import default_engine_path
        engine = str(default_engine_path())     # the shipped engines/dpm_small.onnx, as a robot runs it
    else:
        engine = f"oracle:{bag}"
    args = ["--ros-args", "-r", "image:=/camera/image_raw", "-r", "camera_info:=/camera/camera_info",
            "-p", f"engine:={engine}", "-p", "qos_reliability:=reliable", "-p", f"pair_interval:={1 / seq.fps}",
            "-p", f"max_pair_gap:={1.5 / seq.fps}", "-p", "eps_rel:=0.0001", "-p", "min_object_pixels:=20",
            "-p", "diagnostics_period:=0.5"]
    probe = Probe()
    with NodeProcess(args, tmp / "node.log") as proc:
        try:
            assert probe.wait_connected(120, proc, (probe.info_pub,)), "node did not subscribe:\n" + proc.log()
            sent = []

            def send(i):
                f = frames[i]
                info = M.camera_info_msg(Header(stamp=M.sec_to_stamp(f["stamp"]), frame_id=FRAME_ID), f["K"],
                                         seq.height, seq.width)
                probe.info_pub.publish(info)
                time.sleep(0.02)
                t_send = time.monotonic()
                probe.image_pub.publish(image_msg(f["image"], f["stamp"]))
                sent.append((f["stamp"], t_send))
                if len(sent) > 1:  # the first frame has no partner
                    ok = probe.wait_for(lambda: f["stamp"] in stamps_of(probe.got("dpm/points")), 90)
                    assert ok, f"no output for frame {i}:\n{proc.log()}"

            for i in range(N_GOOD):
                send(i)
            # a burst of malformed images: unsupported encoding, and data shorter than step × height
            for k in range(N_BAD):
                bad = image_msg(frames[N_GOOD]["image"][..., 0].astype(np.uint16) * 256, T0 + 50.0 + k, "mono16")
                probe.image_pub.publish(bad)
                short = image_msg(frames[N_GOOD]["image"], T0 + 50.5 + k)
                short.data = bytes(short.data)[: len(short.data) // 2]
                probe.image_pub.publish(short)
            for i in range(N_GOOD, N_GOOD + N_AFTER):
                send(i)
            probe.wait_for(lambda: any(_diag(d).get("errors_size", "0") == str(N_BAD)
                                       for d in probe.got("diagnostics")), 10)
            n = len(probe.got("diagnostics"))          # then two more /diagnostics (period 0.5 s): counters final
            assert probe.wait_for(lambda: len(probe.got("diagnostics")) >= n + 2, 30), proc.log()
            print("node log:", proc.log_path)
            yield dict(seq=seq, frames=frames, probe=probe, log=proc.log(), sent=sent, engine=request.param)
        finally:
            rc = proc.stop()
            probe.close()
    assert rc == 0, f"dpm_node did not exit cleanly on SIGINT (rc {rc})"


def _diag(arr) -> dict:
    return {kv.key: kv.value for st in arr.status for kv in st.values}


def good_stamps(run) -> list[float]:
    return [f["stamp"] for f in run["frames"]][1:]


def by_stamp(msgs) -> dict:
    return {M.stamp_to_sec(m.header.stamp): m for m in msgs}


def out_size(run) -> tuple[int, int]:
    """Output (height, width): the image's with the oracle, the network's resolution with the ONNX model."""
    if run["engine"] == "oracle":
        return run["seq"].height, run["seq"].width
    from dpm_ros.engine.onnx_model import read_onnx_info
    from dpm_ros.engine.select import default_engine_path

    info = read_onnx_info(default_engine_path())
    return info.height, info.width


# exactness against ground truth: with the oracle engine only (the shipped model is approximate); same node run
oracle_only = pytest.mark.parametrize("run", ["oracle"], indirect=True)


# --- contract -----------------------------------------------------------------------------------------------------


def test_every_output_carries_input_stamp_and_optical_frame(run):
    p = run["probe"]
    expected = good_stamps(run)
    for topic in ("dpm/points", "dpm/motion_mask", "dpm/object_labels", "dpm/depth", "dpm/camera_info",
                  "dpm/objects"):
        msgs = p.got(topic)
        assert sorted(stamps_of(msgs)) == pytest.approx(expected, abs=1e-9), topic
        assert {m.header.frame_id for m in msgs} == {FRAME_ID}, topic
    odo = p.got("dpm/odometry")
    assert sorted(stamps_of(odo)) == pytest.approx(expected, abs=1e-9)
    assert {(m.header.frame_id, m.child_frame_id) for m in odo} == {("odom", FRAME_ID)}


def test_cloud_layout_and_mask_size(run):
    seq, p = run["seq"], run["probe"]
    pc = p.got("dpm/points")[-1]
    assert [(f.name, f.offset, f.datatype) for f in pc.fields] == [
        ("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("rgb", 12, 7), ("confidence", 16, 7), ("label", 20, 4),
        ("vx", 24, 7), ("vy", 28, 7), ("vz", 32, 7)]
    h, w = out_size(run)
    assert (pc.height, pc.width, pc.point_step, pc.row_step) == (h, w, 36, 36 * w)
    assert pc.is_dense is False and len(pc.data) == pc.row_step * pc.height
    ci = p.got("dpm/camera_info")[-1]          # CameraInfo with the image's exact stamp was given: its K is used
    assert (ci.height, ci.width) == (h, w)
    # the engine centre-crops the image to its own aspect, then resizes: K follows the crop (the whole image when
    # the aspects agree, i.e. plain scaling)
    np.testing.assert_allclose(np.reshape(ci.k, (3, 3)), crop_intrinsics(seq.K, (seq.height, seq.width), (h, w)),
                               rtol=1e-9)
    markers = p.got("dpm/objects/markers")[-1].markers
    assert markers[0].action == markers[0].DELETEALL and len(markers) == 1 + 2 * len(p.got("dpm/objects")[-1].objects)
    for topic, enc in (("dpm/motion_mask", "mono8"), ("dpm/object_labels", "mono16")):
        m = p.got(topic)[-1]
        assert (m.height, m.width, m.encoding) == (seq.height, seq.width, enc)   # masks: the image's size


def test_tf_tree_and_odometry_agree(run):
    p = run["probe"]
    tfs = [ts for msg in p.got("tf") for ts in msg.transforms]
    assert tfs and {(ts.header.frame_id, ts.child_frame_id) for ts in tfs} == {("odom", FRAME_ID)}
    odo = by_stamp(p.got("dpm/odometry"))
    for ts in tfs:
        o = odo[M.stamp_to_sec(ts.header.stamp)]
        T = M.transform_to_matrix(ts.transform)
        q = o.pose.pose.orientation
        assert np.allclose(T[:3, 3], [o.pose.pose.position.x, o.pose.pose.position.y, o.pose.pose.position.z])
        assert np.allclose(Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix(), T[:3, :3], atol=1e-9)


# --- exactness with the ground-truth engine ------------------------------------------------------------------------


@oracle_only
def test_motion_mask_iou_with_ground_truth(run):
    frames, p = run["frames"], run["probe"]
    masks = by_stamp(p.got("dpm/motion_mask"))
    ious = []
    for f in frames[1:]:
        m = masks[f["stamp"]]
        pred = np.frombuffer(m.data, np.uint8).reshape(m.height, m.width) == 255
        gt = f["instances"] > 0
        ious.append((pred & gt).sum() / max((pred | gt).sum(), 1))
    assert min(ious) >= 0.99, ious


@oracle_only
def test_ego_motion_tf_chain_matches_ground_truth_poses(run):
    frames, p = run["frames"], run["probe"]
    tf = {M.stamp_to_sec(ts.header.stamp): M.transform_to_matrix(ts.transform)
          for msg in p.got("tf") for ts in msg.transforms}
    T_w0 = frames[0]["T_w_c"]
    for f in frames[1:]:
        gt = invert_se3(T_w0) @ f["T_w_c"]
        est = tf[f["stamp"]]
        terr = np.linalg.norm(est[:3, 3] - gt[:3, 3]) / max(np.linalg.norm(gt[:3, 3]), 1e-9)
        rerr = np.linalg.norm(Rotation.from_matrix(est[:3, :3].T @ gt[:3, :3]).as_rotvec())
        assert terr <= 1e-3 and rerr <= 1e-3, (f["stamp"], terr, rerr)


@oracle_only
def test_odometry_twist_matches_ground_truth_camera_velocity(run):
    frames, p = run["frames"], run["probe"]
    odo = by_stamp(p.got("dpm/odometry"))
    for a, b in zip(frames[:-1], frames[1:]):
        T_c1_c2 = invert_se3(b["T_w_c"]) @ a["T_w_c"]          # camera(t2 = a) → camera(t1 = b)
        v = -T_c1_c2[:3, 3] / (b["stamp"] - a["stamp"])
        tw = odo[b["stamp"]].twist.twist.linear
        assert np.allclose([tw.x, tw.y, tw.z], v, rtol=1e-3, atol=1e-4)


@oracle_only
def test_object_motions_and_velocities_match_ground_truth(run):
    seq, frames, p = run["seq"], run["frames"], run["probe"]
    objs = by_stamp(p.got("dpm/objects"))
    clouds = by_stamp(p.got("dpm/points"))
    checked = 0
    for k in range(1, len(frames)):
        a, b = frames[k - 1], frames[k]
        pair = seq.pair(k, k - 1)
        arr = objs[b["stamp"]]
        assert arr.dt == pytest.approx(a["stamp"] - b["stamp"])
        cloud = cloud_from_bytes(clouds[b["stamp"]].data, seq.height, seq.width)
        vel = np.stack([cloud["vx"], cloud["vy"], cloud["vz"]], -1)
        gt_vel = (pair["p1_t2_pi1"] - pair["p1_t1_pi1"]) / arr.dt
        ok = np.isfinite(gt_vel).all(-1) & np.isfinite(vel).all(-1)
        assert ok.sum() > 0.5 * ok.size
        np.testing.assert_allclose(vel[ok], gt_vel[ok], rtol=1e-4, atol=1e-4)
        for o in arr.objects:
            sel = cloud["label"] == o.id
            gt_ids = np.unique(pair["instances1"][sel])
            assert len(gt_ids) == 1 and gt_ids[0] > 0
            T_c1_w = invert_se3(pair["T_w_c1"])
            M_c = T_c1_w @ pair["object_motions"][gt_ids[0]] @ pair["T_w_c1"]   # object motion t1→t2 in camera 1
            T = M.transform_to_matrix(o.motion)
            assert np.allclose(T, M_c, atol=1e-3), (o.id, T, M_c)
            c = np.array([o.centroid.x, o.centroid.y, o.centroid.z])
            lin = (M_c[:3, :3] @ c + M_c[:3, 3] - c) / arr.dt
            np.testing.assert_allclose([o.linear_velocity.x, o.linear_velocity.y, o.linear_velocity.z], lin,
                                       rtol=1e-3, atol=1e-3)
            checked += 1
    assert checked >= len(frames) - 1


@oracle_only
def test_object_ids_stable_across_pairs(run):
    seq, frames, p = run["seq"], run["frames"], run["probe"]
    objs = by_stamp(p.got("dpm/objects"))
    clouds = by_stamp(p.got("dpm/points"))
    gt_to_ids: dict[int, set] = {}
    for i, f in enumerate(frames[1:N_GOOD], start=1):
        cloud = cloud_from_bytes(clouds[f["stamp"]].data, seq.height, seq.width)
        for o in objs[f["stamp"]].objects:
            gt = np.bincount(f["instances"][cloud["label"] == o.id]).argmax()
            gt_to_ids.setdefault(int(gt), set()).add(o.id)
    assert gt_to_ids and all(len(v) == 1 for v in gt_to_ids.values()), gt_to_ids


# --- malformed input -----------------------------------------------------------------------------------------------


def test_malformed_images_are_logged_counted_skipped_and_next_frame_processed(run):
    p = run["probe"]
    diag = _diag(p.got("diagnostics")[-1])
    assert diag["errors_encoding"] == str(N_BAD) and diag["errors_size"] == str(N_BAD)
    assert "'mono16' not supported" in run["log"] and "step×height" in run["log"]
    out = stamps_of(p.got("dpm/points"))
    assert not any(T0 + 50.0 <= s < T0 + 60.0 for s in out)
    assert run["frames"][-1]["stamp"] in out and run["frames"][-2]["stamp"] in out
    assert any(st.level == st.WARN for d in p.got("diagnostics") for st in d.status)


def test_diagnostics_report_rates_latency_and_engine(run):
    diag = _diag(run["probe"].got("diagnostics")[-1])
    assert diag["engine_backend"] == {"oracle": "oracle", "onnx": "onnxruntime"}[run["engine"]]
    assert int(diag["pairs_out"]) == len(good_stamps(run))
    assert float(diag["latency_ms_mean"]) > 0 and float(diag["inference_ms_mean"]) > 0
    assert int(diag["frames_in"]) == len(run["frames"]) + 2 * N_BAD
