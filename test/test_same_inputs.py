"""The node and `dpm replay` share one input half (``stream.inputs.FrameInput``) and one per-pair step: the same list
of good and malformed inputs — an image shorter than step × height, a wrong encoding, a row step shorter than a
row, a depth image in a wrong encoding, an all-NaN depth image, a stamp going backwards, a change of image size —
fed to `dpm_node` (a separate process, DDS loopback) and to `dpm replay` (the CLI's function, from a bag of the same
messages) is counted the same way, kind by kind."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import ROOT, dpm, finish, read_bag

import dpm_ros.engine.oracle  # noqa: E402,F401  (a missing or broken module fails here, never skips)

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out

FRAMES, HEIGHT, WIDTH, FPS, T0 = 10, 48, 64, 10.0, 1.0
IMAGE, INFO, DEPTH = "/camera/image_raw", "/camera/camera_info", "/gt/depth"
PARAMS = {"camera_info_sync": "latest", "scale_source": "depth", "depth_topic": DEPTH, "depth_wait": 1.0,
          "pair_interval": 0.1, "max_pair_gap": 0.15}
# what both must count (the node's /diagnostics names); each kind is planted once or twice below
KEYS = ("errors_size", "errors_encoding", "scale_depth_errors", "scale_depth_misses", "pairing_stamp_jumps_back",
        "pairing_resolution_changes", "pairing_no_partner", "pairing_pairs_made", "pairing_frames_in")


def inputs(seq_bag) -> list:
    """(topic, message) in sending order: the synthetic sequence with malformed inputs planted."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo, Image

    frames: dict = {}
    for topic, _, data in read_bag(seq_bag):
        if topic in (IMAGE, INFO, DEPTH):
            msg = deserialize_message(data, Image if topic != INFO else CameraInfo)
            frames.setdefault((msg.header.stamp.sec, msg.header.stamp.nanosec), {})[topic] = msg
    frames = [frames[k] for k in sorted(frames)]
    assert len(frames) == FRAMES

    def image(f, **change) -> Image:
        m = f[IMAGE]
        fields = dict(header=m.header, height=m.height, width=m.width, encoding=m.encoding, is_bigendian=0,
                      step=m.step, data=bytes(m.data))
        return Image(**dict(fields, **change))

    out = []
    for i, f in enumerate(frames):
        depth = f[DEPTH]
        if i == 3:   # all-NaN depth: the pair has no valid depth pixel (a depth miss, scale from the chain)
            depth = Image(header=depth.header, height=depth.height, width=depth.width, encoding="32FC1",
                          is_bigendian=0, step=depth.step, data=np.full((depth.height, depth.width), np.nan,
                                                                        "<f4").tobytes())
        out += [(INFO, f[INFO]), (DEPTH, depth), (IMAGE, f[IMAGE])]
        if i == 2:
            good = bytes(f[IMAGE].data)
            out += [(IMAGE, image(f, data=good[: len(good) // 2])),          # shorter than step × height: size
                    (IMAGE, image(f, encoding="bayer_rggb8")),                # encoding
                    (IMAGE, image(f, step=WIDTH)),                            # row step < a row: size
                    (DEPTH, Image(header=f[DEPTH].header, height=2, width=2, encoding="rgb8", step=6,
                                  data=bytes(12)))]                           # depth encoding
        if i == 4:
            out.append((IMAGE, frames[1][IMAGE]))                             # stamp going backwards
        if i == 6:
            half = np.frombuffer(bytes(f[IMAGE].data), np.uint8).reshape(HEIGHT, WIDTH, 3)[::2, ::2]
            st = f[IMAGE].header.stamp
            header = type(f[IMAGE].header)(stamp=type(st)(sec=st.sec, nanosec=st.nanosec + 50_000_000),
                                           frame_id=f[IMAGE].header.frame_id)
            out.append((IMAGE, image(f, header=header, height=HEIGHT // 2, width=WIDTH // 2, step=3 * WIDTH // 2,
                                     data=np.ascontiguousarray(half).tobytes())))   # another image size
    return out


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("same_inputs")
    seq = tmp / "seq.mcap"
    rc, err = finish(dpm("synth", "--out", seq, "--frames", FRAMES, "--height", HEIGHT, "--width", WIDTH, "--fps",
                         FPS, "--t0", T0, "--seed", 6, "--objects", 1, "--renderer", "numpy"), timeout=120)
    assert rc == 0, err
    return seq, inputs(seq)


def test_node_and_replay_count_the_same_malformed_inputs_the_same_way(planted, tmp_path):
    import time

    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    from dpm_ros.ros.bag_recorder import BagWriter
    from dpm_ros.ros.harness import NodeProcess, Probe
    from dpm_ros.ros.messages import stamp_to_sec
    from dpm_ros.config import load_config
    from dpm_ros.ros.replay import msgtype_of, replay_bag

    seq, msgs = planted
    bag = tmp_path / "planted.mcap"
    with BagWriter(bag) as writer:
        for k, (topic, msg) in enumerate(msgs):   # log time: sending order
            writer.add_topic(topic, msgtype_of(msg))
            writer.write(topic, 1_000_000_000 + k, serialize_message(msg))
    params = load_config(ROOT / "config" / "dpm.yaml", dict(PARAMS, engine=f"oracle:{seq}"))
    stats = replay_bag(bag, tmp_path / "out.mcap", params, progress=False)
    offline = dict(stats.counters, **{f"pairing_{k}": v for k, v in stats.pairing.items()},
                   **{f"errors_{k}": v for k, v in stats.skipped_images.items()})
    outputs = {stamp for t, stamp, _ in read_bag(tmp_path / "out.mcap") if t == "/dpm/odometry"}
    planted_counts = dict(errors_size=2, errors_encoding=1, scale_depth_errors=1, pairing_stamp_jumps_back=1,
                          pairing_resolution_changes=2)
    assert {k: offline.get(k, 0) for k in planted_counts} == planted_counts, offline
    assert offline["scale_depth_misses"] >= 1 and stats.pairs == offline["pairing_pairs_made"] == len(outputs)

    args = ["--ros-args", "--params-file", str(ROOT / "config" / "dpm.yaml"), "-r", f"image:={IMAGE}",
            "-r", f"camera_info:={INFO}", "-p", f"engine:=oracle:{seq}", "-p", "qos_reliability:=reliable",
            "-p", "qos_depth:=100", "-p", "diagnostics_period:=0.5",
            *[a for k, v in PARAMS.items() for a in ("-p", f"{k}:={v}")]]
    probe = Probe()
    depth_pub = probe.node.create_publisher(Image, DEPTH, QoSProfile(depth=50,
                                                                     reliability=ReliabilityPolicy.RELIABLE))
    pubs = {IMAGE: probe.image_pub, INFO: probe.info_pub, DEPTH: depth_pub}
    try:
        with NodeProcess(args, tmp_path / "node.log") as node:
            assert probe.wait_connected(150, node, (probe.info_pub, depth_pub)), node.log()
            for topic, msg in msgs:
                pubs[topic].publish(msg)
                stamp = stamp_to_sec(msg.header.stamp)
                if topic == IMAGE and any(abs(o * 1e-9 - stamp) < 1e-6 for o in outputs):   # a pair: wait for it
                    assert probe.wait_for(lambda: any(abs(stamp_to_sec(m.header.stamp) - stamp) < 1e-6
                                                      for m in probe.got("dpm/odometry")), 60), node.log()[-3000:]
                else:
                    time.sleep(0.2)
            n = len(probe.got("diagnostics"))
            assert probe.wait_for(lambda: len(probe.got("diagnostics")) >= n + 2, 30)   # counters final
            live = {kv.key: kv.value for st in probe.got("diagnostics")[-1].status
                    if st.name.startswith("dpm_node:") for kv in st.values}
            assert node.stop() == 0
    finally:
        probe.close()
    got = {k: int(float(live.get(k, 0))) for k in KEYS}
    assert got == {k: int(offline.get(k, 0)) for k in KEYS}, (got, live)
    assert int(float(live["errors_depth_encoding"])) == 1 and int(float(live["pairs_dropped"])) == 0
