"""Scene flow and object flow (dpm_theory.md §6, Table B.2 of the paper), forward and backward.

Each returns ``{"forward": (H, W, 3), "backward": (H, W, 3)}`` in the units of the maps (per second when ``dt``
is given). Invalid (NaN) pixels stay NaN: they are excluded downstream, never filled in.
"""
from __future__ import annotations

import cv2
import numpy as np

from dpm_ros.geometry._checks import as_point_map, same_shape


def _get(maps: dict, name: str) -> np.ndarray:
    if name not in maps:
        raise ValueError(f"point map '{name}' missing (have: {', '.join(sorted(maps))})")
    return as_point_map(maps[name], name)


def _diff(a, b, an, bn, dt):
    same_shape(a, b, an, bn)
    d = np.subtract(a, b, dtype=np.float32)
    if dt is not None:
        _check_dt(dt)
        d /= np.float32(dt)
    return d


def _check_dt(dt) -> None:
    if not (np.isfinite(dt) and dt != 0):
        raise ValueError(f"dt must be a non-zero finite time in seconds (t2 − t1), got {dt}")


def object_flow(maps: dict, dt: float | None = None) -> dict[str, np.ndarray]:
    """Object flow with the camera held fixed: ``OF-F = P1(t2,π1) − P1(t1,π1)`` (image-1 pixels, camera 1) and
    ``OF-B = P2(t1,π1) − P2(t2,π1)`` (image-2 pixels, camera 1). Zero on static points. Pass 1 only."""
    fwd = _diff(_get(maps, "p1_t2_pi1"), _get(maps, "p1_t1_pi1"), "p1_t2_pi1", "p1_t1_pi1", dt)
    bwd = _diff(_get(maps, "p2_t1_pi1"), _get(maps, "p2_t2_pi1"), "p2_t1_pi1", "p2_t2_pi1", dt)
    return {"forward": fwd, "backward": bwd}


