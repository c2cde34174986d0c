"""Renderer choice: OpenGL on EGL (moderngl, fast) when available, else the numpy ray-caster (same geometry).

``render(scene, t, T_w_c, K, H, W, renderer)`` returns ``points`` (H, W, 3) float32 camera-frame hit points (m, NaN
where none), ``labels`` (H, W) int32 (-1 none, 0 static, k moving object k) and ``rgb`` (H, W, 3) uint8.
"""
from __future__ import annotations

import logging

import numpy as np

from .gl import MAX_PRIMS
from .raycast import render_raycast
from .scene import Scene

log = logging.getLogger(__name__)
_gl_failed: str | None = None


def gl_available() -> bool:
    """True when an OpenGL 3.3+ context can be created on EGL in this process."""
    global _gl_failed
    if _gl_failed is not None:
        return False
    try:
        from .gl import get_renderer
        get_renderer()
        return True
    except Exception as exc:  # no EGL, no driver, no moderngl: fall back (logged once)
        _gl_failed = f"{type(exc).__name__}: {exc}"
        log.warning("OpenGL/EGL renderer unavailable (%s); using the numpy ray-caster", _gl_failed)
        return False


def render(scene: Scene, t: float, T_w_c: np.ndarray, K: np.ndarray, height: int, width: int,
           renderer: str = "auto") -> dict:
    """Render ``scene`` at time t (s) from ``T_w_c`` (4×4 camera-to-world) with intrinsics K (3×3, pixels).
    ``renderer``: "auto" (GL if available, else numpy), "gl" (raise if unavailable) or "numpy"."""
    if renderer not in ("auto", "gl", "numpy"):
        raise ValueError(f"renderer must be 'auto', 'gl' or 'numpy', got {renderer!r}")
    if renderer == "auto" and len(scene.primitives) > MAX_PRIMS:     # beyond the GL uniform block
        renderer = "numpy"
    if renderer == "numpy" or (renderer == "auto" and not gl_available()):
        out = render_raycast(scene, t, T_w_c, K, height, width)
    elif renderer == "gl" and not gl_available():
        raise ValueError(f"OpenGL/EGL renderer unavailable ({_gl_failed}); use renderer='numpy'")
    else:
        from .gl import get_renderer
        out = get_renderer().render(scene, t, T_w_c, K, height, width)
    out["rgb"] = scene.add_noise(out["rgb"], t)
    return out
