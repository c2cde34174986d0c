"""Aspect-preserving input: the engine centre-crops a camera image to the network's aspect (never squashes it), so
/dpm/camera_info, /dpm/depth and /dpm/points describe the real camera: square pixels stay square and K follows the
crop. Issue 10: fx/fy of a 640×480 and an 854×480 stream within 5 %."""
import cv2
import numpy as np
import pytest
import torch
from std_msgs.msg import Header

from dpm_ros.engine.pair_io import crop_box, crop_image, crop_intrinsics, resize_image, uncrop_nearest
from dpm_ros.engine.torch_backend import TorchEngine
from dpm_ros.model import build_model
from dpm_ros.pipeline import DPMPipeline, Frame
from dpm_ros.ros.outputs import pair_messages

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out


def test_crop_box_keeps_the_network_aspect():
    assert crop_box(480, 640, 96, 128) == (0, 0, 480, 640)          # 4:3 into 4:3: the whole image
    assert crop_box(480, 854, 96, 128) == (0, 107, 480, 640)        # 16:9 into 4:3: the sides go
    assert crop_box(480, 854, 64, 64) == (0, 187, 480, 480)
    assert crop_box(640, 480, 96, 128) == (140, 0, 360, 480)        # portrait into landscape: top and bottom go
    with pytest.raises(ValueError):
        crop_box(0, 10, 8, 8)


def test_resize_image_crops_instead_of_squashing():
    img = np.zeros((480, 854, 3), np.uint8)
    cv2.circle(img, (427, 240), 100, (255, 255, 255), -1)
    out = resize_image(img, 96, 128)
    np.testing.assert_array_equal(out, cv2.resize(img[:, 107:747], (128, 96), interpolation=cv2.INTER_AREA))
    ys, xs = np.nonzero(out[..., 0] > 127)
    assert np.ptp(xs) == pytest.approx(np.ptp(ys), abs=1)                  # the circle stays round


def test_crop_intrinsics_projects_like_crop_then_resize():
    K = np.array([[600.0, 0, 430.0], [0, 600.0, 236.0], [0, 0, 1]])
    Kc = crop_intrinsics(K, (480, 854), (96, 128))
    assert Kc[0, 0] / Kc[1, 1] == pytest.approx(1.0, abs=1e-3)
    pts = np.array([[0.3, -0.2, 2.0], [-0.5, 0.4, 3.0], [0.0, 0.0, 1.0]])
    uv_in = (pts @ K.T)[:, :2] / pts[:, 2:]
    top, left, h, w = crop_box(480, 854, 96, 128)
    expect = (uv_in - [left, top] + 0.5) * [128 / w, 96 / h] - 0.5              # pixel-centre convention
    uv_out = (pts @ Kc.T)[:, :2] / pts[:, 2:]
    np.testing.assert_allclose(uv_out, expect, atol=1e-9)


def test_uncrop_puts_output_maps_inside_the_crop_window():
    mask = np.ones((96, 128), bool)
    full = uncrop_nearest(mask, 480, 854, False)
    assert full.shape == (480, 854) and full[:, 107:747].all() and not full[:, :107].any() and not full[:, 747:].any()
    lab = np.arange(96 * 128, dtype=np.uint16).reshape(96, 128)
    np.testing.assert_array_equal(crop_image(uncrop_nearest(lab, 480, 854), 96, 128)[::5, ::5], lab)


@pytest.fixture(scope="module")
def tiny_engine():
    torch.manual_seed(0)
    return TorchEngine(build_model("dpm_tiny"), device="cpu", height=48, width=64)


@pytest.mark.parametrize("width", [640, 854])
@pytest.mark.parametrize("with_k", [True, False])
def test_camera_info_of_640_and_854_wide_streams_has_square_pixels(tiny_engine, width, with_k):
    rng = np.random.default_rng(width)
    img1 = rng.integers(0, 255, (480, width, 3), dtype=np.uint8)
    img2 = np.roll(img1, 3, axis=1)
    K = np.array([[500.0, 0, (width - 1) / 2], [0, 500.0, 239.5], [0, 0, 1]]) if with_k else None
    res = DPMPipeline(tiny_engine).process(Frame(img1, 0.1, K), Frame(img2, 0.0, K))
    header = Header(frame_id="cam")
    out = pair_messages(res, header, img1)
    ci = out["dpm/camera_info"]
    fx, fy = ci.k[0], ci.k[4]
    assert (ci.height, ci.width) == (48, 64) and abs(fx / fy - 1) < 0.05
    if with_k:      # the crop keeps the centre: the principal point stays at the output's centre
        assert fx == pytest.approx(500.0 * 64 / 640, rel=0.01)
        assert (ci.k[2], ci.k[5]) == pytest.approx((31.5, 23.5), abs=0.05)
    mask = out["dpm/motion_mask"]
    assert (mask.height, mask.width) == (480, width)                       # input resolution, crop window only


def test_demo_scoring_compares_outputs_with_the_cropped_ground_truth():
    from dpm_ros.demo_report import _crop_window, _to_output
    cols = np.repeat(np.arange(854)[None, :], 480, 0)
    out = _to_output(cols, 48, 64)                       # output pixel u sees input column ~107 + 10·u + 5
    assert out.shape == (48, 64) and out[0, 0] == 107 + 5 and out[0, -1] == 107 + 10 * 63 + 5
    win = _crop_window(480, 854, 48, 64)
    assert win.sum() == 480 * 640 and win[:, 107].all() and not win[:, 106].any()
