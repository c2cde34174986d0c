"""sensor_msgs Image / CompressedImage ⇄ numpy, without cv_bridge and without a running node.

Input images become uint8 (H, W, 3) RGB, the engine's input; depth images float metres. Anything else raises
``stream.inputs.ImageFormatError`` (a ValueError) whose ``kind`` ("encoding", "size", "decode", "depth_encoding",
"depth_size") is what the node counts in /diagnostics.
"""
from __future__ import annotations

import struct
from types import SimpleNamespace

import numpy as np

from dpm_ros.engine.pair_io import nearest_indices
from dpm_ros.stream.inputs import ImageFormatError

SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
MAX_PIXELS = 40_000_000  # larger than 8K UHD (33 MP); checked on the header, before the data is touched


def image_pixels(msg) -> tuple[np.ndarray, str]:
    """Checked view onto a sensor_msgs/Image's bytes (no copy): uint8 (H, W, channels) in the message's own channel
    order (row padding skipped by the view's stride), and the lower-case encoding. Raises ImageFormatError."""
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
    return buf[:step * h].reshape(h, step)[:, :w * ch].reshape(h, w, ch), enc


class RawImage:
    """A sensor_msgs/Image read straight from its serialised CDR bytes (``parse_image_cdr``): the same fields, with
    ``data`` a memoryview onto those bytes (no copy) and ``header.stamp.sec/nanosec``, ``header.frame_id``."""
    __slots__ = ("header", "height", "width", "encoding", "is_bigendian", "step", "data")

    def __init__(self, header, height, width, encoding, is_bigendian, step, data):
        self.header, self.height, self.width, self.encoding = header, height, width, encoding
        self.is_bigendian, self.step, self.data = is_bigendian, step, data


_U32 = {"<": struct.Struct("<I"), ">": struct.Struct(">I")}   # built once, not per image


class _CdrReader:
    """Reads CDR fields of one serialised message (aligned to their size from the byte after the 4-byte header)."""
    __slots__ = ("buf", "pos", "u32_struct")

    def __init__(self, buf: memoryview, little: bool):
        self.buf, self.pos, self.u32_struct = buf, 4, _U32["<" if little else ">"]

    def u32(self) -> int:
        pos = 4 + ((self.pos - 4 + 3) & ~3)
        if pos + 4 > len(self.buf):
            raise ImageFormatError("decode", "serialised image: truncated")
        (v,) = self.u32_struct.unpack_from(self.buf, pos)
        self.pos = pos + 4
        return v

    def string(self) -> str:
        n = self.u32()
        if self.pos + n > len(self.buf) or n < 1:
            raise ImageFormatError("decode", "serialised image: bad string length")
        text = bytes(self.buf[self.pos:self.pos + n - 1]).decode("utf-8", "replace")
        self.pos += n
        return text


def parse_image_cdr(data) -> RawImage:
    """Serialised sensor_msgs/Image (CDR as a raw subscription delivers it: 4-byte encapsulation header, then the
    fields aligned to their size from the byte after it) → ``RawImage`` whose pixels are a view onto ``data``.
    Raises ImageFormatError("decode") on bytes that are not such a message."""
    buf = memoryview(data).cast("B")
    if len(buf) < 4 or buf[0] != 0 or buf[1] not in (0, 1):
        raise ImageFormatError("decode", "serialised image: not a plain CDR message (encapsulation "
                                         f"{bytes(buf[:2]).hex() or 'missing'})")
    r = _CdrReader(buf, buf[1] == 1)
    sec = r.u32()
    sec = sec - (1 << 32) if sec >= 1 << 31 else sec   # int32
    nanosec = r.u32()
    frame_id = r.string()
    height, width = r.u32(), r.u32()
    encoding = r.string()
    if r.pos >= len(buf):
        raise ImageFormatError("decode", "serialised image: truncated")
    is_bigendian = buf[r.pos]
    r.pos += 1
    step = r.u32()
    n = r.u32()
    if r.pos + n > len(buf):
        raise ImageFormatError("decode", f"serialised image: data has {len(buf) - r.pos} bytes, header says {n}")
    header = SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec), frame_id=frame_id)
    return RawImage(header, height, width, encoding, is_bigendian, step, buf[r.pos:r.pos + n])


def to_rgb(px: np.ndarray, enc: str) -> np.ndarray:
    """uint8 (H, W, channels) pixels in encoding ``enc`` (``image_pixels``) → a new C-contiguous (H, W, 3) RGB
    array."""
    if enc == "rgb8":
        return px.copy()
    if enc == "bgr8" or enc == "bgra8":
        return np.ascontiguousarray(px[..., 2::-1])
    if enc == "rgba8":
        return np.ascontiguousarray(px[..., :3])
    return np.repeat(px.reshape(px.shape[0], px.shape[1], 1), 3, axis=2)


