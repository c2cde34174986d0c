"""3D correspondences (dpm_theory.md §3): nearest neighbours between point sets with a KD-tree."""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from dpm_ros.geometry._checks import as_points, finite_rows


def nearest_neighbours(query, ref, max_dist: float | None = None, mutual: bool = False) -> np.ndarray:
    """``C(query, ref)``: for each query point, the flat index of its nearest neighbour among ``ref`` (3D, same
    frame and units), −1 where there is none.

    ``query``: (..., 3); ``ref``: (..., 3), indices refer to ``ref.reshape(-1, 3)``. ``max_dist``: no match farther
    than this (ref units). ``mutual``: keep only cycle-consistent matches (the query point is also the nearest
    neighbour of its match). NaN/inf points are neither matched nor matched to. Returns int64 of query's leading
    shape. KD-tree (scipy cKDTree, one thread): O(N log N) time and O(N) memory.
    """
    q = as_points(query, "query")
    r = as_points(ref, "ref")
    lead = q.shape[:-1]
    q = q.reshape(-1, 3)
    r = r.reshape(-1, 3)
    if max_dist is not None and not (np.isfinite(max_dist) and max_dist > 0):
        raise ValueError(f"nearest_neighbours: max_dist must be a positive distance, got {max_dist}")
    q_ok = np.flatnonzero(finite_rows(q))
    r_ok = np.flatnonzero(finite_rows(r))
    out = np.full(len(q), -1, dtype=np.int64)
    if len(q_ok) == 0 or len(r_ok) == 0:
        return out.reshape(lead)
    qv = q[q_ok].astype(np.float64, copy=False)
    rv = r[r_ok].astype(np.float64, copy=False)
    bound = np.inf if max_dist is None else float(max_dist)
    _, j = cKDTree(rv).query(qv, k=1, distance_upper_bound=bound, workers=1)
    found = j < len(rv)
    if mutual:
        _, back = cKDTree(qv).query(rv[j[found]], k=1, workers=1)
        keep = back == np.flatnonzero(found)
        found[np.flatnonzero(found)[~keep]] = False
    out[q_ok[found]] = r_ok[j[found]]
    return out.reshape(lead)
