"""Trajectory APE/RPE in the convention of the ``evo`` tool (MichaelGrupp/evo): TUM files, timestamp association,
optional Umeyama alignment (``evo_ape -a``/``-as``), translation and rotation-angle errors.

Poses are 4×4 camera/body-to-world matrices (metres). Statistics are those evo prints: rmse, mean, median, std,
min, max, sse.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from dpm_ros.geometry.procrustes import rotation_angle_deg, umeyama


def read_tum(path) -> tuple[np.ndarray, np.ndarray]:
    """Read a TUM trajectory file (``timestamp tx ty tz qx qy qz qw`` per line, '#' comments).
    Returns ``(stamps (N,) seconds, poses (N, 4, 4))``."""
    path = Path(path)
    rows = [ln.split() for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not rows or any(len(r) != 8 for r in rows):
        raise ValueError(f"{path}: not a TUM trajectory (expected 8 columns: timestamp tx ty tz qx qy qz qw)")
    data = np.array(rows, dtype=np.float64)
    poses = np.tile(np.eye(4), (len(data), 1, 1))
    poses[:, :3, :3] = Rotation.from_quat(data[:, 4:8]).as_matrix()   # scipy quaternions are (x, y, z, w)
    poses[:, :3, 3] = data[:, 1:4]
    return data[:, 0], poses


def associate(stamps_a, stamps_b, max_diff: float = 0.01, offset_b: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs of matching timestamps, as ``evo.core.sync.associate_trajectories``: for each stamp of the
    shorter sequence, the nearest stamp (seconds) of the longer one, kept when ``|Δt| <= max_diff``.
    Returns ``(idx_a, idx_b)``. Raises ValueError when nothing matches."""
    a = np.asarray(stamps_a, dtype=np.float64)
    b = np.asarray(stamps_b, dtype=np.float64) + offset_b
    swap = len(a) > len(b)
    short, long_ = (b, a) if swap else (a, b)
    order = np.argsort(long_, kind="stable")
    ls = long_[order]
    pos = np.searchsorted(ls, short)
    lo = np.clip(pos - 1, 0, len(ls) - 1)
    hi = np.clip(pos, 0, len(ls) - 1)
    j = np.where(np.abs(short - ls[lo]) <= np.abs(ls[hi] - short), lo, hi)   # ties: the earlier stamp, like argmin
    diff = np.abs(ls[j] - short)
    keep = diff <= max_diff
    i_short = np.flatnonzero(keep)
    i_long = order[j[keep]]
    if len(i_short) == 0:
        raise ValueError(f"associate: no timestamps match within max_diff={max_diff} s (check units/offset)")
    return (i_long, i_short) if swap else (i_short, i_long)


def _stats(err: np.ndarray) -> dict[str, float]:
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mean": float(np.mean(err)),
            "median": float(np.median(err)), "std": float(np.std(err)), "min": float(np.min(err)),
            "max": float(np.max(err)), "sse": float(np.sum(err ** 2))}


def _check_poses(p, name):
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 3 or p.shape[1:] != (4, 4):
        raise ValueError(f"{name}: expected (N, 4, 4) poses, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"{name}: poses contain NaN/inf")
    return p


def ape(poses_ref, poses_est, align: bool = False, correct_scale: bool = False) -> dict[str, float]:
    """Absolute pose error (translation part, metres) of associated poses, as ``evo_ape``: with ``align`` the
    estimate's positions are first Umeyama-aligned to the reference (``-a``; ``correct_scale`` for ``-as``).
    Error per pose: ``‖t(T_ref⁻¹·T_est)‖ = ‖p_est − p_ref‖``."""
    ref = _check_poses(poses_ref, "poses_ref")
    est = _check_poses(poses_est, "poses_est")
    if len(ref) != len(est):
        raise ValueError(f"ape: {len(ref)} reference and {len(est)} estimated poses; associate them first")
    p_est = est[:, :3, 3]
    if align or correct_scale:
        rot, t, s = umeyama(p_est, ref[:, :3, 3], with_scale=correct_scale)
        p_est = s * p_est @ rot.T + t
    return _stats(np.linalg.norm(p_est - ref[:, :3, 3], axis=1))


def ape_rmse(poses_ref, poses_est, align: bool = False, correct_scale: bool = False) -> float:
    """RMSE of :func:`ape` (metres)."""
    return ape(poses_ref, poses_est, align, correct_scale)["rmse"]


def rpe_trajectory(poses_ref, poses_est, delta: int = 1) -> dict[str, dict[str, float]]:
    """Relative pose error over ``delta`` frames, as ``evo_rpe --delta N --delta_unit f``: for consecutive pairs
    (i, i+delta), ``E = (Q_i⁻¹Q_j)⁻¹(P_i⁻¹P_j)``; returns stats of ``‖t(E)‖`` (metres, key "trans") and of
    ``angle(R(E))`` (degrees, key "rot_deg")."""
    ref = _check_poses(poses_ref, "poses_ref")
    est = _check_poses(poses_est, "poses_est")
    if len(ref) != len(est):
        raise ValueError(f"rpe_trajectory: {len(ref)} reference and {len(est)} estimated poses; associate first")
    if not 1 <= delta < len(ref):
        raise ValueError(f"rpe_trajectory: delta must be in [1, {len(ref) - 1}] frames, got {delta}")
    q_rel = np.linalg.inv(ref[:-delta]) @ ref[delta:]
    p_rel = np.linalg.inv(est[:-delta]) @ est[delta:]
    err = np.linalg.inv(q_rel) @ p_rel
    return {"trans": _stats(np.linalg.norm(err[:, :3, 3], axis=1)),
            "rot_deg": _stats(np.asarray(rotation_angle_deg(err[:, :3, :3])))}