def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8; any row padding) → uint8 (H, W, 3) RGB (a copy)."""
    return to_rgb(*image_pixels(msg))


def prepare_pixels(px: np.ndarray, enc: str, engine_hw: tuple[int, int] | None,
                   out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The two small images a pair needs of a camera frame, made once on arrival without a full-resolution copy:
    (engine input, cloud colours). ``px``/``enc``: the frame's pixels in their own layout (``image_pixels``; a
    decoded CompressedImage is "bgr8"). ``engine_hw``: the (height, width) the engine resizes every input to with
    ``pair_io.resize_image`` (the same call is made here, so the engine's own resize is a no-op and its input is
    bit-identical), or None for an engine that takes the frame as it is (the full frame, RGB, is returned).
    ``out_hw``: the engine's output grid; the colours are ``outputs.cloud_colours`` of the frame, uint8 (h, w, 3)
    RGB. Both are computed on the frame's own channel layout and reordered after: resizing is per
    channel, so the bytes equal those of converting to RGB first."""
    from dpm_ros.engine.pair_io import resize_image
    from dpm_ros.ros.outputs import cloud_colours   # the one definition of the cloud's colour sampling

    if engine_hw is None:
        engine_img = to_rgb(px, enc)
    else:
        engine_img = to_rgb(_as_2d(resize_image(_as_2d(px), *engine_hw)), enc)
    colours = to_rgb(cloud_colours(px, *out_hw), enc)
    return engine_img, colours


def _as_2d(px: np.ndarray) -> np.ndarray:
    """(H, W, 1) ↔ (H, W): OpenCV takes and returns one-channel images as 2-D arrays."""
    if px.ndim == 3 and px.shape[2] == 1:
        return px[..., 0]
    return px[..., None] if px.ndim == 2 else px


def decode_compressed(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg, png, ...) → uint8 (H, W, 3) BGR as OpenCV decodes it."""
    import cv2
    from cv2.utils import logging as cv_log

    if cv_log.getLogLevel() > cv_log.LOG_LEVEL_ERROR:  # OpenCV's own warning per corrupt PNG would flood the log
        cv_log.setLogLevel(cv_log.LOG_LEVEL_ERROR)     # (the node logs its own message, throttled)
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        raise ImageFormatError("decode", f"compressed image (format '{msg.format}', {buf.size} bytes) could not be "
                                         "decoded")
    return img


def depth_to_metres(msg) -> np.ndarray:
    """sensor_msgs/Image depth → float64 (H, W) metres, NaN where invalid. 32FC1: metres (REP 118; NaN/±inf/0
    invalid); 16UC1 / mono16: millimetres (0 invalid). Anything else raises ImageFormatError("depth_encoding")."""
    enc = str(msg.encoding).upper()
    dtypes = {"32FC1": np.float32, "16UC1": np.uint16, "MONO16": np.uint16}
    if enc not in dtypes:
        raise ImageFormatError("depth_encoding", f"depth image encoding '{msg.encoding}' not supported "
                                                 "(use 32FC1 in metres or 16UC1 in millimetres)")
    dt = np.dtype(dtypes[enc]).newbyteorder(">" if msg.is_bigendian else "<")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h < 1 or w < 1 or step < w * dt.itemsize or len(msg.data) < step * h:
        raise ImageFormatError("depth_size", f"depth image {w}×{h}, step {step}: data has {len(msg.data)} bytes, "
                                             f"expected at least step×height = {step * h}")
    rows = np.frombuffer(bytes(msg.data[:step * h]), np.uint8).reshape(h, step)[:, :w * dt.itemsize]
    z = np.ascontiguousarray(rows).view(dt).reshape(h, w).astype(np.float64)
    if dt.kind == "u":
        z = z / 1000.0
    z[~np.isfinite(z) | (z <= 0)] = np.nan
    return z


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


def nearest_into(small: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Nearest-neighbour upsampling of ``small`` (h, w) into ``out`` (H, W), any strided view (e.g. onto a message's
    data buffer): exactly ``resize_nearest(small, H, W)`` (pixel-centre mapping), written band by band (one broadcast
    copy per source row), no full-size intermediate. Returns ``out``."""
    h, w = small.shape[:2]
    H, W = out.shape[:2]
    rows = nearest_indices(H, h)
    wide = small.take(nearest_indices(W, w), axis=1)                       # (h, W): small
    starts = np.searchsorted(rows, np.arange(h + 1))      # rows is non-decreasing: source row r fills [s_r, s_r+1)
    for r in np.flatnonzero(starts[1:] > starts[:-1]):
        out[starts[r]:starts[r + 1]] = wide[r]
    return out


def image_msg_into(msg, height: int, width: int, encoding: str):
    """Give sensor_msgs/Image ``msg`` a zeroed data buffer of ``height`` × ``width`` mono8 / mono16 (little-endian)
    pixels and return a writable (height, width) numpy view onto the message's own buffer, to fill in place."""
    import array

    dtypes = {"mono8": np.uint8, "mono16": np.dtype("<u2")}
    if encoding not in dtypes:
        raise ValueError(f"image_msg_into: encoding '{encoding}' not handled (use {', '.join(dtypes)})")
    dt = np.dtype(dtypes[encoding])
    msg.height, msg.width, msg.encoding, msg.is_bigendian = int(height), int(width), encoding, 0
    msg.step = int(width) * dt.itemsize
    msg.data = array.array("B", [0]) * (msg.step * int(height))   # the message keeps this very buffer
    return np.frombuffer(msg.data, dtype=np.uint8).view(dt).reshape(int(height), int(width))
