"""Issue 14's fast path gives the bytes of the slow one: frames downscaled once on arrival (from a view onto the
message's bytes) vs full-resolution RGB frames the engine resizes itself; masks and labels upsampled straight into
the message buffer vs the former full-size arrays; lazily built outputs vs eagerly built ones. Real shipped ONNX
engine, real pipeline; every message compared as serialised CDR bytes."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from dpm_ros.bag import header_ns
from dpm_ros.stream.pairing import FramePair, FrameRing, StampedFrame
from dpm_ros.ros.replay import msgtype_of
from dpm_ros.ros.bag_recorder import canonical_cdr
from dpm_ros.ros import messages as M
from dpm_ros.ros.diagnostics import NodeHealth, stage_key
from dpm_ros.engine.pair_io import resize_nearest
from dpm_ros.engine.select import open_engine
from dpm_ros.ros.image_convert import (fill_image, image_msg_into, image_pixels, image_to_rgb, nearest_into,
                                       prepare_pixels)
from dpm_ros.config import Config
from dpm_ros.ros.outputs import PAIR_TOPICS, pair_messages, step_messages
from dpm_ros.stream.step import PairProcessor, frame_sizes
from dpm_ros.synthetic import SyntheticSequence

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out

FRAME_ID = "cam_optical"
H, W = 150, 206          # not a multiple of the 64×64 network: INTER_AREA with fractional weights


def image_msg(rgb: np.ndarray, encoding: str, pad: int = 0, stamp_ns: int = 0) -> Image:
    """rgb (H, W, 3) as a sensor_msgs/Image in ``encoding`` with ``pad`` bytes of row padding."""
    px = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)]),
          "bgra8": np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 9, np.uint8)]), "mono8": rgb[..., :1]}[encoding]
    rows = np.ascontiguousarray(px).reshape(rgb.shape[0], -1)
    rows = np.hstack([rows, np.full((rows.shape[0], pad), 77, np.uint8)])
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding, step=rows.shape[1])
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = "cam_optical"
    msg.data = rows.tobytes()
    return msg


@pytest.fixture(scope="module")
def engine():
    return open_engine("", "onnxruntime")


@pytest.fixture(scope="module")
def frames():
    seq = SyntheticSequence(seed=5, n_frames=4, fps=10.0, height=H, width=W, n_objects=2, renderer="numpy")
    return [seq.frame(i)["image"] for i in range(len(seq))], seq.K


def run_pairs(engine, frames, K, encoding, prepared, wanted=None):
    """Every pair of the 4 frames through a fresh PairProcessor (CameraInfo for every stamp); list of message lists."""
    params = Config()
    engine_hw, out_hw = frame_sizes(engine)
    step = PairProcessor(params, engine, prepare=partial(prepare_pixels, engine_hw=engine_hw, out_hw=out_hw))
    ring = FrameRing(params.pair_interval, params.max_pair_gap, params.buffer_size)
    outs = []
    for i, rgb in enumerate(frames[0]):
        stamp_ns = 1_000_000_000 + i * 100_000_000
        msg = image_msg(rgb, encoding, pad=3, stamp_ns=stamp_ns)
        step.add_camera_info(M.calibration(M.camera_info_msg(Header(stamp=msg.header.stamp, frame_id="cam_optical"),
                                                             K, H, W)))
        t, ns = M.stamp_to_sec(msg.header.stamp), header_ns(msg)
        if prepared == "deferred" and i % 2:   # the node left the downscale to the worker (PairProcessor)
            px, enc = image_pixels(msg)
            frame = StampedFrame(t, None, None, ns, 0.0, tuple(px.shape[:2]), None, (px, enc), FRAME_ID)
        elif prepared:
            px, enc = image_pixels(msg)
            image, colours = prepare_pixels(px, enc, engine_hw, out_hw)
            frame = StampedFrame(t, image, None, ns, 0.0, tuple(px.shape[:2]), colours, frame_id=FRAME_ID)
        else:   # the former input path: a full-resolution RGB copy, resized by the engine in every pair
            frame = StampedFrame(t, image_to_rgb(msg), None, ns, 0.0, frame_id=FRAME_ID)
        pair = ring.push(frame)
        if pair is not None:
            outs.append(step_messages(step.process(pair), params, wanted))
    assert len(outs) >= 2
    return outs


def cdr(msg) -> bytes:
    """The message's CDR with alignment padding zeroed (as `dpm replay` writes it; rclpy leaves padding unset)."""
    return canonical_cdr(serialize_message(msg), msgtype_of(msg))


def as_bytes(messages) -> list:
    return [(topic, cdr(msg)) for topic, msg in messages]


@pytest.mark.parametrize("encoding", ["bgr8", "rgb8", "rgba8", "mono8"])
def test_frames_prepared_on_arrival_give_the_bytes_of_full_frames(engine, frames, encoding):
    assert engine.resizes_input and frame_sizes(engine)[0] is not None
    full = run_pairs(engine, frames, frames[1], encoding, prepared=False)
    fast = run_pairs(engine, frames, frames[1], encoding, prepared=True)
    late = run_pairs(engine, frames, frames[1], encoding, prepared="deferred")
    assert [t for t, _ in full[0]] == list(PAIR_TOPICS) + ["dpm/odometry", "tf"]
    assert [as_bytes(m) for m in fast] == [as_bytes(m) for m in full]
    assert [as_bytes(m) for m in late] == [as_bytes(m) for m in full]


