"""Depth accuracy on real image pairs with ground truth (../shared/data): scale-aligned AbsRel and δ < 1.25 of the
depth of P1(t1,π1) (its z, optical frame) on the FlyingThings3D pair and the Middlebury "Motorcycle" stereo pair.

Images are centre-cropped to the network's aspect ratio and resized (cv2.INTER_AREA) to its resolution; ground-truth
depth is cropped the same way and sampled at the output pixel centres (nearest). Predictions are up to scale: the
scale is the median of gt/pred over valid pixels (the usual monocular alignment) before the errors.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

RAFT3D_FOCAL = 1050.0                 # FlyingThings3D: fx = fy = 1050 px, depth = fx / disparity (up to scale)
MIDDLEBURY = dict(f=994.978, baseline_mm=193.001, doffs=31.086)   # depth (mm) = f·B / (d + doffs)


def read_pfm(path: Path) -> np.ndarray:
    """A PFM image (Pf: one channel, PF: three) as float32 (H, W[, 3]), top row first."""
    with open(path, "rb") as f:
        kind = f.readline().strip()
        if kind not in (b"Pf", b"PF"):
            raise ValueError(f"{path}: not a PFM file (header {kind!r})")
        dims = f.readline().split()
        width, height = int(dims[0]), int(dims[1])
        scale = float(f.readline().strip())
        data = np.fromfile(f, dtype="<f4" if scale < 0 else ">f4")
    channels = 3 if kind == b"PF" else 1
    if data.size != width * height * channels:
        raise ValueError(f"{path}: truncated PFM ({data.size} values for {width}x{height}x{channels})")
    img = data.reshape(height, width, channels) if channels == 3 else data.reshape(height, width)
    return np.flipud(img).astype(np.float32)


def _rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"image {path} not found or unreadable")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def load_real_pairs(data_dir: Path) -> dict[str, dict]:
    """{name: {"img1", "img2" uint8 RGB, "depth1" float (H, W), NaN invalid}} for the pairs present in data_dir."""
    data_dir = Path(data_dir)
    pairs = {}
    ft = data_dir / "raft3d_flyingthings"
    if ft.is_dir():
        disp = read_pfm(ft / "disp1.pfm")
        with np.errstate(divide="ignore"):
            depth = np.where(disp > 0, RAFT3D_FOCAL / disp, np.nan)
        pairs["flyingthings3d"] = dict(img1=_rgb(ft / "image1.png"), img2=_rgb(ft / "image2.png"), depth1=depth)
    mb = data_dir / "skimage_middlebury_motorcycle"
    if mb.is_dir():
        disp = np.load(mb / "motorcycle_disp.npz")["arr_0"].astype(np.float64)
        ok = np.isfinite(disp)
        depth = np.full(disp.shape, np.nan)
        depth[ok] = MIDDLEBURY["f"] * MIDDLEBURY["baseline_mm"] / (disp[ok] + MIDDLEBURY["doffs"]) / 1000.0
        pairs["middlebury"] = dict(img1=_rgb(mb / "motorcycle_left.png"), img2=_rgb(mb / "motorcycle_right.png"),
                                   depth1=depth)
    if not pairs:
        raise FileNotFoundError(f"no real pairs under {data_dir} (expected raft3d_flyingthings/ and/or "
                                f"skimage_middlebury_motorcycle/)")
    return pairs


def crop_to_aspect(shape: tuple[int, int], height: int, width: int) -> tuple[slice, slice]:
    """Centre crop (rows, cols) of an image of ``shape`` with the aspect ratio height:width."""
    h, w = shape
    if h * width > w * height:          # too tall
        ch = int(round(w * height / width))
        top = (h - ch) // 2
        return slice(top, top + ch), slice(0, w)
    cw = int(round(h * width / height))
    left = (w - cw) // 2
    return slice(0, h), slice(left, left + cw)


def resize_pair(pair: dict, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """img1, img2 (height, width, 3) uint8 and the ground-truth depth sampled at the output pixel centres."""
    rows, cols = crop_to_aspect(pair["img1"].shape[:2], height, width)
    img1 = cv2.resize(pair["img1"][rows, cols], (width, height), interpolation=cv2.INTER_AREA)
    img2 = cv2.resize(pair["img2"][rows, cols], (width, height), interpolation=cv2.INTER_AREA)
    depth = pair["depth1"][rows, cols]
    ch, cw = depth.shape
    v = np.clip(((np.arange(height) + 0.5) * ch / height).astype(int), 0, ch - 1)
    u = np.clip(((np.arange(width) + 0.5) * cw / width).astype(int), 0, cw - 1)
    return img1, img2, depth[v[:, None], u[None, :]]


def depth_errors(pred_depth: np.ndarray, gt_depth: np.ndarray) -> dict:
    """Scale-aligned depth errors: s = median(gt/pred) over valid pixels (both finite and > 0);
    AbsRel = mean |s·d̂ − d| / d, δ<1.25 = share of pixels with max(s·d̂/d, d/(s·d̂)) < 1.25."""
    pred_depth, gt_depth = np.asarray(pred_depth, np.float64), np.asarray(gt_depth, np.float64)
    if pred_depth.shape != gt_depth.shape:
        raise ValueError(f"depth shapes differ: prediction {pred_depth.shape}, ground truth {gt_depth.shape}")
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(pred_depth) & np.isfinite(gt_depth) & (pred_depth > 0) & (gt_depth > 0)
    if ok.sum() < 10:
        raise ValueError(f"only {int(ok.sum())} pixels with valid predicted and true depth (need 10)")
    p, g = pred_depth[ok], gt_depth[ok]
    s = np.median(g / p)
    ratio = s * p / g
    return {"abs_rel": float(np.mean(np.abs(s * p - g) / g)),
            "delta_1.25": float(np.mean(np.maximum(ratio, 1.0 / ratio) < 1.25)),
            "n_pixels": int(ok.sum()), "scale": float(s)}


def evaluate_real(net, data_dir: Path) -> dict:
    """{pair name: depth_errors} of the network's P1(t1,π1) depth on each real pair present in data_dir."""
    import torch
    from dpm_ros.model import preprocess
    h, w = net.config.height, net.config.width
    out = {}
    net.eval()
    for name, pair in load_real_pairs(data_dir).items():
        img1, img2, gt = resize_pair(pair, h, w)
        with torch.inference_mode():
            pred = net(preprocess(img1), preprocess(img2), symmetric=False)
        out[name] = depth_errors(pred["p1_t1_pi1"][0, ..., 2].numpy(), gt)
    return out
