"""Vectorised numpy ray-caster for synthetic scenes (the fallback when OpenGL/EGL is unavailable).

Analytic ray/primitive intersection for every pixel at once (one numpy pass per primitive, no per-pixel Python).
Pixel (u, v) (column u, row v, integer = pixel centre) casts the ray ``K^-1 (u, v, 1)`` from the camera centre;
the hit point in the camera's optical frame (metres) is ``t · K^-1 (u, v, 1)``, so it projects exactly onto its pixel.
Shading: solid texture × light colour × (ambient + diffuse·max(n·L, 0)), with hard shadows from a directional light
(shadow rays against every primitive but the room and the point's own convex primitive). The texture, lighting and
shadow model here is mirrored line for line by the GLSL shader in ``gl.py``.
"""
from __future__ import annotations

import numpy as np

from dpm_ros.se3 import invert_se3

from .scene import BOX, CYLINDER, ELLIPSOID, ROOM, Primitive, Scene

NEAR = 1e-3  # metres: hits closer than this along the ray are ignored
SHADOW_OFFSET = 1e-4  # metres: shadow rays start this far off the surface, along its normal


def pixel_rays(K: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H*W, 3) ray directions ``K^-1 (u, v, 1)`` in the optical frame (z = 1), row-major over pixel centres."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    uv1 = np.stack([u.ravel(), v.ravel(), np.ones(height * width)], axis=1)
    return uv1 @ np.linalg.inv(K).T


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=-1)


