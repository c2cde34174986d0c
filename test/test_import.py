"""``dpm import``: a video and an image folder with a ROS calibration YAML become bags that ``dpm replay`` turns
into outputs with the given intrinsics (/dpm/camera_info = the calibration scaled by --resize and then to the
network's resolution); a TUM rgb.txt/depth.txt pair gives stamps from the lists and depth in millimetres; stamps
from names / a timestamps file; unreadable files are named and leave no output."""
from __future__ import annotations

import numpy as np
import pytest

from dpm_ros.bag import header_ns, read_messages
from dpm_ros.cli import main as dpm
from dpm_ros.engine.pair_io import crop_intrinsics   # the engine centre-crops to its aspect, then resizes
from dpm_ros.geometry.camera import scale_intrinsics

K_CAL = np.array([[500.0, 0, 319.5], [0, 502.0, 239.5], [0, 0, 1]])   # calibration at 640×480
CALIB = """image_width: 640
image_height: 480
camera_name: test_cam
camera_matrix: {rows: 3, cols: 3, data: [500.0, 0.0, 319.5, 0.0, 502.0, 239.5, 0.0, 0.0, 1.0]}
distortion_model: plumb_bob
distortion_coefficients: {rows: 1, cols: 5, data: [0.1, -0.05, 0.001, 0.002, 0.0]}
rectification_matrix: {rows: 3, cols: 3, data: [1, 0, 0, 0, 1, 0, 0, 0, 1]}
projection_matrix: {rows: 3, cols: 4, data: [500.0, 0, 319.5, 0, 0, 502.0, 239.5, 0, 0, 0, 1, 0]}
"""


def _frames(n, h=240, w=320, seed=0):
    """Textured frames with a square moving right (something for the network to look at)."""
    import cv2

    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur((rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1),
                            (0, 0), 3)
    out = []
    for i in range(n):
        f = base.copy()
        f[h // 3:h // 3 + 40, 20 + 12 * i:60 + 12 * i] = (250, 30, 30)
        out.append(f)
    return out


@pytest.fixture
def calib(tmp_path):
    p = tmp_path / "calib.yaml"
    p.write_text(CALIB)
    return p


def _topics(path):
    from dpm_ros.bag import open_bag

    r = open_bag(path)
    try:
        return {c.topic: (c.msgtype, c.msgcount) for c in r.connections}
    finally:
        r.close()


def _replay_K(bag, tmp_path):
    out = tmp_path / f"{bag.stem}_out.mcap"
    assert dpm(["replay", str(bag), "--out", str(out), "--no-progress", "-p", "camera_info_sync:=latest"]) == 0
    infos = [m for _, _, m in read_messages(out, ["/dpm/camera_info"])]
    assert infos
    return out, infos


@pytest.mark.ros   # runs dpm replay (rclpy)
def test_video_with_calibration_yaml_replays_with_the_scaled_K(tmp_path, calib):
    import cv2

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 15.0, (320, 240))
    assert writer.isOpened()
    for f in _frames(6):
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    bag = tmp_path / "clip.mcap"
    assert dpm(["import", str(video), "--out", str(bag), "--camera-info", str(calib), "--resize", "160x120",
                "--no-progress"]) == 0
    assert _topics(bag) == {"/camera/image_raw": ("sensor_msgs/msg/Image", 6),
                            "/camera/camera_info": ("sensor_msgs/msg/CameraInfo", 6)}
    K_bag = scale_intrinsics(K_CAL, (480, 640), (120, 160))           # calibration size → written size
    images = [m for _, _, m in read_messages(bag, ["/camera/image_raw"])]
    infos = [m for _, _, m in read_messages(bag, ["/camera/camera_info"])]
    assert [(m.height, m.width, m.encoding) for m in images] == [(120, 160, "rgb8")] * 6
    assert [header_ns(m) for m in images] == [10**9 + round(i * 1e9 / 15) for i in range(6)]   # video's 15 fps
    assert [header_ns(m) for m in infos] == [header_ns(m) for m in images]
    np.testing.assert_allclose(np.reshape(infos[0].k, (3, 3)), K_bag, atol=1e-9)
    np.testing.assert_allclose(infos[0].d, [0.1, -0.05, 0.001, 0.002, 0.0])
    assert (infos[0].height, infos[0].width) == (120, 160)

    _, outs = _replay_K(bag, tmp_path)
    h, w = outs[0].height, outs[0].width
    np.testing.assert_allclose(np.reshape(outs[0].k, (3, 3)), crop_intrinsics(K_bag, (120, 160), (h, w)),
                               rtol=1e-6)


