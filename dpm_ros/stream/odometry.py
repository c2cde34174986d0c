"""Ego-motion of successive pairs accumulated into odometry (pure numpy; REP 105 semantics).

Each pair gives ``T_c1_c2`` (camera 2 → camera 1, t2 < t1). The camera pose at t1 is the pose at t2 chained with the
pair's motion: ``T_odom_c1 = T_odom_c2 · T_c1_c2⁻¹``. Pairs overlap (I2 of one pair is usually an earlier I1), so the
pose at t2 is looked up among earlier I1 poses — exactly when t2 is one of them, else interpolated (SLERP + linear)
between the two neighbouring stamps. The odom frame is the pose of the child frame (base, or camera) at the first
frame. Twist: the child frame's velocity between t2 and t1, expressed in the child frame at t1.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from dpm_ros.geometry.procrustes import invert_se3


def interpolate_pose(ta: float, Ta: np.ndarray, tb: float, Tb: np.ndarray, t: float) -> np.ndarray:
    """Pose at ``t`` between (ta, Ta) and (tb, Tb): SLERP of rotation, linear translation (clamped to [ta, tb])."""
    if tb == ta:
        return Ta.copy()
    a = float(np.clip((t - ta) / (tb - ta), 0.0, 1.0))
    T = np.eye(4)
    T[:3, :3] = Slerp([0.0, 1.0], Rotation.from_matrix([Ta[:3, :3], Tb[:3, :3]]))([a]).as_matrix()[0]
    T[:3, 3] = (1 - a) * Ta[:3, 3] + a * Tb[:3, 3]
    return T


def body_twist(T_b1_b2: np.ndarray, t1: float, t2: float) -> tuple[np.ndarray, np.ndarray]:
    """(linear, angular) velocity of frame b from t2 to t1, in b at t1 (per second); T_b1_b2: b(t2) → b(t1)."""
    span = t1 - t2
    if span <= 0:
        raise ValueError(f"body_twist needs t1 > t2, got t1 = {t1}, t2 = {t2}")
    lin = -T_b1_b2[:3, 3] / span
    ang = -Rotation.from_matrix(T_b1_b2[:3, :3]).as_rotvec() / span
    return lin, ang


@dataclass
class OdometryState:
    stamp: float
    T_odom_child: np.ndarray   # 4×4 pose of the child frame (base or camera) in odom
    T_odom_camera: np.ndarray  # 4×4 pose of the camera optical frame in odom
    linear: np.ndarray         # (3,) child-frame velocity, per second
    angular: np.ndarray        # (3,) rad/s
    exact_chain: bool          # False when the pose at t2 had to be interpolated or extrapolated


class EgoOdometry:
    """T_child_camera: 4×4 pose of the camera optical frame in the child (base) frame, identity when the child
    frame is the camera itself. history_s: seconds of I1 poses kept for chaining."""

    def __init__(self, T_child_camera: Optional[np.ndarray] = None, history_s: float = 10.0):
        self.T_child_camera = np.eye(4) if T_child_camera is None else np.asarray(T_child_camera, float)
        self.history_s = float(history_s)
        self.approximate_chains = 0
        self.resets = 0
        self.reset()

    def reset(self) -> None:
        """Forget the trajectory: the next pair starts odom again (child frame at the origin)."""
        self._stamps: list[float] = []
        self._poses: list[np.ndarray] = []   # T_odom_camera at each stamp

    def set_extrinsic(self, T_child_camera: np.ndarray) -> None:
        """Change the child ← camera extrinsic (e.g. once /tf_static arrives); restarts the trajectory."""
        self.T_child_camera = np.asarray(T_child_camera, float)
        self.reset()

    def _pose_at(self, t: float) -> tuple[np.ndarray, bool]:
        s = self._stamps
        if not s:
            return self.T_child_camera.copy(), True  # odom = child frame at the first stamp
        i = bisect.bisect_left(s, t)
        for j in (i - 1, i):
            if 0 <= j < len(s) and abs(s[j] - t) < 1e-6:
                return self._poses[j], True
        if 0 < i < len(s):
            return interpolate_pose(s[i - 1], self._poses[i - 1], s[i], self._poses[i], t), False
        j = 0 if i == 0 else len(s) - 1
        return self._poses[j], False

    def update(self, t1: float, t2: float, T_c1_c2: np.ndarray) -> OdometryState:
        """Add one pair (t1 > t2, seconds; T_c1_c2 camera 2 → camera 1) and return the pose and twist at t1."""
        if not t1 > t2:
            raise ValueError(f"pair stamps must satisfy t1 > t2 (I1 newest), got t1 = {t1}, t2 = {t2}")
        if self._stamps and t1 < self._stamps[-1]:
            self.resets += 1
            self.reset()
        if not self._stamps:
            self._stamps, self._poses = [t2], [self.T_child_camera.copy()]
        T_odom_c2, exact = self._pose_at(t2)
        if not exact:
            self.approximate_chains += 1
        T_odom_c1 = T_odom_c2 @ invert_se3(np.asarray(T_c1_c2, float))
        if self._stamps and abs(self._stamps[-1] - t1) < 1e-6:
            self._poses[-1] = T_odom_c1
        else:
            self._stamps.append(t1)
            self._poses.append(T_odom_c1)
        while len(self._stamps) > 2 and t1 - self._stamps[0] > self.history_s:
            self._stamps.pop(0)
            self._poses.pop(0)
        Tcb = invert_se3(self.T_child_camera)  # camera ← child
        T_b1_b2 = self.T_child_camera @ np.asarray(T_c1_c2, float) @ Tcb
        lin, ang = body_twist(T_b1_b2, t1, t2)
        return OdometryState(t1, T_odom_c1 @ Tcb, T_odom_c1, lin, ang, exact)
