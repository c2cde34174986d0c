"""Objects (dpm_theory.md §5): masks from a motion mask (connected components, split where the 3D surface jumps),
then every object's rigid motion and extent in one batched pass."""
from __future__ import annotations

import cv2
import numpy as np

from dpm_ros.geometry._checks import as_mask, as_point_map
from dpm_ros.geometry.masks import squared_norm
from dpm_ros.geometry.procrustes import rotation_and_scale


def _nonzero_bytes(a: np.ndarray) -> np.ndarray:
    """Flat indices of the nonzero bytes of a contiguous uint8 array. Sparse inputs (a few cut pixels in an image)
    are scanned 8 bytes at a time (one uint64 word), then only the nonzero words are expanded."""
    flat = a.reshape(-1)
    n8 = flat.size - flat.size % 8
    words = np.flatnonzero(flat[:n8].view(np.uint64) != 0)   # via a bool array: several times faster
    idx = (words[:, None] * 8 + np.arange(8)).reshape(-1)
    idx = idx[flat[idx] != 0]
    return np.concatenate([idx, n8 + np.flatnonzero(flat[n8:])]) if n8 < flat.size else idx


def _cut_edges(points: np.ndarray, m8: np.ndarray, r2: np.ndarray, max_gap: float, relative: bool):
    """4-neighbour pairs (right and down) of mask pixels (``m8``, uint8 0/1) farther apart in 3D than max_gap (or
    than max_gap·min(‖p_a‖, ‖p_b‖) when ``relative``; ``r2`` = ‖p‖²), as flat index arrays ``a``, ``b``. Squared
    distances with OpenCV channel ops over the whole (mask-box) grid; only the (few) cut pairs are materialised."""
    h, w = m8.shape
    out_a, out_b = [], []
    for dy, dx in ((0, 1), (1, 0)):
        ye, xe = h - dy, w - dx                                          # pairs (y, x)-(y + dy, x + dx)
        if ye <= 0 or xe <= 0:
            continue                                     # a single column/row has no pairs in that direction
        sa, sb = (slice(0, ye), slice(0, xe)), (slice(dy, h), slice(dx, w))
        gap2 = squared_norm(cv2.subtract(points[sa], points[sb]), overwrite=True)   # squares the fresh diff
        gap2 = gap2.reshape(ye, xe)
        if relative:
            limit = cv2.min(r2[sa], r2[sb])
            limit *= max_gap ** 2                        # in place, in the maps' dtype (as numpy's weak scalar)
        else:
            limit = np.full_like(gap2, max_gap ** 2)
        cut = cv2.bitwise_and(cv2.bitwise_and(cv2.compare(gap2, limit, cv2.CMP_GT), m8[sa]), m8[sb])
        if cv2.countNonZero(cut):
            idx = _nonzero_bytes(cut)                    # (row, col) of the pair grid -> flat index in (h, w)
            a = (idx // xe) * w + idx % xe
            out_a.append(a)
            out_b.append(a + dy * w + dx)
    empty = np.zeros(0, dtype=np.int64)
    return np.concatenate(out_a or [empty]), np.concatenate(out_b or [empty])


def _near_neighbours(pts: np.ndarray, far: np.ndarray, max_gap: float, relative: bool):
    """For flat pixel indices ``far`` of the (h, w, 3) points (a view is not copied): their 4-neighbours' flat
    indices (n, 4) (left, right, up, down; the pixel itself where the neighbour is outside) and whether each is
    inside and within the split distance of the pixel (the uncut test, in float64)."""
    h, w = pts.shape[:2]
    fy, fx = np.divmod(far, w)
    ny = fy[:, None] + np.array([0, 0, -1, 1])
    nx = fx[:, None] + np.array([-1, 1, 0, 0])
    inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    ny = np.where(inside, ny, fy[:, None])
    nx = np.where(inside, nx, fx[:, None])
    pa = pts[fy, fx].astype(np.float64)[:, None]          # (n, 1, 3)
    pb = pts[ny, nx].astype(np.float64)                   # (n, 4, 3)
    gap2 = ((pa - pb) ** 2).sum(axis=-1)
    if relative:
        close = gap2 <= max_gap ** 2 * np.minimum((pa ** 2).sum(axis=-1), (pb ** 2).sum(axis=-1))
    else:
        close = gap2 <= max_gap ** 2
    return ny * w + nx, inside & close


def split_objects(mask, points, min_size: int = 64, max_gap: float = 0.05, relative: bool = True) -> np.ndarray:
    """Label the objects of a motion ``mask`` (H, W): 4-connected components (cv2.connectedComponents) of the mask,
    split where neighbouring pixels are farther apart in 3D than ``max_gap``; components with fewer than
    ``min_size`` pixels are dropped. The split: for each cut neighbour pair the farther pixel (occluded side) is
    left out of the labelling, then rejoins the component of a 4-neighbour it is close to in 3D.

    ``points``: (H, W, 3) point map of the same pixels (e.g. P1(t1,π1)). ``max_gap`` is a fraction of the distance
    to the camera (``relative``, scale-free, for up-to-scale maps) or a distance in the map's units. Pixels with
    NaN/inf points (any whose squared norm is not finite, so also points so far out that ‖p‖² overflows the dtype)
    are treated as outside the mask. Returns int32 (H, W) labels, 0 = not an object, objects numbered 1..K by
    decreasing size.
    """
    return object_pixels(mask, points, min_size, max_gap, relative)[0]


def object_pixels(mask, points, min_size: int = 64, max_gap: float = 0.05, relative: bool = True,
                  max_objects: int | None = None, dtype=np.int32, sq_norms=None):
    """:func:`split_objects` (same arguments, same labels) and, for each object k = 1..K, the flat row-major
    indices of its pixels in ascending order (what per-object fits gather). Returns ``(labels, [idx_1..idx_K])``.
    ``max_objects`` keeps only that many largest objects (the others labelled 0); ``dtype``: integer type of the
    labels (e.g. np.uint16 with max_objects=65535). ``sq_norms``: optional (H, W) ``‖p‖²`` of ``points`` exactly as
    ``masks.squared_norm`` gives it in the points' dtype (``flows_and_masks`` returns it for P1(t1,π1)); saves
    that pass."""
    if max_objects is not None and max_objects < 0:
        raise ValueError(f"object_pixels: max_objects must be >= 0, got {max_objects}")
    pts = as_point_map(points, "points")
    if pts.dtype not in (np.float32, np.float64):
        pts = pts.astype(np.float32)
    pts = np.ascontiguousarray(pts)
    m = as_mask(mask, pts.shape[:2], "mask")
    if min_size < 1:
        raise ValueError(f"split_objects: min_size must be >= 1 pixel, got {min_size}")
    if not (np.isfinite(max_gap) and max_gap > 0):
        raise ValueError(f"split_objects: max_gap must be > 0, got {max_gap}")
    H, W = m.shape
    # Work on the bounding box of the mask only: nothing outside it can be labelled or cut.
    rows = np.flatnonzero(m.any(axis=1))
    if len(rows) == 0:
        return np.zeros((H, W), dtype=dtype), []
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(m[y0:y1].any(axis=0))
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    pts, m = pts[y0:y1, x0:x1], m[y0:y1, x0:x1]
    h, w = m.shape
    if sq_norms is None:
        r2 = squared_norm(pts).reshape(m.shape)          # ‖p‖²: NaN/inf for invalid points, which leave the mask
    else:
        r2 = np.asarray(sq_norms)
        if r2.shape != (H, W) or r2.dtype != pts.dtype:
            raise ValueError(f"object_pixels: sq_norms must be ({H}, {W}) {pts.dtype}, got {r2.shape} {r2.dtype}")
        r2 = r2[y0:y1, x0:x1]
    m8 = (m & (r2 < np.inf)).view(np.uint8)              # a fresh array: the caller's mask is never modified
    ca, cb = _cut_edges(pts, m8, r2, max_gap, relative)
    far = None
    if len(ca):
        # A cut pair separates two surfaces: take its far pixel (the occluded side) out of the mask, label what is
        # left, then give each taken-out pixel the label of a 4-neighbour it is close to in 3D.
        far = np.unique(np.where(r2[ca // w, ca % w] > r2[cb // w, cb % w], ca, cb))   # r2 may be a view
        m8.reshape(-1)[far] = 0
    n, labels = cv2.connectedComponents(m8, connectivity=4, ltype=cv2.CV_32S)
    flat = labels.reshape(-1)
    if far is not None:
        nb, near = _near_neighbours(pts, far, max_gap, relative)
        for _ in range(2):                               # two sweeps: also pixels whose only link is another far one
            cand = np.where(near, flat[nb], 0)
            best = cand.max(axis=1)
            todo = flat[far] == 0
            flat[far[todo]] = best[todo]
    # Sizes, order and the per-object pixel lists from the labelled pixels only (every later step then touches
    # ~|mask| pixels, not H·W).
    pix = np.flatnonzero(flat > 0)
    lab = np.take(flat, pix)
    if (h, w) != (H, W):                                 # box -> image flat indices (row-major order is kept)
        pix = pix + (pix // w) * (W - w) + (y0 * W + x0)
    sizes = np.bincount(lab, minlength=n)
    sizes[0] = 0
    order = np.argsort(-sizes, kind="stable")
    keep_lab = order[sizes[order] >= min_size][:max_objects]
    if len(keep_lab) > np.iinfo(dtype).max:
        raise ValueError(f"object_pixels: {len(keep_lab)} objects do not fit labels of type {np.dtype(dtype).name}; "
                         f"pass max_objects")
    out = np.zeros((H, W), dtype=dtype)
    lut = np.zeros(len(sizes), dtype=dtype)                # in the output type: the scatter below then casts nothing
    lut[keep_lab] = np.arange(1, len(keep_lab) + 1)
    new = np.take(lut, lab)
    out.reshape(-1)[pix] = new
    if len(keep_lab) == 0:
        return out, []
    srt = np.argsort(new, kind="stable")                 # label order, pixel order kept within each label
    bounds = np.cumsum(sizes[keep_lab])
    groups = np.split(pix[srt[len(pix) - int(bounds[-1]):]], bounds[:-1])
    return out, groups


def object_fits(p_t1, p_t2, groups, conf=None, fit_points: int = 4096) -> dict:
    """Rigid motion and extent of every object at once (dpm_theory.md §5), from :func:`object_pixels`' ``groups``.

    ``p_t1``, ``p_t2``: (H, W, 3) positions of the same pixels at t1 and t2 in one camera frame (e.g. P1(t1,π1),
    P1(t2,π1)); ``groups``: flat pixel indices per object; ``conf``: optional (H, W) weights. Object k's motion is
    the confidence-weighted SE(3) Umeyama fit ``argmin Σ w‖p_t2 − R·p_t1 − t‖²`` (as ``procrustes.umeyama``: rows
    with NaN/inf or weight ≤ 0 excluded) over every ``ceil(n_k / fit_points)``-th of its pixels (all when
    ``fit_points`` is 0); all objects' moments are summed in one pass and their 3×3 SVDs batched. Returns arrays over
    objects: ``R`` (K, 3, 3), ``t`` (K, 3), ``ok`` (K,) False where the fit is undetermined (< 3 usable points,
    collinear or coincident), and over all pixels of each object ``centroid`` (K, 3), ``extent`` (K, 3, max − min)
    of p_t1 and ``confidence`` (K,, mean of ``conf``; 1 without it). Units of the maps.
    """
    p1, p2 = np.asarray(p_t1).reshape(-1, 3), np.asarray(p_t2).reshape(-1, 3)
    k = len(groups)
    lens = np.array([len(g) for g in groups], dtype=np.int64)
    if k == 0 or lens.min() == 0:
        raise ValueError("object_fits: need at least one object and no empty pixel group")
    c = None if conf is None else np.asarray(conf).reshape(-1)
    # Statistics over all pixels: one gather, then segment reductions on contiguous float64 rows.
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    every = np.concatenate(groups)
    pts = np.take(p1, every, axis=0)                                  # (M, 3) in the maps' dtype
    rows = np.ascontiguousarray(pts.T)                                # (3, M)
    extent = (np.maximum.reduceat(rows, starts, axis=1).astype(np.float64)
              - np.minimum.reduceat(rows, starts, axis=1)).T
    centroid = (np.add.reduceat(rows, starts, axis=1, dtype=np.float64) / lens).T
    confidence = np.ones(k) if c is None else np.add.reduceat(np.take(c, every), starts, dtype=np.float64) / lens
    # Weighted Umeyama (SE(3)) per object on its evenly spread fit pixels.
    fits = [g[::-(-len(g) // fit_points)] for g in groups] if fit_points else list(groups)
    nfit = np.array([len(f) for f in fits], dtype=np.int64)
    fit = np.concatenate(fits)
    fstarts = np.concatenate([[0], np.cumsum(nfit)[:-1]])
    # Coordinates as rows (3, N) float64: every step below is a long contiguous loop.
    src = np.array(np.take(p1, fit, axis=0).T, dtype=np.float64, order="C")
    dst = np.array(np.take(p2, fit, axis=0).T, dtype=np.float64, order="C")
    w = np.ones(len(fit)) if c is None else np.take(c, fit).astype(np.float64)
    with np.errstate(invalid="ignore"):
        use = np.isfinite(src[0] + src[1] + src[2] + dst[0] + dst[1] + dst[2] + w) & (w > 0)
    if not use.all():
        w[~use] = 0.0
        src[:, ~use] = 0.0
        dst[:, ~use] = 0.0
    count = np.add.reduceat(use.astype(np.int64), fstarts)
    wsum = np.add.reduceat(w, fstarts)
    # Per-object values spread over the object's rows with np.repeat (contiguous blocks; several times faster than
    # fancy indexing with a per-row object index).
    wn = w / np.repeat(np.where(wsum > 0, wsum, 1.0), nfit)             # weights normalised per object
    mu_s = np.add.reduceat(src * wn, fstarts, axis=1)                 # (3, K)
    mu_d = np.add.reduceat(dst * wn, fstarts, axis=1)
    src -= np.repeat(mu_s, nfit, axis=1)
    dst -= np.repeat(mu_d, nfit, axis=1)
    dst *= wn
    cov = np.add.reduceat((dst[:, None, :] * src[None, :, :]).reshape(9, -1), fstarts, axis=1)
    cov = cov.T.reshape(k, 3, 3)                                      # Σ w (d − μd)(s − μs)ᵀ per object
    mu_s, mu_d = mu_s.T, mu_d.T
    rot, _, ok = rotation_and_scale(cov)
    ok &= count >= 3
    t = mu_d - np.einsum("kij,kj->ki", rot, mu_s)
    return {"R": rot, "t": t, "ok": ok, "centroid": centroid, "extent": extent, "confidence": confidence}