@pytest.mark.ros   # runs dpm replay (rclpy)
def test_image_folder_with_calibration_yaml_jpeg_replays_with_the_scaled_K(tmp_path, calib):
    import cv2

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(_frames(5, seed=1)):   # names sort naturally: 9 before 10
        cv2.imwrite(str(folder / f"img{[1, 2, 9, 10, 11][i]}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    (folder / "notes.txt").write_text("not an image")
    bag = tmp_path / "folder.mcap"
    assert dpm(["import", str(folder), "--out", str(bag), "--camera-info", str(calib), "--resize", "0.5",
                "--format", "jpeg", "--topic", "/front/image_raw", "--rate", "5", "--start", "100",
                "--no-progress"]) == 0
    assert _topics(bag) == {"/front/image_raw/compressed": ("sensor_msgs/msg/CompressedImage", 5),
                            "/front/camera_info": ("sensor_msgs/msg/CameraInfo", 5)}
    msgs = [m for _, _, m in read_messages(bag, ["/front/image_raw/compressed"])]
    assert [header_ns(m) for m in msgs] == [100 * 10**9 + i * 200_000_000 for i in range(5)]
    decoded = [cv2.cvtColor(cv2.imdecode(np.asarray(m.data), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for m in msgs]
    assert {d.shape for d in decoded} == {(120, 160, 3)}
    frames = [cv2.resize(f, (160, 120), interpolation=cv2.INTER_AREA) for f in _frames(5, seed=1)]
    errors = np.array([[np.abs(d.astype(int) - f).mean() for f in frames] for d in decoded])
    assert errors.argmin(axis=1).tolist() == [0, 1, 2, 3, 4]    # the frames in natural order (img9 before img10)
    assert errors.min(axis=1).max() < 8                          # JPEG q90 of colour noise (chroma subsampling)
    K_bag = scale_intrinsics(K_CAL, (480, 640), (120, 160))
    _, outs = _replay_K(bag, tmp_path)
    h, w = outs[0].height, outs[0].width
    np.testing.assert_allclose(np.reshape(outs[0].k, (3, 3)), crop_intrinsics(K_bag, (120, 160), (h, w)),
                               rtol=1e-6)


def test_tum_lists_give_stamps_and_millimetre_depth(tmp_path):
    import cv2

    (tmp_path / "rgb").mkdir()
    (tmp_path / "depth").mkdir()
    stamps = [1305031102.175304, 1305031102.211214, 1305031102.243211]
    dstamps = [s + 0.004 for s in stamps]
    rgb_lines, depth_lines = ["# color images", "# timestamp filename"], ["# depth"]
    for i, (s, d) in enumerate(zip(stamps, dstamps)):
        cv2.imwrite(str(tmp_path / "rgb" / f"{s:.6f}.png"), _frames(3, 48, 64)[i][..., ::-1])
        depth = np.full((48, 64), 5000 * (1.0 + i), np.uint16)     # TUM: 5000 units per metre
        depth[0, 0] = 0                                            # no measurement
        cv2.imwrite(str(tmp_path / "depth" / f"{d:.6f}.png"), depth)
        rgb_lines.append(f"{s:.6f} rgb/{s:.6f}.png")
        depth_lines.append(f"{d:.6f} depth/{d:.6f}.png")
    (tmp_path / "rgb.txt").write_text("\n".join(rgb_lines) + "\n")
    (tmp_path / "depth.txt").write_text("\n".join(depth_lines) + "\n")
    bag = tmp_path / "tum.mcap"
    assert dpm(["import", str(tmp_path / "rgb.txt"), "--out", str(bag), "--depth", str(tmp_path / "depth.txt"),
                "--depth-scale", "5000", "--K", "525,525,319.5,239.5", "--no-progress"]) == 0
    images = [m for _, _, m in read_messages(bag, ["/camera/image_raw"])]
    depths = [m for _, _, m in read_messages(bag, ["/camera/depth/image_raw"])]
    assert [header_ns(m) for m in images] == [1305031102175304000, 1305031102211214000, 1305031102243211000]
    assert [header_ns(m) for m in depths] == [header_ns(m) for m in images]    # matched to the colour frame
    d = [np.frombuffer(bytes(m.data), "<u2").reshape(48, 64) for m in depths]
    assert all(m.encoding == "16UC1" for m in depths)
    assert [int(x[5, 5]) for x in d] == [1000, 2000, 3000] and all(int(x[0, 0]) == 0 for x in d)


def test_stamps_from_names_and_timestamps_file(tmp_path):
    import cv2

    folder = tmp_path / "f"
    folder.mkdir()
    for i, f in enumerate(_frames(3, 32, 32)):
        cv2.imwrite(str(folder / f"cam_{1700000000123 + 50 * i}.png"), f)
    a = tmp_path / "a.mcap"
    assert dpm(["import", str(folder), "--out", str(a), "--stamps-from-names", "ms", "--no-progress"]) == 0
    assert [header_ns(m) for _, _, m in read_messages(a, ["/camera/image_raw"])] == [
        (1700000000123 + 50 * i) * 10**6 for i in range(3)]
    ts = tmp_path / "t.txt"
    ts.write_text("# s\n10.0\n10.5\n11.25\n")
    b = tmp_path / "b.mcap"
    assert dpm(["import", str(folder), "--out", str(b), "--timestamps", str(ts), "--no-progress"]) == 0
    assert [header_ns(m) for _, _, m in read_messages(b, ["/camera/image_raw"])] == [10_000_000_000, 10_500_000_000,
                                                                                    11_250_000_000]


def test_unreadable_file_is_named_and_leaves_no_output(tmp_path, capsys):
    import cv2

    folder = tmp_path / "f"
    folder.mkdir()
    for i, f in enumerate(_frames(3, 32, 32)):
        cv2.imwrite(str(folder / f"{i}.png"), f)
    (folder / "1.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "o.mcap"
    assert dpm(["import", str(folder), "--out", str(out), "--no-progress"]) == 1
    assert f"cannot read image '{folder / '1.png'}'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]          # no output, no temporary left
    assert dpm(["import", str(folder), "--out", str(out), "--skip-unreadable", "--no-progress"]) == 0
    assert f"skipped {folder / '1.png'}" in capsys.readouterr().err
    assert len(list(read_messages(out, ["/camera/image_raw"]))) == 2
    assert dpm(["import", str(folder), "--out", str(out), "--no-progress"]) == 1     # exists: not replaced
    assert "already exists" in capsys.readouterr().err
    assert dpm(["import", str(tmp_path / "nothing_here"), "--out", str(tmp_path / "x.mcap")]) == 1
