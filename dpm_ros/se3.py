"""The one SE(3) inverse, numpy only: a leaf module, so ``dpm_ros.synthetic`` (which must import without scipy, for
the GPU training machine) and ``dpm_ros.geometry`` (which needs scipy) share it. ``dpm_ros.geometry.procrustes``
re-exports it."""
from __future__ import annotations

import numpy as np


def invert_se3(T: np.ndarray) -> np.ndarray:
    """Inverse of a 4×4 rigid transform ``[R t; 0 1]``: ``[Rᵀ −Rᵀt; 0 1]`` (float64; exact for a rigid T, unlike
    a general matrix inverse)."""
    T = np.asarray(T, dtype=np.float64)
    Ti = np.eye(4)
    Ti[:3, :3] = T[:3, :3].T
    Ti[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return Ti