def test_prepared_frame_is_the_engines_own_resize_and_the_colours_its_nearest_pixels(engine, frames):
    from dpm_ros.engine.pair_io import resize_image

    rgb = frames[0][1]
    msg = image_msg(rgb, "bgra8", pad=5)
    px, enc = image_pixels(msg)
    assert np.shares_memory(px, np.frombuffer(msg.data, np.uint8))     # a view onto the message's bytes, no copy
    small, colours = prepare_pixels(px, enc, (64, 64), (64, 64))
    np.testing.assert_array_equal(small, resize_image(rgb, 64, 64))
    from dpm_ros.engine.pair_io import crop_image                          # the engine's centre crop, not squashed
    np.testing.assert_array_equal(colours, resize_nearest(crop_image(rgb, 64, 64), 64, 64))
    assert small.flags.c_contiguous and small.shape == (64, 64, 3)
    full, colours2 = prepare_pixels(px, enc, None, (64, 64))        # an engine that takes frames as they are
    np.testing.assert_array_equal(full, rgb)
    np.testing.assert_array_equal(colours2, colours)


@pytest.mark.parametrize("big", [(12, 16), (480, 640), (481, 641), (720, 1280), (1080, 1920)])
@pytest.mark.parametrize("small", [(64, 64), (96, 128), (7, 5)])
def test_mask_and_labels_into_the_message_buffer_equal_the_former_full_size_arrays(big, small):
    rng = np.random.default_rng(big[0] + small[1])
    mask = rng.random(small) > 0.6
    labels = rng.integers(0, 70000, small).astype(np.uint16)
    hd = Header(frame_id="c")
    from dpm_ros.engine.pair_io import uncrop_nearest          # full-size arrays: the engine's crop window, 0 outside
    old_mask = fill_image(Image(header=hd), np.where(uncrop_nearest(mask, *big, False), np.uint8(255), np.uint8(0)),
                          "mono8")
    old_labels = fill_image(Image(header=hd), uncrop_nearest(labels, *big), "mono16")
    assert cdr(M.motion_mask_msg(hd, mask, *big)) == cdr(old_mask)
    assert cdr(M.labels_msg(hd, labels, *big)) == cdr(old_labels)


def test_nearest_into_fills_any_strided_view_and_the_message_keeps_that_buffer():
    small = np.arange(12, dtype=np.uint16).reshape(3, 4)
    canvas = np.zeros((10, 13), np.uint16)
    nearest_into(small, canvas[2:9, 3:12])                  # a window of a bigger image (e.g. a crop)
    np.testing.assert_array_equal(canvas[2:9, 3:12], resize_nearest(small, 7, 9))
    assert canvas[:2].sum() == 0 and canvas[:, :3].sum() == 0 and canvas[9:].sum() == 0
    msg = Image()
    view = image_msg_into(msg, 5, 6, "mono16")
    view[1, 2] = 0x1234
    assert (msg.step, len(msg.data), bytes(msg.data)[1 * 12 + 4:1 * 12 + 6]) == (12, 60, b"\x34\x12")


def test_lazy_outputs_are_the_eager_bytes_and_nothing_else(engine, frames):
    eager = run_pairs(engine, frames, frames[1], "bgr8", prepared=True)
    rng = np.random.default_rng(0)
    subsets = [set()] + [{t} for t in PAIR_TOPICS] + [set(rng.choice(PAIR_TOPICS, 3, replace=False))]
    for wanted in subsets:
        lazy = run_pairs(engine, frames, frames[1], "bgr8", prepared=True, wanted=wanted)
        expect = [[(t, b) for t, b in as_bytes(m) if t in wanted or t in ("dpm/odometry", "tf")] for m in eager]
        assert [as_bytes(m) for m in lazy] == expect, wanted


def test_pair_messages_times_each_message_it_builds():
    from test_messages import HEADER, fake_result

    timings: dict = {}
    out = pair_messages(fake_result(), HEADER, np.zeros((12, 16, 3), np.uint8), wanted={"dpm/motion_mask",
                                                                                        "dpm/objects"},
                        timings=timings)
    assert list(out) == ["dpm/motion_mask", "dpm/objects"] and set(timings) == set(out)
    assert all(0.0 <= v < 1000.0 for v in timings.values())


