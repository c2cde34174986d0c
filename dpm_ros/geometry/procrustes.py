"""Weighted Procrustes (Umeyama 1991) in SE(3) and Sim(3), a RANSAC wrapper, and small rotation helpers."""
from __future__ import annotations

import numpy as np

from dpm_ros.geometry._checks import as_points, as_weights, finite_rows, need_points, same_shape
from dpm_ros.se3 import invert_se3  # noqa: F401  (re-exported: the one SE(3) inverse)

_DEGENERATE_RATIO = 1e-9   # second singular value of the cross-covariance below this fraction of the first: no unique R


def _usable(src, dst, weights):
    src = as_points(src, "src").reshape(-1, 3)
    dst = as_points(dst, "dst").reshape(-1, 3)
    same_shape(src, dst, "src", "dst")
    ok = finite_rows(src) & finite_rows(dst)
    w = np.ones(len(src)) if weights is None else as_weights(np.asarray(weights).reshape(-1), (len(src),))
    ok &= w > 0
    return src, dst, w, ok


def umeyama(src, dst, weights=None, with_scale: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Weighted least-squares similarity ``dst ≈ s·R·src + t`` (Umeyama 1991).

    ``src``, ``dst``: (N, 3) corresponding points (any leading shape, flattened), same units and frame conventions;
    ``weights``: (N,) ≥ 0. Rows with NaN/inf or zero weight are excluded. Returns ``R`` (3, 3) float64 rotation,
    ``t`` (3,) in dst units, ``s`` (1.0 unless ``with_scale``). Minimises ``Σ w_i ‖dst_i − (s R src_i + t)‖²``.
    Raises ValueError with fewer than 3 usable points or when the points are collinear/coincident.
    """
    src, dst, w, ok = _usable(src, dst, weights)
    n = int(ok.sum())
    need_points(n, "umeyama")
    if not ok.all():
        src, dst, w = src[ok], dst[ok], w[ok]
    # Coordinates as rows of one (6, N) float64 array (src x, y, z, dst x, y, z): the means are one matrix-vector
    # product and all second moments one (6, N)·(N, 3) product (contiguous, fast on one core).
    x = np.empty((6, n))
    x[:3] = src.T
    x[3:] = dst.T
    return _umeyama_moments(x, w, with_scale)


def umeyama_rows(x: np.ndarray, weights: np.ndarray, with_scale: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """:func:`umeyama` of correspondences already laid out as rows: ``x`` (6, N) float64 = src x, y, z, dst x, y, z
    (overwritten: centred in place), ``weights`` (N,). Same exclusions (non-finite coordinates, weights NaN/inf/≤ 0)
    and the same arithmetic as ``umeyama(x[:3].T, x[3:].T, weights)``, without building (N, 3) copies first."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] != 6 or x.dtype != np.float64:
        raise ValueError(f"umeyama_rows: expected a (6, N) float64 array, got {x.shape} {x.dtype}")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (x.shape[1],):
        raise ValueError(f"weights: expected shape ({x.shape[1]},) (one weight per point), got {w.shape}")
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.isfinite(x.sum(axis=0) + w)               # a NaN/inf coordinate or weight: excluded (as_weights' 0)
        ok &= w > 0
    n = int(ok.sum())
    need_points(n, "umeyama")
    if n < len(w):
        x, w = x[:, ok], w[ok]
    return _umeyama_moments(x, w, with_scale)


def rotation_and_scale(cov: np.ndarray, var_s: np.ndarray | None = None):
    """Umeyama's closed form (the one implementation; every fit in the package ends here), for K problems at once.

    ``cov`` (K, 3, 3) = Σ w (d − μd)(s − μs)ᵀ with normalised weights; ``var_s`` (K,) = Σ w ‖s − μs‖² for the Sim(3)
    scale, None for SE(3). Returns ``R`` (K, 3, 3) (the reflection case flipped), ``s`` (K,) (ones for SE(3)) and
    ``ok`` (K,) False where R is not determined (collinear or coincident points). The translation is then
    ``t = μd − s·R·μs``, computed by the caller in its own layout.
    """
    u, d, vt = np.linalg.svd(cov)
    ok = (d[:, 0] > 0) & (d[:, 1] > _DEGENERATE_RATIO * d[:, 0])
    e = np.ones((len(cov), 3))
    e[:, 2] = np.where(np.linalg.det(u) * np.linalg.det(vt) < 0, -1.0, 1.0)
    rot = (u * e[:, None, :]) @ vt
    s = np.ones(len(cov)) if var_s is None else (d * e).sum(axis=1) / var_s
    return rot, s, ok


def _umeyama_moments(x: np.ndarray, w: np.ndarray, with_scale: bool):
    """Umeyama's closed form from usable rows ``x`` (6, n) float64 (centred in place) and weights ``w`` > 0."""
    w = w / w.sum()
    mu = x @ w
    x -= mu[:, None]
    mu_s, mu_d = mu[:3], mu[3:]
    ws = x[:3] * w
    m = x @ ws.T                              # rows 0-2: Σ w (s − μs)(s − μs)ᵀ; rows 3-5: Σ w (d − μd)(s − μs)ᵀ
    cov = m[3:]
    var_s = np.trace(m[:3])[None] if with_scale else None
    rot, s, ok = rotation_and_scale(cov[None], var_s)
    if not ok[0]:
        raise ValueError("umeyama: degenerate geometry (points are collinear or coincident); the rotation is not "
                         "determined")
    rot, s = rot[0], float(s[0])
    t = mu_d - s * rot @ mu_s
    return rot, t, s


def _batched_minimal_umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool):
    """Unweighted Umeyama for K samples at once: src, dst (K, m, 3) -> R (K,3,3), t (K,3), s (K,)."""
    mu_s = src.mean(axis=1)
    mu_d = dst.mean(axis=1)
    sc = src - mu_s[:, None]
    dc = dst - mu_d[:, None]
    cov = np.einsum("kni,knj->kij", dc, sc) / src.shape[1]
    var_s = np.maximum((sc ** 2).sum(axis=(1, 2)) / src.shape[1], 1e-300) if with_scale else None
    rot, s, _ = rotation_and_scale(cov, var_s)
    t = mu_d - s[:, None] * np.einsum("kij,kj->ki", rot, mu_s)
    return rot, t, s


