"""Input validation shared by the geometry modules: shapes, finiteness, usable-point counts (ValueError on misuse)."""
from __future__ import annotations

import numpy as np


def as_points(arr, name: str) -> np.ndarray:
    """Return ``arr`` as an array whose last axis has length 3 (points); raise ValueError otherwise."""
    a = np.asarray(arr)
    if a.ndim < 1 or a.shape[-1] != 3:
        raise ValueError(f"{name}: expected points with a last axis of length 3 (e.g. (N, 3) or (H, W, 3)), "
                         f"got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name}: expected a numeric array, got dtype {a.dtype}")
    return a


def as_point_map(arr, name: str) -> np.ndarray:
    """Return ``arr`` as an (H, W, 3) point map; raise ValueError otherwise."""
    a = as_points(arr, name)
    if a.ndim != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name}: expected a point map of shape (H, W, 3), got shape {a.shape}")
    return a


def same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {a.shape} and {b.shape}")


def finite_rows(a: np.ndarray) -> np.ndarray:
    """Boolean mask over the leading axes: True where all three coordinates are finite.

    Tested as ``isfinite(x + y + z)`` (NaN and ±inf propagate through the sum), several times faster than
    ``isfinite(a).all(-1)``; only points whose coordinates overflow the dtype when summed (|x| ~ 1e38 in float32)
    are additionally rejected."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.isfinite(a[..., 0] + a[..., 1] + a[..., 2])


def as_weights(weights, shape: tuple, name: str = "weights") -> np.ndarray:
    """Weights of the given leading ``shape`` as float64; NaN/inf/negative ones become 0 (excluded)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} (one weight per point), got {w.shape}")
    return np.where(np.isfinite(w) & (w > 0), w, 0.0)


def as_mask(mask, shape: tuple, name: str) -> np.ndarray:
    """A boolean mask of exactly ``shape``."""
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(f"{name}: expected a mask of shape {tuple(shape)}, got {m.shape}")
    if m.dtype != bool:
        if not np.issubdtype(m.dtype, np.integer):
            raise ValueError(f"{name}: expected a boolean (or 0/1 integer) mask, got dtype {m.dtype}")
        m = m != 0
    return m


def need_points(n: int, what: str, minimum: int = 3) -> None:
    if n < minimum:
        raise ValueError(f"{what}: need at least {minimum} usable points (finite, positive weight, inside the mask), "
                         f"got {n}")
