"""Object ids that stay the same across pairs while an object is re-found (no ROS inside).

Each pair's pipeline numbers its objects 1..n afresh. ``ObjectTracker`` gives them ids that persist: a track's
centroid (in a fixed frame, e.g. odom, so camera motion does not move it) is predicted to the new stamp with its
velocity, and detections are matched to predictions by minimum total distance (Hungarian), within a gate of
``max(gate_abs, gate_rel · ‖extent‖)``. Unmatched detections open new ids (never reused, never 0); tracks not seen
for ``max_age`` seconds are forgotten; a stamp going backwards forgets all tracks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass
class Detection:
    """One object of one pair: ``centroid`` (3,) and ``velocity`` (3,) per second in the fixed frame,
    ``extent`` (3,) axis-aligned size, same unit as the centroid."""
    centroid: np.ndarray
    velocity: np.ndarray
    extent: np.ndarray


@dataclass
class Track:
    id: int
    centroid: np.ndarray
    velocity: np.ndarray
    extent: np.ndarray
    stamp: float
    hits: int = 1


class ObjectTracker:
    """gate_abs: smallest match radius (centroid units); gate_rel: radius as a multiple of the object's extent
    diagonal; max_age: seconds a track survives unseen."""

    def __init__(self, gate_abs: float = 0.3, gate_rel: float = 0.5, max_age: float = 1.0):
        if gate_abs < 0 or gate_rel < 0 or max_age < 0:
            raise ValueError("gate_abs, gate_rel and max_age must be ≥ 0")
        self.gate_abs, self.gate_rel, self.max_age = float(gate_abs), float(gate_rel), float(max_age)
        self.tracks: list[Track] = []
        self._next_id = 1
        self._last_stamp: float | None = None

    def reset(self) -> None:
        self.tracks = []
        self._last_stamp = None

    def update(self, stamp: float, detections: list[Detection]) -> list[int]:
        """Ids (uint32 ≥ 1) for ``detections`` at ``stamp`` (seconds), in their order."""
        if self._last_stamp is not None and stamp < self._last_stamp:
            self.reset()
        self._last_stamp = stamp
        self.tracks = [tr for tr in self.tracks if stamp - tr.stamp <= self.max_age]
        ids = [0] * len(detections)
        if self.tracks and detections:
            pred = np.stack([tr.centroid + tr.velocity * (stamp - tr.stamp) for tr in self.tracks])
            cent = np.stack([np.asarray(d.centroid, float) for d in detections])
            gate = np.array([max(self.gate_abs, self.gate_rel * float(np.linalg.norm(d.extent))) for d in detections])
            cost = np.linalg.norm(cent[:, None, :] - pred[None, :, :], axis=-1)
            big = 1e9
            rows, cols = linear_sum_assignment(np.where(cost <= gate[:, None], cost, big))
            for r, c in zip(rows, cols):
                if cost[r, c] <= gate[r]:
                    tr = self.tracks[c]
                    ids[r] = tr.id
                    self._refresh(tr, detections[r], stamp)
        for i, d in enumerate(detections):
            if ids[i] == 0:
                tr = Track(self._next_id, np.asarray(d.centroid, float), np.asarray(d.velocity, float),
                           np.asarray(d.extent, float), stamp)
                self._next_id += 1
                self.tracks.append(tr)
                ids[i] = tr.id
        return ids

    @staticmethod
    def _refresh(tr: Track, d: Detection, stamp: float) -> None:
        tr.centroid = np.asarray(d.centroid, float)
        tr.velocity = np.asarray(d.velocity, float)
        tr.extent = np.asarray(d.extent, float)
        tr.stamp = stamp
        tr.hits += 1
