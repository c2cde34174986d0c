"""sensor_msgs Image / CompressedImage ⇄ numpy, without cv_bridge and without a running node.

Input images become uint8 (H, W, 3) RGB, the engine's input. Anything else raises ``ImageFormatError`` (a
ValueError) whose ``kind`` ("encoding", "size", "decode") is what the node counts in /diagnostics.
"""
from __future__ import annotations

import numpy as np

SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
MAX_PIXELS = 40_000_000  # larger than 8K UHD (33 MP); checked on the header, before the data is touched


class ImageFormatError(ValueError):
    """An input image the node cannot use; ``kind`` is one of "encoding", "size", "decode"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8; any row padding) → uint8 (H, W, 3) RGB (a copy)."""
    enc = str(msg.encoding).lower()
    if enc not in _CHANNELS:
        raise ImageFormatError("encoding", f"image encoding '{msg.encoding}' not supported "
                                           f"(use {', '.join(SUPPORTED_ENCODINGS)}, or a CompressedImage)")
    h, w, step, ch = int(msg.height), int(msg.width), int(msg.step), _CHANNELS[enc]
    if h < 1 or w < 1:
        raise ImageFormatError("size", f"image is {w}×{h} pixels: nothing to process")
    if h * w > MAX_PIXELS:
        raise ImageFormatError("size", f"image is {w}×{h} = {h * w / 1e6:.0f} MP, more than the {MAX_PIXELS / 1e6:.0f} MP "
                                       "this node accepts (downscale in the camera driver)")
    if step < w * ch:
        raise ImageFormatError("size", f"image step {step} bytes is shorter than width×channels = {w * ch} ({enc})")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size < step * h:
        raise ImageFormatError("size", f"image data has {buf.size} bytes, expected step×height = {step}×{h} = "
                                       f"{step * h}")
    px = buf[:step * h].reshape(h, step)[:, :w * ch].reshape(h, w, ch)
    if enc == "rgb8":
        return px.copy()
    if enc == "bgr8" or enc == "bgra8":
        return np.ascontiguousarray(px[..., 2::-1])
    if enc == "rgba8":
        return np.ascontiguousarray(px[..., :3])
    return np.repeat(px, 3, axis=2)


def compressed_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg, png, ...) → uint8 (H, W, 3) RGB."""
    import cv2
    from cv2.utils import logging as cv_log

    if cv_log.getLogLevel() > cv_log.LOG_LEVEL_ERROR:  # OpenCV's own warning per corrupt PNG would flood the log
        cv_log.setLogLevel(cv_log.LOG_LEVEL_ERROR)     # (the node logs its own message, throttled)
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        raise ImageFormatError("decode", f"compressed image (format '{msg.format}', {buf.size} bytes) could not be "
                                         "decoded")
    return np.ascontiguousarray(img[..., ::-1])


def fill_image(msg, array: np.ndarray, encoding: str):
    """Fill sensor_msgs/Image ``msg`` from a C-contiguous array: mono8/8UC1 uint8 (H, W), mono16 uint16 (H, W),
    32FC1 float32 (H, W), rgb8 uint8 (H, W, 3). Little-endian. Returns ``msg``."""
    dtypes = {"mono8": np.uint8, "mono16": np.uint16, "32FC1": np.float32, "rgb8": np.uint8}
    if encoding not in dtypes:
        raise ValueError(f"fill_image: encoding '{encoding}' not handled (use {', '.join(dtypes)})")
    arr = np.ascontiguousarray(array, dtype=np.dtype(dtypes[encoding]).newbyteorder("<"))
    if (encoding == "rgb8") != (arr.ndim == 3):
        raise ValueError(f"fill_image: {encoding} needs {'(H, W, 3)' if encoding == 'rgb8' else '(H, W)'}, "
                         f"got {arr.shape}")
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(arr.strides[0])
    msg.data = arr.tobytes()
    return msg


def resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of (h, w, ...) to (height, width, ...) by pixel-centre mapping (vectorised)."""
    h, w = array.shape[:2]
    if (h, w) == (height, width):
        return array
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return array.take(rows, axis=0).take(cols, axis=1)
