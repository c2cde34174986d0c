"""Input image conversion: supported encodings, row padding, unsupported encodings and short data as clear errors."""
import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from dpm_ros.engine.pair_io import resize_nearest
from dpm_ros.ros.image_convert import (ImageFormatError, decode_compressed, fill_image, image_to_rgb,
                                       prepare_pixels)

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out

RGB = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


def msg_from(px, encoding, pad=0):
    h, w = px.shape[:2]
    rows = px.reshape(h, -1)
    data = np.concatenate([rows, np.full((h, pad), 77, np.uint8)], axis=1)
    return Image(height=h, width=w, encoding=encoding, step=data.shape[1], data=data.tobytes())


@pytest.mark.parametrize("encoding,px", [
    ("rgb8", RGB), ("bgr8", RGB[..., ::-1]),
    ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 9, np.uint8)])),
    ("bgra8", np.dstack([RGB[..., ::-1], np.full(RGB.shape[:2], 9, np.uint8)]))])
@pytest.mark.parametrize("pad", [0, 3])
def test_colour_encodings_give_rgb(encoding, px, pad):
    out = image_to_rgb(msg_from(np.ascontiguousarray(px), encoding, pad))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    assert np.array_equal(out, RGB)


def test_mono8_is_replicated_to_three_channels():
    out = image_to_rgb(msg_from(RGB[..., 0].copy(), "mono8", pad=1))
    assert np.array_equal(out, np.repeat(RGB[..., :1], 3, axis=2))


@pytest.mark.parametrize("encoding", ["mono16", "bayer_rggb8", "16UC1", "yuv422"])
def test_unsupported_encoding_is_named_with_alternatives(encoding):
    with pytest.raises(ImageFormatError, match=f"'{encoding}' not supported.*rgb8, bgr8") as e:
        image_to_rgb(Image(height=2, width=2, encoding=encoding, step=4, data=bytes(8)))
    assert e.value.kind == "encoding"


def test_data_shorter_than_step_times_height_is_an_error():
    m = msg_from(RGB, "rgb8")
    m.data = bytes(m.data)[:-1]
    with pytest.raises(ImageFormatError, match="step×height") as e:
        image_to_rgb(m)
    assert e.value.kind == "size"


def test_step_shorter_than_row_is_an_error():
    m = msg_from(RGB, "rgb8")
    m.step = 7 * 3 - 1
    with pytest.raises(ImageFormatError, match="step"):
        image_to_rgb(m)


def test_compressed_png_round_trip_and_garbage_is_decode_error():
    ok, png = cv2.imencode(".png", RGB[..., ::-1])
    bgr = decode_compressed(CompressedImage(format="png", data=png.tobytes()))   # the node and replay: BGR in,
    assert np.array_equal(prepare_pixels(bgr, "bgr8", None, (5, 7))[0], RGB)       # RGB out of prepare_pixels
    with pytest.raises(ImageFormatError) as e:
        decode_compressed(CompressedImage(format="jpeg", data=b"not an image"))
    assert e.value.kind == "decode"


def test_fill_image_layouts():
    m = fill_image(Image(), np.arange(6, dtype=np.uint16).reshape(2, 3), "mono16")
    assert (m.height, m.width, m.step, m.encoding, m.is_bigendian) == (2, 3, 6, "mono16", 0)
    assert np.frombuffer(m.data, "<u2").tolist() == list(range(6))
    d = fill_image(Image(), np.full((2, 3), 1.5, np.float32), "32FC1")
    assert d.step == 12 and np.frombuffer(d.data, "<f4")[4] == 1.5


def test_resize_nearest_maps_pixel_centres():
    a = np.arange(4).reshape(2, 2)
    assert resize_nearest(a, 4, 4).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert resize_nearest(np.arange(16).reshape(4, 4), 2, 2).tolist() == [[5, 7], [13, 15]]