def intersect(prim: Primitive, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Ray parameter t of the visible hit of rays ``o + t·d`` (local frame; o and d each (3,) or (N, 3)) with
    ``prim``; inf where the ray misses."""
    size = prim.size
    if prim.kind == ELLIPSOID:
        os_, ds = o / size, d / size
        a, b, c = _dot(ds, ds), _dot(os_, ds), _dot(os_, os_) - 1.0
        disc = b * b - a * c
        ok = (disc >= 0) & (b < 0) & (c > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            t = c / (-b + np.sqrt(np.maximum(disc, 0)))
        return np.where(ok & (t > NEAR), t, np.inf)
    if prim.kind == CYLINDER:
        return _intersect_cylinder(size, o, d)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t0, t1 = (-size - o) * inv, (size - o) * inv
    tmin = np.minimum(t0, t1).max(axis=-1)
    tmax_axes = np.maximum(t0, t1)
    tmax = tmax_axes.min(axis=-1)
    if prim.kind == BOX:
        return np.where((tmax >= tmin) & (tmin > NEAR), tmin, np.inf)
    # ROOM: seen from inside, the exit point; an open top lets rays leave through the ceiling (no hit)
    hit = (tmax >= tmin) & (tmax > NEAR)
    if prim.open_top:
        hit &= ~((tmax_axes.argmin(axis=-1) == 2) & (d[..., 2] > 0))
    return np.where(hit, tmax, np.inf)


def _intersect_cylinder(size: np.ndarray, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Capped elliptic cylinder |(x/rx, y/ry)| <= 1, |z| <= h seen from outside: nearest of side and cap hits."""
    h = size[2]
    os_, ds = o[..., :2] / size[:2], d[..., :2] / size[:2]
    a, b, c = _dot(ds, ds), _dot(os_, ds), _dot(os_, os_) - 1.0
    disc = b * b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = c / (-b + np.sqrt(np.maximum(disc, 0)))
        z = o[..., 2] + t_side * d[..., 2]
        side = (disc >= 0) & (b < 0) & (c > 0) & (np.abs(z) <= h) & (t_side > NEAR)
        t_cap = (np.where(d[..., 2] < 0, h, -h) - o[..., 2]) / d[..., 2]
        q = (o[..., :2] + t_cap[..., None] * d[..., :2]) / size[:2]
        cap = (np.abs(o[..., 2]) > h) & (_dot(q, q) <= 1.0) & (t_cap > NEAR)
    return np.minimum(np.where(side, t_side, np.inf), np.where(cap, t_cap, np.inf))


def local_normal(prim: Primitive, p: np.ndarray) -> np.ndarray:
    """(N, 3) unit surface normals (local frame) at local surface points ``p``, facing the visible side."""
    if prim.kind == ELLIPSOID:
        n = p / prim.size ** 2
        return n / np.linalg.norm(n, axis=1, keepdims=True)
    if prim.kind == CYLINDER:
        radial = np.sqrt(((p[:, :2] / prim.size[:2]) ** 2).sum(axis=1))
        cap = np.abs(p[:, 2]) / prim.size[2] > radial
        n = np.zeros_like(p)
        n[:, :2] = p[:, :2] / prim.size[:2] ** 2
        n[cap] = 0.0
        n[cap, 2] = np.sign(p[cap, 2])
        return n / np.linalg.norm(n, axis=1, keepdims=True)
    rel = np.abs(p) / prim.size
    axis = rel.argmax(axis=1)
    n = np.zeros_like(p)
    n[np.arange(len(p)), axis] = np.sign(p[np.arange(len(p)), axis])
    return -n if prim.kind == ROOM else n


def albedo(prim: Primitive, p: np.ndarray) -> np.ndarray:
    """(N, 3) solid-texture albedo at local points ``p`` (metres): checker + sinusoids between two colours."""
    cells = np.floor(p * prim.checker_scale).sum(axis=1)
    checker = cells - 2.0 * np.floor(cells / 2.0)
    wave = np.sin(p @ prim.waves[:, :3].T + prim.waves[:, 3]) @ prim.wave_amps
    m = np.clip(0.5 + prim.checker_weight * (checker - 0.5) + wave, 0.0, 1.0)[:, None]
    return prim.color_a * (1 - m) + prim.color_b * m


def shadowed(scene: Scene, frames: list[np.ndarray], points: np.ndarray, normals: np.ndarray, own: np.ndarray,
             light_cam: np.ndarray) -> np.ndarray:
    """(N,) bool: the directional light is blocked from camera-frame surface ``points`` (normals ``normals``) by a
    primitive other than the room and than the point's own (convex) primitive ``own``. ``frames``: T_l_c per
    primitive."""
    origin = points + normals * SHADOW_OFFSET
    blocked = np.zeros(len(points), bool)
    for j, prim in enumerate(scene.primitives):
        if prim.kind == ROOM:
            continue
        T_l_c = frames[j]
        t = intersect(prim, origin @ T_l_c[:3, :3].T + T_l_c[:3, 3], T_l_c[:3, :3] @ light_cam)
        blocked |= np.isfinite(t) & (own != j)
    return blocked


def _candidate_rays(prim: Primitive, T_l_c: np.ndarray, d: np.ndarray, d_norm: np.ndarray) -> np.ndarray:
    """Indices of the rays that can hit ``prim``: those within the cone around its bounding sphere (all rays when
    the camera is inside that sphere, e.g. for the room and the floor)."""
    if prim.kind == ROOM:
        return np.arange(len(d))
    radius = float(prim.size.max() if prim.kind == ELLIPSOID else np.linalg.norm(prim.size)) * 1.001
    centre = -T_l_c[:3, :3].T @ T_l_c[:3, 3]          # primitive centre in the camera frame
    dist = float(np.linalg.norm(centre))
    if dist <= radius:
        return np.arange(len(d))
    cos_cone = np.sqrt(1.0 - (radius / dist) ** 2) - 1e-9
    return np.flatnonzero(d @ centre >= cos_cone * dist * d_norm)


def render_raycast(scene: Scene, t: float, T_w_c: np.ndarray, K: np.ndarray, height: int, width: int) -> dict:
    """Render ``scene`` at time ``t`` (s) from camera pose ``T_w_c`` (4×4 camera-to-world, optical frame).

    Returns ``points`` (H, W, 3) float32 hit points in the camera frame (m; NaN where no surface), ``labels``
    (H, W) int32 instance labels (-1 = no surface, 0 = static, k = moving object k) and ``rgb`` (H, W, 3) uint8.
    """
    d = pixel_rays(K, height, width)
    n = d.shape[0]
    best_t = np.full(n, np.inf)
    best_i = np.full(n, -1, dtype=np.int64)
    frames = []
    d_norm = np.sqrt(np.einsum("ij,ij->i", d, d))
    for i, prim in enumerate(scene.primitives):
        T_l_c = invert_se3(prim.pose(t)) @ T_w_c
        frames.append(T_l_c)
        cand = _candidate_rays(prim, T_l_c, d, d_norm)
        t_hit = intersect(prim, T_l_c[:3, 3], d[cand] @ T_l_c[:3, :3].T)
        closer = t_hit < best_t[cand]
        idx = cand[closer]
        best_t[idx] = t_hit[closer]
        best_i[idx] = i
    valid = best_i >= 0
    points = np.full((n, 3), np.nan)
    points[valid] = d[valid] * best_t[valid, None]
    labels = np.full(n, -1, dtype=np.int32)
    normals, albedos = np.zeros((n, 3)), np.zeros((n, 3))
    for i, prim in enumerate(scene.primitives):
        sel = np.flatnonzero(best_i == i)
        if sel.size == 0:
            continue
        T_l_c = frames[i]
        p_local = T_l_c[:3, 3] + (d[sel] @ T_l_c[:3, :3].T) * best_t[sel, None]
        normals[sel] = local_normal(prim, p_local) @ T_l_c[:3, :3]     # camera frame
        albedos[sel] = albedo(prim, p_local)
        labels[sel] = prim.label
    light = scene.light
    light_cam = T_w_c[:3, :3].T @ light.direction
    lam = np.maximum(normals @ light_cam, 0.0)
    if scene.shadows:
        lit = np.flatnonzero(lam > 0)
        lam[lit[shadowed(scene, frames, points[lit], normals[lit], best_i[lit], light_cam)]] = 0.0
    rgb = np.clip(albedos * light.color * (light.ambient + light.diffuse * lam)[:, None], 0.0, 1.0)
    return {"points": points.reshape(height, width, 3).astype(np.float32),
            "labels": labels.reshape(height, width),
            "rgb": np.round(rgb * 255).astype(np.uint8).reshape(height, width, 3)}
