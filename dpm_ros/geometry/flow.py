"""Scene flow and object flow (dpm_theory.md §6, Table B.2 of the paper), forward and backward.

Each returns ``{"forward": (H, W, 3), "backward": (H, W, 3)}`` in the units of the maps (per second when ``dt``
is given). Invalid (NaN) pixels stay NaN: they are excluded downstream, never filled in.
"""
from __future__ import annotations

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
    # float32 maps: s·P first (rounded to float32, as above), then the difference written into that same array:
    # one pass and one (H, W, 3) allocation fewer per flow, identical values.
    p1_t1_pi1, p2_t1_pi1 = _get(maps, "p1_t1_pi1"), _get(maps, "p2_t1_pi1")
    same_shape(p1_t2_pi2, p1_t1_pi1, "p1_t2_pi2", "p1_t1_pi1")
    same_shape(p2_t1_pi1, p2_t2_pi2, "p2_t1_pi1", "p2_t2_pi2")
    fwd = np.multiply(p1_t2_pi2, np.float32(s))
    np.subtract(fwd, p1_t1_pi1, out=fwd, dtype=np.float32)
    bwd = np.multiply(p2_t2_pi2, np.float32(s))
    np.subtract(p2_t1_pi1, bwd, out=bwd, dtype=np.float32)
    if dt is not None:
        _check_dt(dt)
        fwd /= np.float32(dt)
        bwd /= np.float32(dt)
    return {"forward": fwd, "backward": bwd}
