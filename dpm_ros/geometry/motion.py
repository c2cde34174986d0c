"""Rigid motions from point maps (dpm_theory.md §4, §5): camera ego-motion in three forms, and object motion.

Every ego-motion form returns ``(R, t, s)``: the motion of camera 2 into camera 1, ``x_c1 = R·x_c2 + t`` (optical
frames, ``t`` in the units of the first pass, i.e. of ``p*_pi1``), and ``s`` the scale of pass 1 over pass 2
(``P_π1 = s·R·P_π2 + t``; 1.0 for forms that do not use the second pass or with ``with_scale=False``).
``T_c1_c2 = to_matrix(R, t)``.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from dpm_ros.geometry._checks import as_mask, as_point_map, as_weights, finite_rows, need_points, same_shape
from dpm_ros.geometry.masks import motion_mask
from dpm_ros.geometry.matching import nearest_neighbours
from dpm_ros.geometry.procrustes import umeyama, umeyama_ransac, umeyama_rows

EGO_METHODS = ("pixel_aligned", "matched", "pnp")
"""Names accepted by :func:`ego_motion`; "seed" is an alias of "matched" (the seed's own form)."""


def _map(maps: dict, name: str) -> np.ndarray:
    if name not in maps:
        raise ValueError(f"point map '{name}' missing (have: {', '.join(sorted(maps))}); the pixel-aligned and "
                         f"matched forms need the symmetric pass (Engine.info().symmetric)")
    return as_point_map(maps[name], name)


def _conf(maps: dict, name: str, shape, use_conf: bool, sub=(slice(None), slice(None))):
    """Confidence of map ``name`` (pixels ``sub``) as weights of ``shape``; ones when absent or unused."""
    key = "conf_" + name
    if not use_conf or key not in maps:
        return np.ones(shape)
    c = np.asarray(maps[key])
    if c.ndim != 2:
        raise ValueError(f"{key}: expected an (H, W) confidence map, got shape {c.shape}")
    return as_weights(c[sub], shape, key)


def _conf_clipped(maps: dict, name: str, shape, use_conf: bool, sub):
    """Confidence of map ``name`` at pixels ``sub`` with NaN and negative values set to 0 (np.fmax; inf is kept),
    in its own dtype, or None when absent or unused. Same checks as :func:`_conf`."""
    key = "conf_" + name
    if not use_conf or key not in maps:
        return None
    c = np.asarray(maps[key])
    if c.ndim != 2 or not np.issubdtype(c.dtype, np.number):
        raise ValueError(f"{key}: expected an (H, W) numeric confidence map, got shape {c.shape}, dtype {c.dtype}")
    c = c[sub]
    if c.shape != tuple(shape):
        raise ValueError(f"{key}: expected shape {tuple(shape)} (one weight per point), got {c.shape}")
    return np.fmax(c, 0)


def _fit(src, dst, w, with_scale, ransac_threshold):
    if ransac_threshold is None:
        return umeyama(src, dst, w, with_scale=with_scale)
    rot, t, s, _ = umeyama_ransac(src, dst, w, with_scale=with_scale, threshold=ransac_threshold)
    return rot, t, s


def ego_motion_pixel_aligned(maps: dict, use_conf: bool = True, with_scale: bool = True,
                             ransac_threshold: float | None = None, stride: int = 1):
    """Pixel-aligned symmetric form: ``P2(t2,π1) ≈ s·R·P2(t2,π2) + t`` and ``P1(t1,π1) ≈ s·R·P1(t1,π2) + t`` hold
    for every pixel, moving ones included; one confidence-weighted Umeyama over both sets (weights: geometric mean
    of the two maps' confidences). Sim(3) across passes (``with_scale``), reported as SE(3) in pass-1 units.
    ``stride`` > 1 uses every stride-th row and column (faster, same result on consistent maps).
    ``ransac_threshold`` (pass-1 units) switches to :func:`umeyama_ransac`. Returns ``(R, t, s)``.
    """
    if not (isinstance(stride, int) and stride >= 1):
        raise ValueError(f"ego_motion_pixel_aligned: stride must be a positive integer, got {stride}")
    sub = (slice(None, None, stride), slice(None, None, stride))
    pairs = []
    for a, b in (("p2_t2_pi2", "p2_t2_pi1"), ("p1_t1_pi2", "p1_t1_pi1")):
        pa, pb = _map(maps, a), _map(maps, b)
        same_shape(pa, pb, a, b)
        pairs.append((a, b, pa[sub], pb[sub]))
    # Both sets straight into the (6, N) float64 rows the fit works on (src x, y, z, dst x, y, z; set 1's pixels,
    # then set 2's, row-major): one strided read per map, no (N, 3) copies.
    sizes = [pa.shape[0] * pa.shape[1] for _, _, pa, _ in pairs]
    x = np.empty((6, sum(sizes)))
    w = np.empty(sum(sizes))
    start = 0
    for (a, b, pa, pb), n in zip(pairs, sizes):
        rows = slice(start, start + n)
        x[:3, rows].reshape(3, *pa.shape[:2])[...] = pa.transpose(2, 0, 1)     # one strided copy per map
        x[3:, rows].reshape(3, *pb.shape[:2])[...] = pb.transpose(2, 0, 1)
        ca = _conf_clipped(maps, a, pa.shape[:2], use_conf, sub)
        cb = _conf_clipped(maps, b, pb.shape[:2], use_conf, sub)
        out = w[rows].reshape(pa.shape[:2])
        if ca is None or cb is None:
            out[...] = 1.0 if ca is None and cb is None else (cb if ca is None else ca)
        else:
            with np.errstate(invalid="ignore"):                  # inf·0 = NaN: excluded by the fit like a 0
                np.multiply(ca, cb, out=out, dtype=np.float64)
        start += n
    # Non-finite products (an inf confidence) are excluded by the fit, as as_weights' zero would be.
    np.sqrt(w, out=w)
    if ransac_threshold is not None:
        return _fit(x[:3].T, x[3:].T, w, with_scale, ransac_threshold)
    return umeyama_rows(x, w, with_scale=with_scale)


def sampling_step(points) -> float:
    """Median 3D distance between horizontally adjacent pixels of a point map (its surface sampling step, map
    units); NaN pixels ignored."""
    p = as_point_map(points, "points")
    d = np.linalg.norm(np.asarray(p[:, 1:], dtype=np.float64) - p[:, :-1], axis=-1)
    d = d[np.isfinite(d)]
    if d.size == 0:
        raise ValueError("sampling_step: no two adjacent valid pixels")
    return float(np.median(d))


def ego_motion_matched(maps: dict, dynamic2=None, use_conf: bool = True, with_scale: bool = True,
                       max_dist: float | str | None = "auto", mutual: bool = False, eps_rel: float = 0.02,
                       eps_abs: float | None = None, ransac_threshold: float | None = None):
    """Seed form: ``argmin ‖(P1(t1,π1)·C12 − s·R·P2(t1,π2) − t)·diag(1 − M2)‖``.

    ``C12`` = :func:`nearest_neighbours` of ``P2(t1,π1)`` among ``P1(t1,π1)`` (both at t1 in camera 1, with
    ``max_dist``/``mutual``); ``M2`` = ``dynamic2`` (H, W) or, by default, ``motion_mask(P2(t1,π1), P2(t2,π1),
    eps_rel, eps_abs)``. ``max_dist="auto"``: twice :func:`sampling_step` of P1(t1,π1), which drops image-2
    points that image 1 does not see. Matches are as exact as the 3D sampling (nearest neighbours are neighbouring
    surface samples, not the same point), so expect errors of a fraction of a pixel footprint. Returns ``(R, t, s)``.
    """
    p1 = _map(maps, "p1_t1_pi1")
    q1 = _map(maps, "p2_t1_pi1")
    q2 = _map(maps, "p2_t1_pi2")
    same_shape(q1, q2, "p2_t1_pi1", "p2_t1_pi2")
    if dynamic2 is None:
        dynamic2 = motion_mask(q1, _map(maps, "p2_t2_pi1"), eps_rel=eps_rel, eps_abs=eps_abs)
    dyn = as_mask(dynamic2, q1.shape[:2], "dynamic2").reshape(-1)
    if isinstance(max_dist, str):
        if max_dist != "auto":
            raise ValueError(f"ego_motion_matched: max_dist must be a distance, None or 'auto', got '{max_dist}'")
        max_dist = 2.0 * sampling_step(p1)
    c12 = nearest_neighbours(q1, p1, max_dist=max_dist, mutual=mutual).reshape(-1)
    use = (c12 >= 0) & ~dyn
    need_points(int(use.sum()), "ego_motion_matched (static matched pixels of image 2)")
    src = q2.reshape(-1, 3)[use]
    dst = p1.reshape(-1, 3)[c12[use]]
    w = np.sqrt(_conf(maps, "p2_t1_pi2", q2.shape[:2], use_conf).reshape(-1)[use]
                * _conf(maps, "p1_t1_pi1", p1.shape[:2], use_conf).reshape(-1)[c12[use]])
    return _fit(src, dst, w, with_scale, ransac_threshold)


def ego_motion_pnp(maps: dict, K, reprojection_error: float = 1.0, max_points: int = 2000,
                   refine_points: int = 10000, seed: int = 0):
    """Single-pass form: PnP of image-2 pixels (u, v) against ``P2(t2,π1)`` with K (same camera for both images).

    ``P2(t2,π1) = R·X + t`` with ``X`` the points in camera 2, which project to their own pixels, so solvePnPRansac
    (on at most ``max_points`` pixels, inlier threshold ``reprojection_error`` pixels) gives camera 1 → camera 2;
    the result is refined by Levenberg–Marquardt on up to ``refine_points`` inliers, then once more on the pixels
    within 3 robust sigmas (1.4826·median) of the refined reprojection errors, and inverted. Needs only pass 1.
    Returns ``(R, t, 1.0)``.
    """
    pts = _map(maps, "p2_t2_pi1")
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise ValueError(f"ego_motion_pnp: K must be a finite 3x3 matrix, got {K.shape}")
    h, w = pts.shape[:2]
    ok = finite_rows(pts)
    with np.errstate(invalid="ignore"):
        ok &= pts[..., 2] > 0
    vv, uu = np.nonzero(ok)
    need_points(len(uu), "ego_motion_pnp", minimum=6)
    obj = pts[vv, uu].astype(np.float64)
    img = np.stack([uu, vv], axis=1).astype(np.float64)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(obj), size=min(len(obj), max_points), replace=False)
    found, rvec, tvec, inl = cv2.solvePnPRansac(obj[pick], img[pick], K, None, iterationsCount=200,
                                                reprojectionError=float(reprojection_error), confidence=0.999,
                                                flags=cv2.SOLVEPNP_EPNP)
    if not found or inl is None or len(inl) < 6:
        raise ValueError("ego_motion_pnp: no consistent pose (degenerate geometry or too many outliers)")
    proj, _ = cv2.projectPoints(obj, rvec, tvec, K, None)
    inliers = np.flatnonzero(np.linalg.norm(proj.reshape(-1, 2) - img, axis=1) < reprojection_error)
    if len(inliers) < 6:
        raise ValueError("ego_motion_pnp: fewer than 6 inliers after RANSAC")
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 100, 1e-12)
    thr = float(reprojection_error)
    for _ in range(2):   # LM on the inliers, then again on those within 3 robust sigmas of the refined pose
        if len(inliers) > refine_points:
            inliers = rng.choice(inliers, size=refine_points, replace=False)
        rvec, tvec = cv2.solvePnPRefineLM(obj[inliers], img[inliers], K, None, rvec, tvec, criteria=crit)
        proj, _ = cv2.projectPoints(obj, rvec, tvec, K, None)
        err = np.linalg.norm(proj.reshape(-1, 2) - img, axis=1)
        thr = min(thr, max(3.0 * 1.4826 * float(np.median(err[inliers])), 1e-9))
        within = np.flatnonzero(err < thr)
        if len(within) < 6:
            break
        inliers = within
    r_p, _ = cv2.Rodrigues(rvec)
    return r_p.T, -r_p.T @ tvec.reshape(3), 1.0


