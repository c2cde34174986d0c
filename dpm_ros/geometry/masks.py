"""Motion masks (dpm_theory.md §2): ``M(A, B)_i = 1`` where ``‖A_i − B_i‖ > ε_i``."""
from __future__ import annotations

import cv2
import numpy as np

from dpm_ros.geometry._checks import as_points, same_shape


def _as_image(a: np.ndarray) -> np.ndarray:
    """(..., 3) points as a contiguous (N, 1, 3) float32/float64 image, the layout OpenCV's channel ops take."""
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32)
    return np.ascontiguousarray(a).reshape(-1, 1, 3)


def _two_images(a, b, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Two (..., 3) point arrays of one shape as ``_as_image`` images of one dtype (float64 when theirs differ),
    and their leading shape."""
    a = as_points(a, name_a)
    b = as_points(b, name_b)
    same_shape(a, b, name_a, name_b)
    ai, bi = _as_image(a), _as_image(b)
    if ai.dtype != bi.dtype:
        ai, bi = ai.astype(np.float64), bi.astype(np.float64)
    return ai, bi, a.shape[:-1]


def squared_norm(a: np.ndarray, scale: float = 1.0, overwrite: bool = False) -> np.ndarray:
    """``scale·‖a_i‖²`` per point of a 3-channel float image ((N, 1, 3) or (H, W, 3)), one channel out.
    ``overwrite``: square ``a`` in place (a temporary of the caller's; saves one 3-channel allocation and pass)."""
    sq = cv2.multiply(a, a, dst=a) if overwrite else cv2.multiply(a, a)
    return cv2.transform(sq, np.full((1, 3), scale, dtype=a.dtype))


def motion_mask(a, b, eps_rel: float = 0.02, eps_abs: float | None = None) -> np.ndarray:
    """Pixels that move between point maps ``a`` and ``b`` (same frame, e.g. P1(t1,π1) and P1(t2,π1)).

    ``a``, ``b``: (..., 3) points. Threshold ``ε_i = eps_rel·‖a_i‖`` (scale-free, the default for up-to-scale maps),
    or ``eps_abs`` in the maps' units (metres when metric) when given; ``eps_abs`` takes precedence.
    Returns a bool array of the leading shape; pixels where either point is NaN/inf are False (excluded).
    Computed as ``‖a − b‖² > ε²`` (no square roots; OpenCV channel ops), which equals the definition.
    """
    ai, bi, shape = _two_images(a, b, "a", "b")
    return _threshold(cv2.subtract(ai, bi), ai, eps_rel, eps_abs).reshape(shape)


def displacement_mask(d, a, eps_rel: float = 0.02, eps_abs: float | None = None) -> np.ndarray:
    """:func:`motion_mask` from a displacement already at hand: ``d = b − a`` (or ``a − b``, e.g. an object flow
    of ``dpm_ros.geometry.flow``) and the reference points ``a``; ``‖d‖ > ε`` with ε as in motion_mask."""
    di, ai, shape = _two_images(d, a, "d", "a")
    return _threshold(di, ai, eps_rel, eps_abs).reshape(shape)


def _threshold(d: np.ndarray, a: np.ndarray, eps_rel: float, eps_abs: float | None) -> np.ndarray:
    if d.size == 0:
        return np.zeros(d.shape[:-1], dtype=bool)
    _check_eps(eps_rel, eps_abs)
    d2 = squared_norm(d)
    if eps_abs is not None:
        out = d2 > float(eps_abs) ** 2
    else:
        out = d2 > squared_norm(a, float(eps_rel) ** 2)
    # NaN compares False; an inf on one side only makes d2 = inf: exclude it too (invalid pixels never move).
    out &= d2 < np.inf
    return out


def _check_eps(eps_rel: float, eps_abs: float | None) -> None:
    """ValueError unless the threshold in use is valid: ``eps_abs`` (when given) a finite distance >= 0, else
    ``eps_rel`` a finite fraction >= 0."""
    if eps_abs is not None:
        if not (np.isfinite(eps_abs) and eps_abs >= 0):
            raise ValueError(f"motion_mask: eps_abs must be a finite distance >= 0, got {eps_abs}")
    elif not (np.isfinite(eps_rel) and eps_rel >= 0):
        raise ValueError(f"motion_mask: eps_rel must be a finite fraction >= 0, got {eps_rel}")
