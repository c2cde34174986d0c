"""Shared by every backend: an image pair in (checked, centre-cropped to the network's aspect ratio — never squashed
— then resized to the network resolution with cv2.INTER_AREA, normalised like DUSt3R), the network's batched outputs
out as one float32 array per map at network resolution. ``crop_box`` says which input pixels the outputs cover:
``crop_intrinsics`` maps a camera's K onto the output grid, ``uncrop_nearest`` puts an output-size map back onto the
input grid."""
from __future__ import annotations

import cv2
import numpy as np

from dpm_ros.engine.base import check_image
from dpm_ros.engine.onnx_model import DUST3R_NORMALISATION


def crop_box(in_height: int, in_width: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, h, w): the largest centred window of an ``in_height`` × ``in_width`` image with the aspect ratio of
    ``height`` × ``width`` (the network's), pixels. The whole image when the aspects already agree to within a pixel
    of the window."""
    if min(in_height, in_width, height, width) < 1:
        raise ValueError(f"crop_box needs positive sizes, got {in_width}x{in_height} -> {width}x{height}")
    if in_width * height > in_height * width:        # wider than the network: crop the sides
        h, w = in_height, min(in_width, max(1, int(round(in_height * width / height))))
    else:                                             # taller: crop top and bottom
        h, w = min(in_height, max(1, int(round(in_width * height / width)))), in_width
    return (in_height - h) // 2, (in_width - w) // 2, h, w


def crop_intrinsics(K: np.ndarray, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """K (3×3, pixels) of the ``in_hw`` camera image mapped onto the network's ``out_hw`` output grid: shift the
    principal point by the centre crop of ``crop_box``, then scale (pixel-centre convention). Square input pixels
    stay square to within the crop's rounding (< 1 input pixel)."""
    from dpm_ros.geometry.camera import scale_intrinsics
    top, left, h, w = crop_box(*in_hw, *out_hw)
    Kc = np.array(K, dtype=np.float64)
    if Kc.shape != (3, 3):
        raise ValueError(f"K: expected a 3x3 matrix, got shape {Kc.shape}")
    Kc[0, 2] -= left
    Kc[1, 2] -= top
    return scale_intrinsics(Kc, (h, w), out_hw)


def crop_image(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """The centre window of ``img`` (H, W, ...) with the aspect of ``height`` × ``width`` (a view, no copy)."""
    top, left, h, w = crop_box(img.shape[0], img.shape[1], height, width)
    return img[top:top + h, left:left + w]


def nearest_indices(n_out: int, n_in: int) -> np.ndarray:
    """Source index of each of ``n_out`` output pixels when ``n_in`` pixels are resized to ``n_out`` by nearest
    neighbour at pixel centres: floor((v + 0.5)·n_in/n_out), clipped to n_in − 1 (non-decreasing)."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of (h, w, ...) to (height, width, ...) at pixel centres (the input itself when the
    size already matches)."""
    h, w = array.shape[:2]
    if (h, w) == (height, width):
        return array
    return array.take(nearest_indices(height, h), axis=0).take(nearest_indices(width, w), axis=1)


def uncrop_nearest(array: np.ndarray, in_height: int, in_width: int, fill=0) -> np.ndarray:
    """An output-grid map (h, w, ...) on the input grid (in_height, in_width, ...): nearest-neighbour upsampled into
    the crop window of ``crop_box``, ``fill`` outside it."""
    array = np.asarray(array)
    h, w = array.shape[:2]
    top, left, ch, cw = crop_box(in_height, in_width, h, w)
    out = np.full((in_height, in_width) + array.shape[2:], fill, dtype=array.dtype)
    out[top:top + ch, left:left + cw] = resize_nearest(array, ch, cw)
    return out


def resize_image(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 3) → uint8 (height, width, 3): centre crop to the aspect of height × width (``crop_box``), then
    area averaging (no-op when already that size)."""
    if img.shape[:2] == (height, width):
        return img
    img = crop_image(img, height, width)
    return cv2.resize(np.ascontiguousarray(img), (width, height), interpolation=cv2.INTER_AREA)


def normalise_images(images: np.ndarray, normalisation: dict = DUST3R_NORMALISATION,
                     out: np.ndarray | None = None) -> np.ndarray:
    """uint8 (B, H, W, 3) RGB → float32 (B, 3, H, W): ``(x·scale − mean) / std`` per channel (DUSt3R: x/255 to
    [0, 1], then (· − 0.5) / 0.5 to [−1, 1]). ``out``: a float32 (B, 3, H, W) array to write into (e.g. a
    backend's pinned input buffer), same values bit for bit."""
    scale = np.float32(normalisation["scale"])
    mean = np.asarray(normalisation["mean"], np.float32)
    std = np.asarray(normalisation["std"], np.float32)
    if out is None:
        x = images.astype(np.float32) * scale
        x = (x - mean) / std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if out.shape != (images.shape[0], 3, *images.shape[1:3]) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {(images.shape[0], 3, *images.shape[1:3])}, got {out.dtype} {out.shape}")
    chw = images.transpose(0, 3, 1, 2)
    np.multiply(chw, scale, out=out, dtype=np.float32)
    np.subtract(out, mean[None, :, None, None], out=out)
    np.divide(out, std[None, :, None, None], out=out)
    return out


def prepare_pair(img1: np.ndarray, img2: np.ndarray, height: int, width: int, source: str,
                 normalisation: dict = DUST3R_NORMALISATION,
                 out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Check, resize and normalise a pair. Returns float32 (1, 3, height, width) inputs ``img1``, ``img2``,
    written into ``out`` (two such arrays, e.g. pinned buffers) when given.

    ``source`` (the model file) is named in every error, e.g. "engines/dpm_small.onnx: img2: expected dtype uint8".
    """
    try:
        check_image(img1, "img1")
        check_image(img2, "img2")
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    if img1.shape != img2.shape:
        raise ValueError(f"{source}: img1 is {img1.shape[1]}x{img1.shape[0]} but img2 is "
                         f"{img2.shape[1]}x{img2.shape[0]}; both images of a pair must have the same size")
    if min(img1.shape[:2]) < 8:
        raise ValueError(f"{source}: images of {img1.shape[1]}x{img1.shape[0]} pixels are too small "
                         f"(the network runs at {width}x{height})")
    if out is not None:
        for img, buf in zip((img1, img2), out):
            normalise_images(resize_image(img, height, width)[None], normalisation, out=buf)
        return out
    batch = np.stack([resize_image(img1, height, width), resize_image(img2, height, width)])
    x = normalise_images(batch, normalisation)
    return x[0:1], x[1:2]


def unbatch_outputs(outputs: dict[str, np.ndarray], names: tuple[str, ...], height: int, width: int,
                    source: str) -> dict[str, np.ndarray]:
    """Batched network outputs (1, h, w, 3) / (1, h, w) → float32 (h, w, 3) / (h, w) arrays by name.

    Raises ValueError naming ``source`` when an output is missing or has an unexpected shape.
    """
    result = {}
    for name in names:
        if name not in outputs:
            raise ValueError(f"{source}: network output {name!r} missing (has {sorted(outputs)})")
        arr = np.asarray(outputs[name])
        expect = (1, height, width, 3) if name.startswith("p") else (1, height, width)
        if arr.shape != expect:
            raise ValueError(f"{source}: output {name!r} has shape {arr.shape}, expected {expect}")
        result[name] = np.ascontiguousarray(arr[0], dtype=np.float32)
    return result
