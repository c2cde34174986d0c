"""Shared test data: a make_pair pair with ~30% of its pixels on moving objects (both images), for the geometry
tests' ground-truth checks. Camera and objects move enough that 1e-5 relative is above float32 noise."""
from __future__ import annotations

from dpm_ros.synthetic import make_pair

DYNAMIC = dict(object_radius=(0.8, 1.2), camera_translation=(0.2, 0.4), camera_rotation_deg=(2.0, 8.0),
               object_translation=(0.1, 0.4), moving_prob=1.0)


def dynamic_pair(height: int = 96, width: int = 128) -> dict:
    """The first seed whose pair has 25–45% of its pixels (in both images) on moving objects."""
    for seed in range(40):
        p = make_pair(seed, height, width, 4, **DYNAMIC)
        f1, f2 = p["moving1"][p["valid1"]].mean(), p["moving2"][p["valid2"]].mean()
        if 0.25 <= f1 <= 0.45 and 0.25 <= f2 <= 0.45 and p["valid1"].mean() > 0.9:
            return p
    raise AssertionError("no synthetic pair with ~30% moving pixels among seeds 0..39")
