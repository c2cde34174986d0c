"""Fault campaign: dpm_node (subprocess, DDS loopback, oracle engine on a synthetic bag) under ~1,100 malformed inputs
sent at full rate, then good frames.

Node A (raw images) gets unsupported encodings (bayer_rggb8, mono16, 'foo', a NaN-filled 32FC1), data shorter than
step×height, zero size, a row step shorter than a row, two 8000×8000 images (one real, 192 MB), stamps going
backwards, CameraInfo with NaN or all-zero K, then good frames with a resolution change and a missing CameraInfo;
node B (image_transport compressed) gets corrupt CompressedImages between good PNG frames. Checks: both nodes stay
alive, every error kind is counted exactly in /diagnostics and logged (throttled: a handful of lines, not 1,000),
the good frames afterwards give ground-truth output (mask IoU, ego-motion), and out-of-range parameter updates are
rejected with their reason through the SetParameters service.
"""
from __future__ import annotations

import re
import time

import numpy as np
import pytest

import dpm_ros.engine.oracle  # noqa: E402,F401  (a missing or broken module fails here, never skips)

import cv2  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from dpm_ros.ros import messages as M  # noqa: E402
from dpm_ros.ros.harness import NodeProcess, Probe  # noqa: E402
from dpm_ros.geometry.procrustes import invert_se3  # noqa: E402

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out

ROUNDS = 100          # rounds of the node-A flood: 8 images + 2 CameraInfo each
N_DECODE = 100        # corrupt CompressedImages to node B
FRAME_ID = "camera_optical"
T0 = 100.0
LATE = 1000.0         # phase-2 stamps: T0 + LATE + i / fps
N0, N_SEQ = 3, 14     # frames 0..2 before the flood, 3..13 after
RES_AFTER, NO_INFO = 7, 11   # a half-size frame after frame 7; frame 11 without CameraInfo
SEQ_KW = dict(seed=5, fps=10.0, height=96, width=128, n_objects=2, renderer="numpy")


def header(stamp: float) -> Header:
    return Header(stamp=M.sec_to_stamp(stamp), frame_id=FRAME_ID)


def raw(h: int, w: int, enc: str, data: bytes, step: int, stamp: float = 0.0) -> Image:
    return Image(header=header(stamp), height=h, width=w, encoding=enc, is_bigendian=0, step=step, data=data)


def rgb(img: np.ndarray, stamp: float) -> Image:
    h, w = img.shape[:2]
    return raw(h, w, "rgb8", np.ascontiguousarray(img).tobytes(), 3 * w, stamp)


def info(K, stamp: float, h: int = 96, w: int = 128) -> CameraInfo:
    return M.camera_info_msg(header(stamp), np.asarray(K, float), h, w)


