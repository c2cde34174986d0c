"""PointCloud2 layout of ``/dpm/points`` as one numpy structured array (no ROS inside).

One point = 36 bytes, little-endian:

| field | offset | type | meaning |
| --- | --- | --- | --- |
| x, y, z | 0, 4, 8 | float32 | position in the camera's optical frame (metres when metric, else model units) |
| rgb | 12 | float32 | packed colour, bits 0x00RRGGBB of a uint32 reinterpreted as float32 (PCL/RViz convention) |
| confidence | 16 | float32 | network confidence of P1(t1, π1) |
| label | 20 | uint16 | 0 static, k = moving object id (2 padding bytes follow) |
| vx, vy, vz | 24, 28, 32 | float32 | velocity (P1(t2,π1) − P1(t1,π1)) / (t2 − t1), per second, optical frame |

The cloud is organized: ``height × width`` = the network output's rows × columns (every ``stride``-th pixel).
Invalid points have NaN x y z and velocity; ``is_dense`` is always false (an organized cloud whose points may be
NaN in any frame: consumers must not skip the NaN check because one frame happened to be complete).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

# sensor_msgs/PointField datatype constants
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)

POINT_DTYPE = np.dtype({
    "names": ["x", "y", "z", "rgb", "confidence", "label", "vx", "vy", "vz"],
    "formats": ["<f4", "<f4", "<f4", "<f4", "<f4", "<u2", "<f4", "<f4", "<f4"],
    "offsets": [0, 4, 8, 12, 16, 20, 24, 28, 32],
    "itemsize": 36,
})
POINT_STEP = POINT_DTYPE.itemsize


class FieldSpec(NamedTuple):
    name: str
    offset: int
    datatype: int
    count: int


FIELDS = tuple(
    FieldSpec(name, POINT_DTYPE.fields[name][1], UINT16 if name == "label" else FLOAT32, 1)
    for name in POINT_DTYPE.names
)
"""(name, offset, PointField datatype, count) for every field, in order."""


def pack_rgb(colors: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) RGB → float32 (...) holding 0x00RRGGBB bit-for-bit."""
    if colors.dtype != np.uint8 or colors.shape[-1] != 3:
        raise ValueError(f"colors: expected uint8 (..., 3) RGB, got {colors.dtype} {colors.shape}")
    c = colors.astype(np.uint32)
    return ((c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]).view(np.float32)


def unpack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Inverse of ``pack_rgb``: float32 (...) → uint8 (..., 3)."""
    u = np.ascontiguousarray(rgb, dtype=np.float32).view(np.uint32)
    return np.stack([(u >> 16) & 255, (u >> 8) & 255, u & 255], axis=-1).astype(np.uint8)


def build_cloud(points: np.ndarray, colors: Optional[np.ndarray] = None, confidence: Optional[np.ndarray] = None,
                labels: Optional[np.ndarray] = None, velocity: Optional[np.ndarray] = None,
                valid: Optional[np.ndarray] = None, stride: int = 1) -> np.ndarray:
    """Organized cloud (ceil(H/stride), ceil(W/stride)) of POINT_DTYPE.

    points: (H, W, 3) optical frame; colors: uint8 (H, W, 3) RGB at the same resolution; confidence: (H, W);
    labels: integer (H, W), 0 static; velocity: (H, W, 3) per second; valid: bool (H, W) — also invalid where a
    position is not finite. Missing inputs give 0 (colour, confidence, label) or NaN (velocity)."""
    if points.ndim != 3 or points.shape[2] != 3:
        raise ValueError(f"points: expected (H, W, 3), got {points.shape}")
    if int(stride) < 1:
        raise ValueError(f"stride must be ≥ 1, got {stride}")
    hw = points.shape[:2]
    for name, arr, shape in (("colors", colors, hw + (3,)), ("confidence", confidence, hw), ("labels", labels, hw),
                             ("velocity", velocity, hw + (3,)), ("valid", valid, hw)):
        if arr is not None and arr.shape != shape:
            raise ValueError(f"{name}: expected shape {shape} to match points {points.shape}, got {arr.shape}")
    s = slice(None, None, int(stride))
    pts = points[s, s]
    ok = np.isfinite(pts).all(axis=-1)
    if valid is not None:
        ok &= valid[s, s].astype(bool)
    # One (h, w, 9) 4-byte-word array viewed as POINT_DTYPE: every field is 4 bytes wide, and a uint16 label written
    # as a little-endian uint32 word is the label followed by its 2 zero padding bytes.
    words = np.empty(pts.shape[:2] + (9,), np.float32)
    nan = np.float32(np.nan)
    np.copyto(words[..., 0:3], np.where(ok[..., None], pts, nan), casting="unsafe")
    words[..., 3] = pack_rgb(colors[s, s]) if colors is not None else 0
    words[..., 4] = confidence[s, s] if confidence is not None else 0
    if labels is not None:
        lab = labels[s, s]
        if lab.size and (lab.min() < 0 or lab.max() > 65535):
            raise ValueError("labels must fit uint16 (0..65535)")
        words[..., 5].view(np.uint32)[...] = np.where(ok, lab, 0)
    else:
        words[..., 5] = 0
    if velocity is None:
        words[..., 6:9] = nan
    else:
        np.copyto(words[..., 6:9], np.where(ok[..., None], velocity[s, s], nan), casting="unsafe")
    return words.view(POINT_DTYPE)[..., 0]


def cloud_layout(cloud: np.ndarray) -> dict:
    """height, width, point_step, row_step, is_bigendian, is_dense (False) of an organized POINT_DTYPE array."""
    if cloud.dtype != POINT_DTYPE or cloud.ndim != 2:
        raise ValueError(f"expected a 2-D array of POINT_DTYPE, got {cloud.dtype} with shape {cloud.shape}")
    h, w = cloud.shape
    return dict(height=h, width=w, point_step=POINT_STEP, row_step=POINT_STEP * w, is_bigendian=False,
                is_dense=False)


def cloud_bytes(cloud: np.ndarray) -> bytes:
    """The cloud's data field: row-major bytes of one contiguous array."""
    return np.ascontiguousarray(cloud).tobytes()


def cloud_from_bytes(data: bytes, height: int, width: int, point_step: int = POINT_STEP) -> np.ndarray:
    """Read a cloud packed by ``cloud_bytes`` (or any PointCloud2 with this layout) back into (height, width)."""
    if point_step != POINT_STEP:
        raise ValueError(f"point_step {point_step} does not match the dpm layout ({POINT_STEP} bytes)")
    if len(data) != height * width * POINT_STEP:
        raise ValueError(f"data has {len(data)} bytes, expected {height}×{width}×{POINT_STEP}")
    return np.frombuffer(bytes(data), dtype=POINT_DTYPE).reshape(height, width)
