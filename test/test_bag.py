"""Synthetic sequence bags: what dpm_ros.bag writes reads back identically (images, stamps, poses, depth,
instances, synth_info), in MCAP and sqlite3, bare files and rosbag2 folders; `dpm synth` writes one."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from dpm_ros import bag
from dpm_ros.synthetic import SyntheticSequence


@pytest.fixture(scope="module")
def seq():
    return SyntheticSequence(seed=3, n_frames=4, fps=15.0, height=24, width=32, n_objects=3, renderer="numpy")


@pytest.mark.parametrize("storage,name", [("mcap", "seq.mcap"), ("sqlite3", "seq.db3"), ("mcap", "seqdir")])
def test_sequence_round_trip(tmp_path, seq, storage, name):
    path = bag.write_sequence(seq, tmp_path / name, storage=storage)
    assert path.is_file() == (name != "seqdir")
    images = list(bag.read_images(path))
    assert len(images) == len(seq)
    for i, (ns, img, frame_id) in enumerate(images):
        f = seq.frame(i)
        assert ns == bag.stamp_ns(f["stamp"]) and frame_id == bag.CAMERA_FRAME
        assert img.dtype == np.uint8 and np.array_equal(img, f["image"])
    depth = [d for _, d, _ in bag.read_images(path, bag.DEPTH_TOPIC, encoding=None)]
    inst = [d for _, d, _ in bag.read_images(path, bag.INSTANCES_TOPIC, encoding=None)]
    np.testing.assert_array_equal(depth[2], seq.frame(2)["depth"])
    np.testing.assert_array_equal(inst[1], seq.frame(1)["instances"])
    poses = bag.read_poses(path)
    assert [ns for ns, _ in poses] == [ns for ns, _, _ in images]
    np.testing.assert_allclose(poses[3][1], seq.frame(3)["T_w_c"], atol=1e-12)
    objects = seq.object_poses(2)
    assert objects
    for k, T in objects.items():
        np.testing.assert_allclose(bag.read_poses(path, child=f"object_{k}")[2][1], T, atol=1e-12)
    K, h, w = bag.read_camera_info(path)
    np.testing.assert_allclose(K, seq.K)
    assert (h, w) == (24, 32)
    info = bag.read_synth_info(path)
    again = SyntheticSequence(**info["params"], renderer="numpy")
    np.testing.assert_array_equal(again.frame(3)["image"], seq.frame(3)["image"])
    # the raw Image fields a consumer (cv_bridge, RViz, Foxglove) trusts: row step in bytes, encoding, endianness
    for topic, enc, bpp in ((bag.IMAGE_TOPIC, "rgb8", 3), (bag.DEPTH_TOPIC, "32FC1", 4)):
        msg = next(m for _, _, m in bag.read_messages(path, [topic]))
        assert (msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian) == (enc, 24, 32, 32 * bpp, 0)
        assert len(msg.data) == 24 * 32 * bpp


def test_schemas_are_stored_for_foxglove(tmp_path, seq):
    path = bag.write_sequence(seq, tmp_path / "s.mcap")
    reader = bag.open_bag(path)
    try:
        types = {c.topic: (c.msgtype, c.msgdef.data) for c in reader.connections}
    finally:
        reader.close()
    assert types[bag.IMAGE_TOPIC][0] == "sensor_msgs/msg/Image" and "uint32 height" in types[bag.IMAGE_TOPIC][1]
    assert types[bag.TF_TOPIC][0] == "tf2_msgs/msg/TFMessage"
    assert types[bag.SYNTH_INFO_TOPIC][0] == "std_msgs/msg/String"


def test_errors_name_the_problem(tmp_path, seq):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(bag.read_images(tmp_path / "missing.mcap"))
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"not a bag")
    with pytest.raises(ValueError, match="cannot be read|is not a rosbag2"):
        bag.read_synth_info(junk)
    path = bag.write_sequence(seq, tmp_path / "s.mcap")
    with pytest.raises(ValueError, match="already exists"):
        bag.write_sequence(seq, path)
    with pytest.raises(ValueError, match="storage"):
        bag.write_sequence(seq, tmp_path / "x.mcap", storage="rosbag1")
    with pytest.raises(ValueError, match="image_msg"):
        bag.image_msg(np.zeros((4, 4), np.float64), 0)


def test_dpm_synth_command_writes_a_bag(tmp_path):
    out = tmp_path / "cli.mcap"
    r = subprocess.run([sys.executable, "-m", "dpm_ros.cli", "synth", "--out", str(out), "--frames", "3",
                        "--height", "16", "--width", "20", "--seed", "9", "--renderer", "numpy"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    info = bag.read_synth_info(out)
    assert info["params"]["seed"] == 9 and info["params"]["n_frames"] == 3
    assert json.loads(json.dumps(info)) == info
    assert [img.shape for _, img, _ in bag.read_images(out)] == [(16, 20, 3)] * 3
    r = subprocess.run([sys.executable, "-m", "dpm_ros.cli", "synth", "--out", str(out), "--frames", "3"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "already exists" in r.stderr


def test_compressed_images_decode_to_rgb():
    import cv2

    rgb = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    ok, png = cv2.imencode(".png", rgb[..., ::-1])
    msg = bag.typestore().types["sensor_msgs/msg/CompressedImage"](
        header=bag.image_msg(rgb, 5).header, format="rgb8; png compressed bgr8", data=png.ravel())
    np.testing.assert_array_equal(bag.image_to_numpy(msg), rgb)
    np.testing.assert_array_equal(bag.image_to_numpy(bag.image_msg(rgb, 5), "bgr8"), rgb[..., ::-1])


def test_image_msg_encodings_and_refusals():
    """One Image builder for colour, float / int maps and 16UC1 millimetre depth (the importer's depth topic)."""
    mm = np.array([[1500, 0, 65535]], np.uint16)
    msg = bag.image_msg(mm, 7, "cam")
    assert (msg.encoding, msg.step, msg.is_bigendian, msg.header.frame_id) == ("16UC1", 6, 0, "cam")
    np.testing.assert_array_equal(np.frombuffer(bytes(msg.data), "<u2").reshape(1, 3), mm)
    assert bag.image_msg(np.zeros((2, 3), np.float32), 0).encoding == "32FC1"
    assert bag.image_msg(np.zeros((2, 3), np.int32), 0).encoding == "32SC1"
    for bad in (np.zeros((2, 3, 4), np.uint8), np.zeros((2, 3), np.float64), np.zeros((2, 3, 3), np.uint16)):
        with pytest.raises(ValueError, match="image_msg: need"):
            bag.image_msg(bad, 0)