def ego_motion(maps: dict, method: str = "pixel_aligned", K=None, **kwargs):
    """Camera 2 → camera 1 motion ``(R, t, s)`` by ``method`` in ``EGO_METHODS`` (see the three functions above;
    ``K`` is needed by "pnp"). Extra keyword arguments go to the chosen function."""
    if method == "pixel_aligned":
        return ego_motion_pixel_aligned(maps, **kwargs)
    if method in ("matched", "seed"):
        return ego_motion_matched(maps, **kwargs)
    if method == "pnp":
        if K is None:
            raise ValueError("ego_motion: method 'pnp' needs K (3x3 intrinsics of the output resolution)")
        return ego_motion_pnp(maps, K, **kwargs)
    raise ValueError(f"ego_motion: unknown method '{method}' (use one of {', '.join(EGO_METHODS)})")


def object_motion(p_t1, p_t2, mask, conf=None, ransac_threshold: float | None = None):
    """Rigid motion of one object: ``argmin_{R,t} ‖(P1(t2,π1) − R·P1(t1,π1) − t)·diag(M)‖`` (dpm_theory.md §5).

    ``p_t1``, ``p_t2``: (H, W, 3) (or (N, 3)) positions of the same pixels at t1 and t2 in one camera frame;
    ``mask``: bool of the leading shape; ``conf``: optional weights. Returns ``(R, t)`` mapping t1 positions to t2
    positions in that frame (units of the maps). Raises ValueError for an empty mask or < 3 usable points.
    """
    a = np.asarray(p_t1)
    b = np.asarray(p_t2)
    same_shape(a, b, "p_t1", "p_t2")
    m = as_mask(mask, a.shape[:-1], "mask")
    if not m.any():
        raise ValueError("object_motion: the object mask is empty")
    w = None if conf is None else as_weights(conf, a.shape[:-1], "conf")[m]
    rot, t, _ = _fit(a[m], b[m], w, False, ransac_threshold)
    return rot, t


def motion_in_world(rot, t, T_w_c1) -> np.ndarray:
    """4×4 world-frame motion ``T_W·(R, t)·T_W⁻¹`` of a motion ``(R, t)`` expressed in camera 1, with ``T_w_c1``
    the 4×4 pose of camera 1 (camera-to-world)."""
    T = np.asarray(T_w_c1, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"T_w_c1: expected a 4x4 camera-to-world matrix, got shape {T.shape}")
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = np.asarray(t).reshape(3)
    return T @ m @ np.linalg.inv(T)


def object_velocities(o, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """(linear, angular) velocity of object ``o`` (a ``dpm_ros.pipeline.ObjectMotion``: motion t1→t2 ``R``, ``t``
    and ``centroid`` at t1, camera 1's frame), per second: ((R c + t) − c) / dt and rotvec(R) / dt, dt = t2 − t1 (s)."""
    c = np.asarray(o.centroid, float)
    if dt == 0:
        return np.zeros(3), np.zeros(3)
    lin = (np.asarray(o.R, float) @ c + np.asarray(o.t, float) - c) / dt
    ang = Rotation.from_matrix(np.asarray(o.R, float)).as_rotvec() / dt
    return lin, ang