def scene_flow(maps: dict, dt: float | None = None, pass2_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Scene flow including the camera's motion: ``SF-F = P1(t2,π2) − P1(t1,π1)`` (image-1 pixels) and
    ``SF-B = P2(t1,π1) − P2(t2,π2)`` (image-2 pixels). Mixes both passes: ``pass2_scale`` (the ``s`` of the
    pixel-aligned ego-motion) multiplies the π2 maps first, bringing them into pass-1 units."""
    s = float(pass2_scale)
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"scene_flow: pass2_scale must be a positive finite factor, got {pass2_scale}")
    p1_t2_pi2 = _get(maps, "p1_t2_pi2")
    p2_t2_pi2 = _get(maps, "p2_t2_pi2")
    if s != 1.0 and not (p1_t2_pi2.dtype == p2_t2_pi2.dtype == np.float32):
        p1_t2_pi2, p2_t2_pi2 = p1_t2_pi2 * np.float32(s), p2_t2_pi2 * np.float32(s)
        s = 1.0
    if s == 1.0:
        fwd = _diff(p1_t2_pi2, _get(maps, "p1_t1_pi1"), "p1_t2_pi2", "p1_t1_pi1", dt)
        bwd = _diff(_get(maps, "p2_t1_pi1"), p2_t2_pi2, "p2_t1_pi1", "p2_t2_pi2", dt)
        return {"forward": fwd, "backward": bwd}
    # float32 maps: s·P − Q in one pass, computed in double and rounded once (cv2.addWeighted), i.e. the equation
    # with s rounded to float32, correctly rounded (the two-step s·P then − Q above rounds twice: within 1 ulp).
    p1_t1_pi1, p2_t1_pi1 = _get(maps, "p1_t1_pi1"), _get(maps, "p2_t1_pi1")
    same_shape(p1_t2_pi2, p1_t1_pi1, "p1_t2_pi2", "p1_t1_pi1")
    same_shape(p2_t1_pi1, p2_t2_pi2, "p2_t1_pi1", "p2_t2_pi2")
    if not p1_t1_pi1.dtype == p2_t1_pi1.dtype == np.float32:
        p1_t1_pi1, p2_t1_pi1 = p1_t1_pi1.astype(np.float32), p2_t1_pi1.astype(np.float32)
    s32 = float(np.float32(s))
    c = np.ascontiguousarray
    fwd = cv2.addWeighted(c(p1_t2_pi2), s32, c(p1_t1_pi1), -1.0, 0.0)
    bwd = cv2.addWeighted(c(p2_t2_pi2), -s32, c(p2_t1_pi1), 1.0, 0.0)
    if dt is not None:
        _check_dt(dt)
        fwd /= np.float32(dt)
        bwd /= np.float32(dt)
    return {"forward": fwd, "backward": bwd}


_FLOW_INPUTS = ("p1_t1_pi1", "p1_t2_pi1", "p2_t1_pi1", "p2_t2_pi1")
_SCENE_INPUTS = ("p1_t2_pi2", "p2_t2_pi2")


def flows_and_masks(maps: dict, eps_rel: float = 0.02, eps_abs: float | None = None,
                    pass2_scale: float | None = None, block_pixels: int = 12288):
    """The object flows, the motion masks thresholded on them and (with ``pass2_scale``) the scene flows of one
    pair in blocked passes over the point maps (dpm_theory.md §2, §6).

    Returns ``(flows, mask1, mask2, r2)``: ``flows`` as :func:`object_flow` (keys "object_forward",
    "object_backward") plus, when ``pass2_scale`` is given, :func:`scene_flow`'s ("scene_forward",
    "scene_backward"), (H, W, 3) float32 in the maps' units; ``mask1 = M(P1(t1,π1), P1(t2,π1))`` and
    ``mask2 = M(P2(t1,π1), P2(t2,π1))`` as ``displacement_mask(flow, reference, eps_rel, eps_abs)``, bool (H, W);
    ``r2 = ‖P1(t1,π1)‖²`` (H, W) in the points' dtype (NaN/inf where the point is invalid), as ``object_pixels``
    takes it.

    Every value equals those functions' bit for bit: the same float32 operations, per pixel, only in blocks of about
    ``block_pixels`` pixels, so that each block's inputs, flows and squares stay in the core's cache instead of
    one full (H, W, 3) pass per operation. Image 1's outputs (OF-F, SF-F, M1, r2) and image 2's (OF-B, SF-B, M2)
    share no input, so they are two passes, each with half the working set (twice the block for the same cache).
    Maps that are not float32 C-contiguous (H, W, 3) take the plain functions.
    """
    from dpm_ros.geometry.masks import _check_eps, displacement_mask, squared_norm

    names = _FLOW_INPUTS + (_SCENE_INPUTS if pass2_scale is not None else ())
    arrs = {n: _get(maps, n) for n in names}
    ref = arrs["p1_t1_pi1"]
    for n, a in arrs.items():
        same_shape(a, ref, n, "p1_t1_pi1")
    _check_eps(eps_rel, eps_abs)
    if pass2_scale is not None:
        s = float(pass2_scale)
        if not (np.isfinite(s) and s > 0):
            raise ValueError(f"scene_flow: pass2_scale must be a positive finite factor, got {pass2_scale}")
    if not all(a.dtype == np.float32 and a.flags.c_contiguous for a in arrs.values()) or ref.size == 0:
        flows = {f"object_{k}": v for k, v in object_flow(maps).items()}
        if pass2_scale is not None:
            flows.update({f"scene_{k}": v for k, v in scene_flow(maps, pass2_scale=pass2_scale).items()})
        m1 = displacement_mask(flows["object_forward"], ref, eps_rel, eps_abs)
        m2 = displacement_mask(flows["object_backward"], arrs["p2_t1_pi1"], eps_rel, eps_abs)
        return flows, m1, m2, squared_norm(ref).reshape(ref.shape[:2])
    h, w = ref.shape[:2]
    scene = pass2_scale is not None
    s32 = float(np.float32(pass2_scale)) if scene else 0.0       # as scene_flow: s rounded to float32
    flows = {k: np.empty_like(ref) for k in ("object_forward", "object_backward")
             + (("scene_forward", "scene_backward") if scene else ())}
    m1, m2 = np.empty((h, w), bool), np.empty((h, w), bool)
    r2 = np.empty((h, w), np.float32)
    rows = max(1, min(h, block_pixels // w))
    tmp = (np.empty((rows, w, 3), np.float32), np.empty((rows, w), np.float32), np.empty((rows, w), np.float32),
           np.empty((rows, w), bool))                            # block temporaries, reused
    eps = None if eps_abs is not None else np.full((1, 3), float(eps_rel) ** 2, np.float32)  # displacement_mask's
    lim = np.float32(float(eps_abs) ** 2) if eps_abs is not None else None
    with np.errstate(invalid="ignore"):                          # inf − inf: NaN, an invalid pixel as any other
        # image 1: OF-F = P1(t2,π1) − P1(t1,π1), SF-F = s·P1(t2,π2) − P1(t1,π1), M1 and ‖P1(t1,π1)‖²
        _block_pass(arrs["p1_t1_pi1"], arrs["p1_t2_pi1"], arrs.get("p1_t2_pi2"), 1, s32, flows["object_forward"],
                    flows.get("scene_forward"), m1, r2, eps, lim, rows, tmp)
        # image 2: OF-B = P2(t1,π1) − P2(t2,π1), SF-B = P2(t1,π1) − s·P2(t2,π2), M2
        _block_pass(arrs["p2_t1_pi1"], arrs["p2_t2_pi1"], arrs.get("p2_t2_pi2"), -1, s32, flows["object_backward"],
                    flows.get("scene_backward"), m2, None, eps, lim, rows, tmp)
    return flows, m1, m2, r2


def _block_pass(ref, other, pi2, sign, s32, of_out, sf_out, m_out, r2_out, eps, lim, rows, tmp):
    """One image's outputs of :func:`flows_and_masks`, block by block of ``rows`` rows: object flow
    ``sign·(other − ref)``, scene flow ``sign·(s·pi2 − ref)`` (when ``sf_out``), mask ``‖flow‖² > ε²`` with ε² the
    ``eps``-weighted ``‖ref‖²`` (or ``lim``), and ``‖ref‖²`` into ``r2_out`` (when given). float32 throughout."""
    q, d2, t, fin = tmp
    ones = np.ones((1, 3), np.float32)
    h = ref.shape[0]
    for y in range(0, h, rows):
        r = slice(y, min(h, y + rows))
        n = r.stop - y
        qb, d2b, tb, fb = q[:n], d2[:n], t[:n], fin[:n]
        a, of, m = ref[r], of_out[r], m_out[r]
        if sign > 0:
            np.subtract(other[r], a, out=of)
        else:
            np.subtract(a, other[r], out=of)
        if sf_out is not None:                                   # one rounding, as scene_flow
            cv2.addWeighted(pi2[r], sign * s32, a, -float(sign), 0.0, dst=sf_out[r])
        if eps is not None or r2_out is not None:
            cv2.multiply(a, a, dst=qb)
            if r2_out is not None:
                cv2.transform(qb, ones, dst=r2_out[r])           # ‖ref‖²
            if eps is not None:
                cv2.transform(qb, eps, dst=tb)                   # ε² = eps_rel²·‖ref‖²
        cv2.multiply(of, of, dst=qb)
        cv2.transform(qb, ones, dst=d2b)                         # ‖flow‖²
        np.greater(d2b, tb if eps is not None else lim, out=m)
        np.less(d2b, np.inf, out=fb)                             # NaN compares False; an inf flow is invalid too
        m &= fb