def flood_images(frame_img: np.ndarray) -> list[tuple[str, Image]]:
    """One round of malformed images for node A: (expected error counter, message)."""
    small = np.zeros((8, 8), np.uint8).tobytes()
    nan32 = np.full((8, 8), np.nan, np.float32).tobytes()
    good = frame_img.tobytes()
    return [("errors_encoding", raw(8, 8, "bayer_rggb8", small, 8)),
            ("errors_encoding", raw(8, 8, "mono16", small * 2, 16)),
            ("errors_encoding", raw(8, 8, "foo", small, 8)),
            ("errors_encoding", raw(8, 8, "32FC1", nan32, 32)),
            ("errors_size", raw(96, 128, "rgb8", good[: len(good) // 2], 384)),
            ("errors_size", raw(0, 0, "rgb8", b"", 0)),
            ("errors_size", raw(96, 128, "rgb8", good, 100))]


def corrupt_compressed(png: bytes, k: int) -> CompressedImage:
    rng = np.random.default_rng(k)
    data = [rng.integers(0, 256, 2000, dtype=np.uint8).tobytes(), png[: len(png) // 3], b"",
            b"\xff\xd8\xff\xe0" + rng.integers(0, 256, 500, dtype=np.uint8).tobytes()][k % 4]
    return CompressedImage(header=header(T0 + 50 + k), format=("png", "png", "png", "jpeg")[k % 4], data=data)


def n_diag(probe: Probe, node_name: str) -> int:
    """How many /diagnostics arrays of ``node_name`` the probe has received."""
    return sum(any(st.name.startswith(node_name + ":") for st in arr.status) for arr in probe.got("diagnostics"))


def diag_of(probe: Probe, node_name: str) -> dict:
    """Latest /diagnostics values of ``node_name``."""
    for arr in reversed(probe.got("diagnostics")):
        for st in arr.status:
            if st.name.startswith(node_name + ":"):
                return {kv.key: kv.value for kv in st.values}
    return {}


def count(d: dict, key: str) -> int:
    return int(float(d.get(key, 0)))


def by_stamp(msgs) -> dict:
    return {M.stamp_to_sec(m.header.stamp): m for m in msgs}


def call_service(probe: Probe, srv_type, name: str, request, timeout: float = 30.0):
    client = probe.node.create_client(srv_type, name)
    assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
    future = client.call_async(request)
    assert probe.wait_for(future.done, timeout), f"no answer from {name}"
    return future.result()


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    from dpm_ros.bag import read_images, write_sequence
    from dpm_ros.engine.oracle import OracleEngine
    from dpm_ros.synthetic import SyntheticSequence

    tmp = tmp_path_factory.mktemp("faults")
    bag = write_sequence(SyntheticSequence(t0=T0, n_frames=N_SEQ, **SEQ_KW), tmp / "seq.mcap")
    seq = OracleEngine.from_bag(bag).sequence
    images = [img for _, img, _ in read_images(bag)]
    frames = [dict(seq.frame(i), image=images[i]) for i in range(N_SEQ)]
    for i, f in enumerate(frames):
        f["sent_stamp"] = T0 + i / seq.fps + (LATE if i >= N0 else 0.0)
    common = ["-r", "image:=/camera/image_raw", "-p", f"engine:=oracle:{bag}", "-p", "qos_reliability:=reliable",
              "-p", "qos_depth:=1000", "-p", f"pair_interval:={1 / seq.fps}", "-p", f"max_pair_gap:={1.5 / seq.fps}",
              "-p", "eps_rel:=0.0001", "-p", "min_object_pixels:=20", "-p", "diagnostics_period:=0.5"]
    args_a = ["--ros-args", "-r", "camera_info:=/camera/camera_info", *common]
    args_b = ["--ros-args", "-r", "__node:=dpm_node_compressed", "-r", "__ns:=/compressed",
              "-p", "image_transport:=compressed", "-p", "use_camera_info:=false", *common]
    probe_a, probe_b = Probe(), Probe(namespace="compressed")
    qos = QoSProfile(depth=2000, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
    flood_pub = probe_a.node.create_publisher(Image, "/camera/image_raw", qos)
    info_pub = probe_a.node.create_publisher(CameraInfo, "/camera/camera_info", qos)
    comp_pub = probe_b.node.create_publisher(CompressedImage, "/camera/image_raw/compressed", qos)
    pngs = [cv2.imencode(".png", np.ascontiguousarray(img[..., ::-1]))[1].tobytes() for img in images]
    res: dict = dict(frames=frames, seq=seq, pa=probe_a, pb=probe_b)
    with NodeProcess(args_a, tmp / "node_a.log") as node_a, NodeProcess(args_b, tmp / "node_b.log") as node_b:
        try:
            assert probe_a.wait_connected(150, node_a, (flood_pub, info_pub)), node_a.log()
            assert probe_b.wait_connected(150, node_b, (comp_pub,)), node_b.log()

            def send(i: int, with_info: bool = True, expect: bool = True):
                f = frames[i]
                if with_info:
                    info_pub.publish(info(f["K"], f["sent_stamp"]))
                    time.sleep(0.02)
                flood_pub.publish(rgb(f["image"], f["sent_stamp"]))
                if expect:
                    ok = probe_a.wait_for(lambda: f["sent_stamp"] in by_stamp(probe_a.got("dpm/points")), 60)
                    assert ok, f"no output for frame {i}:\n{node_a.log()[-3000:]}"
                else:
                    time.sleep(0.5)

            def send_b(i: int, expect: bool = True):
                f = frames[i]
                comp_pub.publish(CompressedImage(header=header(f["sent_stamp"]), format="png", data=pngs[i]))
                if expect:
                    ok = probe_b.wait_for(lambda: f["sent_stamp"] in by_stamp(probe_b.got("dpm/points")), 60)
                    assert ok, f"node B: no output for frame {i}:\n{node_b.log()[-3000:]}"

            for i in range(N0):                       # phase 0: good frames on both nodes
                send(i, expect=i > 0)
                send_b(i, expect=i > 0)
            # phase 1: the flood, at full rate (no waiting between messages)
            expected = dict(errors_encoding=0, errors_size=0, errors_camera_info=0, pairing_stamp_jumps_back=0)
            nan_K, zero_K = np.array(frames[0]["K"], float), np.zeros((3, 3))
            nan_K[0, 0] = np.nan
            t_flood = time.monotonic()
            for r in range(ROUNDS):
                for key, msg in flood_images(images[0]):
                    flood_pub.publish(msg)
                    expected[key] += 1
                back = rgb(images[r % N0], T0 - 1.0 - 0.01 * r)   # stamps going backwards (before phase 0)
                flood_pub.publish(back)
                expected["pairing_stamp_jumps_back"] += 1
                info_pub.publish(info(nan_K, T0 + r))
                info_pub.publish(info(zero_K, T0 + r))
                expected["errors_camera_info"] += 2
                comp_pub.publish(corrupt_compressed(pngs[0], r))
                if r == ROUNDS // 2:                     # 8000×8000: one real (192 MB), one header-only
                    big = np.zeros((8000, 8000, 3), np.uint8)
                    flood_pub.publish(rgb(big, T0 + 60.0))
                    del big
                    flood_pub.publish(raw(8000, 8000, "rgb8", b"\0" * 1000, 24000))
                    expected["errors_size"] += 2
            res["flood_publish_s"] = time.monotonic() - t_flood
            n_images = N0 + ROUNDS * 8 + 2
            # Drained: every flood image AND every flood CameraInfo has reached the node. A reliable reader delivers
            # in order, so one CameraInfo the transport dropped under the flood holds back all later ones until the
            # writer resends it (a heartbeat, up to seconds later): phase 2's CameraInfos would then come late.
            assert probe_a.wait_for(lambda: count(diag_of(probe_a, "dpm_node"), "frames_in") >= n_images and
                                    count(diag_of(probe_a, "dpm_node"), "errors_camera_info")
                                    >= expected["errors_camera_info"], 90), diag_of(probe_a, "dpm_node")
            assert probe_b.wait_for(lambda: count(diag_of(probe_b, "dpm_node_compressed"), "frames_in")
                                    >= N0 + N_DECODE, 60), diag_of(probe_b, "dpm_node_compressed")
            res["flood_s"] = time.monotonic() - t_flood
            res["expected"] = expected
            # phase 2: good frames again; a resolution change after frame RES_AFTER, frame NO_INFO without K
            for i in range(N0, N_SEQ):
                send(i, with_info=i != NO_INFO, expect=i not in (N0, RES_AFTER + 1))
                if i == RES_AFTER:
                    half = np.ascontiguousarray(images[i][::2, ::2])
                    info_pub.publish(info(np.diag([0.5, 0.5, 1.0]) @ frames[i]["K"], frames[i]["sent_stamp"] + 0.05,
                                          48, 64))
                    flood_pub.publish(rgb(half, frames[i]["sent_stamp"] + 0.05))
                    time.sleep(0.5)
            for i in range(N0, N0 + 3):                  # (frame N0 has no partner: its stamp jumped by LATE)
                send_b(i, expect=i > N0)
            # two more /diagnostics from each node (period 0.5 s) after the last input: counters final
            base_a, base_b = n_diag(probe_a, "dpm_node"), n_diag(probe_b, "dpm_node_compressed")
            assert probe_a.wait_for(lambda: n_diag(probe_a, "dpm_node") >= base_a + 2
                                    and n_diag(probe_b, "dpm_node_compressed") >= base_b + 2, 60)
            res["alive"] = (node_a.alive(), node_b.alive())
            res["diag_a"], res["diag_b"] = diag_of(probe_a, "dpm_node"), diag_of(probe_b, "dpm_node_compressed")
            res["param_results"] = set_parameters(probe_a)
            res["log_a"], res["log_b"] = node_a.log(), node_b.log()
            yield res
        finally:
            rc_a, rc_b = node_a.stop(), node_b.stop()
            probe_a.close()
            probe_b.close()
    assert (rc_a, rc_b) == (0, 0), "a node did not exit cleanly on SIGINT"


def set_parameters(probe: Probe) -> dict:
    """SetParameters on /dpm_node with out-of-range, wrong-type, read-only and bad-choice values, then one good one;
    returns {label: (successful, reason)} and the values read back."""
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import GetParameters, SetParameters

    def value(v) -> ParameterValue:
        if isinstance(v, str):
            return ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=v)
        if isinstance(v, int):
            return ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=v)
        return ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=v)

    cases = {"eps_rel=5.0": ("eps_rel", 5.0), "min_object_pixels=0": ("min_object_pixels", 0),
             "conf_threshold=-1": ("conf_threshold", -1.0), "eps_rel='abc'": ("eps_rel", "abc"),
             "pair_interval=0.5": ("pair_interval", 0.5), "ego_method='foo'": ("ego_method", "foo"),
             "eps_rel=nan": ("eps_rel", float("nan")), "track_gate_abs=inf": ("track_gate_abs", float("inf")),
             "track_max_age=2.0": ("track_max_age", 2.0)}
    out = {}
    for label, (name, v) in cases.items():
        req = SetParameters.Request(parameters=[Parameter(name=name, value=value(v))])
        r = call_service(probe, SetParameters, "/dpm_node/set_parameters", req).results[0]
        out[label] = (r.successful, r.reason)
    got = call_service(probe, GetParameters, "/dpm_node/get_parameters",
                       GetParameters.Request(names=["eps_rel", "min_object_pixels", "pair_interval", "ego_method",
                                                    "track_max_age", "track_gate_abs"]))
    out["read_back"] = [(v.double_value, v.integer_value, v.string_value) for v in got.values]
    return out


def test_nodes_stay_alive(campaign):
    assert campaign["alive"] == (True, True)


def test_every_error_kind_counted_exactly(campaign):
    d, exp = campaign["diag_a"], campaign["expected"]
    got = {k: count(d, k) for k in exp}
    assert got == exp
    assert count(d, "pairing_resolution_changes") == 2        # to half size and back: pairing restarts twice
    assert count(d, "camera_info_misses") == 2, campaign["log_a"][-3000:]   # frame NO_INFO as I1, then as I2
    assert count(d, "errors_pipeline") == 0
    assert count(d, "frames_in") == N0 + ROUNDS * 8 + 2 + (N_SEQ - N0) + 1
    b = campaign["diag_b"]
    assert count(b, "errors_decode") == N_DECODE and count(b, "errors_pipeline") == 0
    print("fault campaign counts:", got, "decode", count(b, "errors_decode"), "flood publish / drain s",
          round(campaign["flood_publish_s"], 2), round(campaign["flood_s"], 2))


def test_each_kind_logged_but_throttled(campaign):
    log_a, log_b = campaign["log_a"], campaign["log_b"]
    for text in ("'bayer_rggb8' not supported", "step×height", "CameraInfo", "stamp went backwards",
                 "image size changed to 64×48", "no CameraInfo with stamp"):
        assert text in log_a, text
    assert "could not be decoded" in log_b
    warnings = [ln for ln in log_a.splitlines() if re.search(r"\[(WARN|ERROR)\]", ln)]
    assert 4 <= len(warnings) <= 30, "\n".join(warnings[:50])
    assert len(re.findall(r"could not be decoded", log_b)) <= 5


def test_big_image_rejected_by_header_before_its_data_is_touched():
    """8000×8000 with only 1,000 bytes of data: the pixel-count limit answers first (not the data-length check)."""
    from dpm_ros.ros.image_convert import ImageFormatError, image_to_rgb

    with pytest.raises(ImageFormatError, match="8000×8000") as exc:
        image_to_rgb(raw(8000, 8000, "rgb8", b"\0" * 1000, 24000))
    assert exc.value.kind == "size" and "step×height" not in str(exc.value)


def test_good_frames_after_the_flood_match_ground_truth(campaign):
    seq, frames, p = campaign["seq"], campaign["frames"], campaign["pa"]
    masks, odo = by_stamp(p.got("dpm/motion_mask")), by_stamp(p.got("dpm/odometry"))
    checked = 0
    for i in range(N0 + 1, N_SEQ):
        if i == RES_AFTER + 1:
            assert frames[i]["sent_stamp"] not in masks      # paired with nothing after the resolution change
            continue
        a, b = frames[i - 1], frames[i]
        m = masks[b["sent_stamp"]]
        pred = np.frombuffer(m.data, np.uint8).reshape(m.height, m.width) == 255
        gt = b["instances"] > 0
        assert (pred & gt).sum() / max((pred | gt).sum(), 1) >= 0.99, i
        T_c1_c2 = invert_se3(b["T_w_c"]) @ a["T_w_c"]
        v = -T_c1_c2[:3, 3] / (b["sent_stamp"] - a["sent_stamp"])
        tw = odo[b["sent_stamp"]].twist.twist.linear
        np.testing.assert_allclose([tw.x, tw.y, tw.z], v, rtol=1e-3, atol=1e-4)
        checked += 1
    assert checked == N_SEQ - N0 - 2
    pb = campaign["pb"]
    masks_b = by_stamp(pb.got("dpm/motion_mask"))
    for i in range(N0 + 1, N0 + 3):
        m = masks_b[frames[i]["sent_stamp"]]
        pred = np.frombuffer(m.data, np.uint8).reshape(m.height, m.width) == 255
        gt = frames[i]["instances"] > 0
        assert (pred & gt).sum() / max((pred | gt).sum(), 1) >= 0.99, i
    assert seq.height == 96


def test_bad_parameter_updates_rejected_with_reason(campaign):
    r = campaign["param_results"]
    for label in ("eps_rel=5.0", "min_object_pixels=0", "conf_threshold=-1"):
        ok, reason = r[label]
        assert not ok and "out of range" in reason and label.split("=")[0] in reason, (label, reason)
    assert not r["eps_rel='abc'"][0] and "type" in r["eps_rel='abc'"][1].lower()
    assert not r["pair_interval=0.5"][0] and "read-only" in r["pair_interval=0.5"][1]
    assert not r["ego_method='foo'"][0] and "read-only" in r["ego_method='foo'"][1]   # structural: no runtime change
    for label in ("eps_rel=nan", "track_gate_abs=inf"):
        assert not r[label][0] and label.split("=")[0] in r[label][1], (label, r[label])
    assert r["track_max_age=2.0"] == (True, "")
    eps, mop, pi, ego, age, gate = r["read_back"]
    assert (eps[0], mop[1], pi[0], ego[2], age[0], gate[0]) == (0.0001, 20, pytest.approx(0.1), "pixel_aligned", 2.0,
                                                                  0.3)