def umeyama_ransac(src, dst, weights=None, with_scale: bool = False, threshold: float | None = None,
                   max_iterations: int = 256, confidence: float = 0.999, max_eval: int = 4096,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """RANSAC around :func:`umeyama`: robust ``dst ≈ s·R·src + t`` with gross outliers.

    Minimal samples of 3 points are fitted in batches; each hypothesis is scored by its inlier count on at most
    ``max_eval`` random usable points; the best one's inliers over all points (residual ``‖dst − (sRsrc + t)‖ <
    threshold``, dst units) are refitted with the weights, twice. ``threshold`` defaults to 1% of the median
    distance of the usable dst points to their centroid. Returns ``(R, t, s, inliers)`` with ``inliers`` a boolean
    (N,) mask over the flattened input. Raises ValueError like :func:`umeyama`, or when no hypothesis finds 3 inliers.
    """
    src, dst, w, ok = _usable(src, dst, weights)
    idx = np.flatnonzero(ok)
    need_points(len(idx), "umeyama_ransac")
    if not 0 < confidence < 1:
        raise ValueError(f"umeyama_ransac: confidence must be in (0, 1), got {confidence}")
    s64 = src[idx].astype(np.float64)
    d64 = dst[idx].astype(np.float64)
    if threshold is None:
        threshold = 0.01 * float(np.median(np.linalg.norm(d64 - d64.mean(axis=0), axis=1)))
    if not threshold > 0:
        raise ValueError(f"umeyama_ransac: threshold must be > 0 (dst units), got {threshold}")
    rng = np.random.default_rng(seed)
    n = len(idx)
    ev = rng.choice(n, size=min(n, max_eval), replace=False)
    s_ev, d_ev = s64[ev], d64[ev]
    best_count, best = -1, None
    done, needed, batch = 0, max_iterations, 32
    while done < min(needed, max_iterations):
        samples = rng.integers(0, n, size=(batch, 3))   # a repeated index only makes a hypothesis that loses
        rot, t, s = _batched_minimal_umeyama(s64[samples], d64[samples], with_scale)
        pred = s[:, None, None] * np.einsum("kij,nj->kni", rot, s_ev) + t[:, None]
        counts = (np.linalg.norm(pred - d_ev[None], axis=2) < threshold).sum(axis=1)
        k = int(np.argmax(counts))
        if counts[k] > best_count:
            best_count, best = int(counts[k]), (rot[k], t[k], s[k])
            ratio = best_count / len(ev)
            if ratio >= 1.0:
                needed = 0
            elif ratio > 0:
                needed = int(np.ceil(np.log(1 - confidence) / np.log(1 - ratio ** 3)))
        done += batch
    rot, t, s = best
    inl = np.zeros(len(src), dtype=bool)
    for _ in range(2):
        res = np.linalg.norm(d64 - (s * s64 @ rot.T + t), axis=1)
        inl_u = res < threshold
        if inl_u.sum() < 3:
            raise ValueError(f"umeyama_ransac: fewer than 3 inliers within threshold {threshold:g}; raise the "
                             f"threshold or check the correspondences")
        rot, t, s = umeyama(s64[inl_u], d64[inl_u], w[idx][inl_u], with_scale=with_scale)
    inl[idx[inl_u]] = True
    return rot, t, float(s), inl


def to_matrix(rot: np.ndarray, t: np.ndarray, s: float = 1.0) -> np.ndarray:
    """4×4 homogeneous matrix of ``x ↦ s·R·x + t``."""
    m = np.eye(4)
    m[:3, :3] = s * np.asarray(rot, dtype=np.float64)
    m[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return m


def rotation_angle_deg(rot: np.ndarray) -> float | np.ndarray:
    """Angle of rotation(s) ``rot`` (..., 3, 3) in degrees, in [0, 180].

    Uses ``atan2(‖vee(R − Rᵀ)‖ / 2, (tr R − 1) / 2)``, which equals ``arccos((tr R − 1)/2)`` but stays accurate
    near 0° and 180°.
    """
    r = np.asarray(rot, dtype=np.float64)
    sin = 0.5 * np.sqrt((r[..., 2, 1] - r[..., 1, 2]) ** 2 + (r[..., 0, 2] - r[..., 2, 0]) ** 2
                        + (r[..., 1, 0] - r[..., 0, 1]) ** 2)
    cos = 0.5 * (np.trace(r, axis1=-2, axis2=-1) - 1.0)
    ang = np.degrees(np.arctan2(sin, cos))
    return float(ang) if np.ndim(ang) == 0 else ang