def test_stage_latencies_and_skipped_outputs_in_diagnostics():
    health = NodeHealth()
    health.stage("receive", 4.0)
    health.stage("convert_resize", 2.0)
    health.stage("convert_resize", 4.0)
    health.pair_stages({"inference": 10.0, "convert:dpm/motion_mask": 1.5, "publish:dpm/objects/markers": 0.5,
                        "publish:tf": 0.25, "total": 30.0}, skipped=5)
    _, _, values = health.report({}, 0)
    assert values["stage_convert_resize_ms_mean"] == 3.0 and values["stage_convert_resize_ms_max"] == 4.0
    assert values["stage_motion_mask_convert_ms_mean"] == 1.5 and values["stage_markers_publish_ms_max"] == 0.5
    assert values["stage_tf_publish_ms_mean"] == 0.25 and values["outputs_skipped"] == 5
    keys = [k for k in values if k.startswith("stage_") and k.endswith("_mean")]
    assert keys[:3] == ["stage_receive_ms_mean", "stage_convert_resize_ms_mean", "stage_inference_ms_mean"]
    assert keys[-1] == "stage_total_ms_mean"
    assert stage_key("geometry") == "stage_geometry_ms"


def test_frames_of_other_sizes_never_pair_after_early_downscale():
    ring = FrameRing(0.1, 0.5, 8)
    small = np.zeros((64, 64, 3), np.uint8)
    assert ring.push(StampedFrame(1.0, small, size=(480, 640))) is None
    assert ring.push(StampedFrame(1.1, small, size=(720, 1280))) is None     # same small image, other camera size
    assert ring.counters.resolution_changes == 1
    assert isinstance(ring.push(StampedFrame(1.2, small, size=(720, 1280))), FramePair)


@pytest.mark.parametrize("frame_id", ["", "c", "cam_optical", "a_frame_id_of_17c"])
@pytest.mark.parametrize("encoding,pad", [("rgb8", 0), ("bgr8", 3), ("mono8", 1), ("bgra8", 0)])
def test_serialised_image_is_read_in_place_with_every_field(frame_id, encoding, pad):
    from dpm_ros.ros.image_convert import ImageFormatError, parse_image_cdr

    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    stamp_ns = -3 * 1_000_000_000 + 12345 if frame_id == "c" else 1_700_000_000_123_456_789   # int32 sec < 0 too
    msg = image_msg(rgb, encoding, pad=pad, stamp_ns=stamp_ns)
    msg.header.frame_id = frame_id
    data = serialize_message(msg)
    raw = parse_image_cdr(data)
    assert (raw.header.stamp.sec, raw.header.stamp.nanosec, raw.header.frame_id) == \
        (msg.header.stamp.sec, msg.header.stamp.nanosec, frame_id)
    assert (raw.height, raw.width, raw.encoding, raw.is_bigendian, raw.step) == \
        (msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step)
    assert bytes(raw.data) == bytes(msg.data)
    px, enc = image_pixels(raw)
    np.testing.assert_array_equal(to_rgb_of(raw), image_to_rgb(msg))
    assert np.shares_memory(px, np.frombuffer(data, np.uint8))           # the pixels are not copied
    for bad in (data[:3], b"\x07\x07" + data[2:], data[:len(data) - 2]):
        with pytest.raises(ImageFormatError):
            image_pixels(parse_image_cdr(bad))


def to_rgb_of(raw):
    from dpm_ros.ros.image_convert import to_rgb

    return to_rgb(*image_pixels(raw))


def test_bench_io_reports_before_and_now_with_identical_outputs():
    from dpm_ros.ros.io_bench import run_io

    r = run_io(96, 128, repeats=2)
    assert r["outputs_identical"] is True and r["engine_input"] == "64x64" and r["camera"] == "128x96"
    for part in (r["per_frame"]["before"], r["per_frame"]["now"], r["per_pair_outputs"]["now_all"]):
        assert 0.0 <= part["cpu_ms"] < 10000.0 and 0.0 < part["wall_ms"] < 10000.0
    assert r["per_pair_outputs"]["now_none"]["cpu_ms"] <= r["per_pair_outputs"]["now_all"]["cpu_ms"] + 1.0


def test_node_reads_other_cdr_encapsulations_through_rclpy():
    """The node's raw image callback reads standard CDR in place; bytes parse_image_cdr refuses go to rclpy's
    deserialiser, and what that cannot read either is an ImageFormatError (counted by _enqueue), never another
    exception out of the callback."""
    from types import SimpleNamespace

    from dpm_ros.ros.image_convert import ImageFormatError, parse_image_cdr
    from dpm_ros.ros.node import DpmNode

    rgb = np.random.default_rng(2).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    data = serialize_message(image_msg(rgb, "bgr8", pad=2, stamp_ns=5_000_000_001))
    seen = []
    fake = SimpleNamespace(_enqueue=lambda read: seen.append(read()))
    DpmNode._on_image(fake, data)
    r = seen[-1]
    px, enc = r.pixels, r.encoding
    np.testing.assert_array_equal(px[..., ::-1], rgb)
    assert (r.stamp_ns, enc, r.stamp) == (5_000_000_001, "bgr8", 5.000000001)
    with pytest.raises(ImageFormatError):
        parse_image_cdr(b"\x00\x07" + data[2:])
    fake2 = SimpleNamespace(_enqueue=lambda read: seen.append(read()))
    with pytest.raises(ImageFormatError, match="deserialised|decode|serialised"):
        DpmNode._on_image(fake2, b"\x00\x07\x00\x00garbage")
