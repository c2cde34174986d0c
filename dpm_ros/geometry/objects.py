"""Object masks from a motion mask (dpm_theory.md §5): connected components, split where the 3D surface jumps."""
from __future__ import annotations

import cv2
import numpy as np

from dpm_ros.geometry._checks import as_mask, as_point_map, finite_rows
from dpm_ros.geometry.masks import squared_norm


def _edges(points: np.ndarray, m: np.ndarray, max_gap: float, relative: bool):
    """4-neighbour edges (right and down) between mask pixels as flat index pairs ``a``, ``b``, and whether each is
    cut: 3D gap > max_gap, or > max_gap·min(‖p_a‖, ‖p_b‖) when ``relative`` (squared, OpenCV channel ops)."""
    h, w = m.shape
    img = points
    r2 = squared_norm(img) if relative else None
    out_a, out_b, out_cut = [], [], []
    for sa, sb, step in (((slice(None), slice(0, -1)), (slice(None), slice(1, None)), 1),
                         ((slice(0, -1), slice(None)), (slice(1, None), slice(None)), w)):
        both = m[sa] & m[sb]
        gap2 = squared_norm(cv2.subtract(img[sa], img[sb]))
        limit = max_gap ** 2 * np.minimum(r2[sa], r2[sb]) if relative else max_gap ** 2
        cut = both & (gap2 > limit)
        idx = np.flatnonzero(both)
        if step == 1:
            idx = idx + idx // (w - 1)                   # (row, col) of the (H, W-1) grid -> flat index in (H, W)
        out_a.append(idx)
        out_b.append(idx + step)
        out_cut.append(cut[both])
    return np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_cut)


def split_objects(mask, points, min_size: int = 64, max_gap: float = 0.05, relative: bool = True) -> np.ndarray:
    """Label the objects of a motion ``mask`` (H, W): 4-connected components (cv2.connectedComponents) of the mask,
    split where neighbouring pixels are farther apart in 3D than ``max_gap``; components with fewer than
    ``min_size`` pixels are dropped. The split: for each cut neighbour pair the farther pixel (occluded side) is
    left out of the labelling, then rejoins the component of a neighbour it is close to in 3D.

    ``points``: (H, W, 3) point map of the same pixels (e.g. P1(t1,π1)). ``max_gap`` is a fraction of the distance
    to the camera (``relative``, scale-free, for up-to-scale maps) or a distance in the map's units. Pixels with
    NaN/inf points are treated as outside the mask. Returns int32 (H, W) labels, 0 = not an object, objects
    numbered 1..K by decreasing size.
    """
    pts = as_point_map(points, "points")
    if pts.dtype not in (np.float32, np.float64):
        pts = pts.astype(np.float32)
    m = as_mask(mask, pts.shape[:2], "mask") & finite_rows(pts)
    if min_size < 1:
        raise ValueError(f"split_objects: min_size must be >= 1 pixel, got {min_size}")
    if not (np.isfinite(max_gap) and max_gap > 0):
        raise ValueError(f"split_objects: max_gap must be > 0, got {max_gap}")
    a, b, cut = _edges(pts, m, max_gap, relative)
    far = None
    if cut.any():
        # A cut edge separates two surfaces: take its far pixel (the occluded side) out of the mask, label what is
        # left, then give each taken-out pixel the label of a neighbour it is joined to by an uncut edge.
        ca, cb = a[cut], b[cut]
        r2 = squared_norm(pts.reshape(-1, 1, 3)[np.concatenate([ca, cb])]).reshape(2, -1)
        far = np.unique(np.where(r2[0] > r2[1], ca, cb))
        m = m.copy()
        m.reshape(-1)[far] = False
    n, labels = cv2.connectedComponents(m.view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    flat = labels.reshape(-1)
    if far is not None:
        ua, ub = a[~cut], b[~cut]
        for _ in range(2):                               # two sweeps: also pixels whose only link is another far one
            la, lb = flat[ua], flat[ub]
            flat[ua[(la == 0) & (lb > 0)]] = lb[(la == 0) & (lb > 0)]
            flat[ub[(lb == 0) & (la > 0)]] = la[(lb == 0) & (la > 0)]
    if n <= 1 and far is None:
        return labels
    pix = np.flatnonzero(flat)
    lab = flat[pix]
    sizes = np.bincount(lab, minlength=n)
    order = np.argsort(-sizes, kind="stable")
    keep_lab = order[sizes[order] >= min_size]
    lut = np.zeros(len(sizes), dtype=np.int32)
    lut[keep_lab] = np.arange(1, len(keep_lab) + 1, dtype=np.int32)
    out = np.zeros(m.shape, dtype=np.int32)
    out.reshape(-1)[pix] = lut[lab]
    return out
