"""Metric scale for DPM outputs (pure numpy, no ROS).

Point maps are up to scale: every pair is in its own model units. ``ScaleEstimator`` turns each pair into one factor
``s`` (metres per model unit) so that ``s · points`` is metric and the accumulated odometry never jumps in scale:

- ``none``:  s = 1 (model units);
- ``fixed``: s = a known factor;
- ``depth``: s = median over valid pixels of ``depth(I1) / z(P1(t1,π1))`` against a metric depth image of I1
  registered to it (the RGB-D case; cut to the engine's centre crop like the image); pairs without a usable depth
  image fall back to the chain below, then to the last factor;
- ``chain``: one consistent scale along the sequence. Each pair's frames are remembered as metric 3-D shapes (the
  frame's points at its own time, per output pixel). A new pair that holds a remembered frame f gets
  ``s = median(‖X_metric(f) − c‖ / ‖X_model(f) − c'‖)`` over pixels valid in both, c and c' the centroids of those
  pixels: distances to the centroid do not change under the rigid motion between the two pairs' camera frames, so
  the ratio needs no ego-motion estimate (whose errors would otherwise leak into the scale). The first pair gets
  ``initial_scale``; a pair sharing no frame with the memory keeps the previous factor (counted in
  ``chain_breaks``).

Frame f's shape in the pair's units: f = I1 → ``P1(t1,π1)``; f = I2 → ``P2(t2,π1)`` (both in camera 1's frame).
``frame_depths`` gives each frame's z in its own optical frame (I2 through ``T_c1_c2``). Frames are matched by
stamp (seconds).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from dpm_ros.engine.pair_io import crop_image, resize_nearest

SCALE_SOURCES = ("none", "fixed", "depth", "chain")


@dataclass(frozen=True)
class ScaleEstimate:
    """One pair's factor. ``scale``: metres per model unit; ``source``: what produced it ("none", "fixed", "depth",
    "chain", "initial", "hold"); ``n_pixels``: pixels in the median (0 when none was taken); ``reference_stamp``: the
    shared frame's stamp for "chain"."""
    scale: float
    source: str
    n_pixels: int = 0
    reference_stamp: float | None = None


def median_ratio(numerator: np.ndarray, denominator: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, int]:
    """Median of numerator/denominator over pixels where both are finite and > 0 (and ``mask``). Returns
    (ratio, pixel count); ratio is NaN when no pixel is valid."""
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    if num.shape != den.shape:
        raise ValueError(f"scale: depth shapes differ: {num.shape} vs {den.shape}")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(num) & np.isfinite(den) & (num > 0) & (den > 0)
    if mask is not None:
        valid &= mask
    n = int(valid.sum())
    if n == 0:
        return float("nan"), 0
    return float(np.median(num[valid] / den[valid])), n


def frame_depths(maps: dict, T_c1_c2: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """z of I1 and of I2, each in its own optical frame, in the pair's model units, (h, w) float64.
    z of I2 is None when ``T_c1_c2`` (4×4, camera 2 → camera 1) or ``p2_t2_pi1`` is missing."""
    if "p1_t1_pi1" not in maps:
        raise ValueError("scale: the pair's maps lack 'p1_t1_pi1'")
    z1 = np.asarray(maps["p1_t1_pi1"], dtype=np.float64)[..., 2]
    if T_c1_c2 is None or "p2_t2_pi1" not in maps:
        return z1, None
    T = np.asarray(T_c1_c2, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"scale: T_c1_c2 must be 4x4, got {T.shape}")
    X_c1 = np.asarray(maps["p2_t2_pi1"], dtype=np.float64)
    # X_c2 = R^T (X_c1 - t); only z is needed: z = r3 · (X_c1 - t) with r3 the third column of R.
    z2 = (X_c1 - T[:3, 3]) @ T[:3, 2]
    return z1, z2


def shape_ratio(reference: np.ndarray, points: np.ndarray, mask: np.ndarray | None = None,
                near_centroid: float = 0.2) -> tuple[float, int]:
    """Scale of ``reference`` over ``points`` ((h, w, 3), the same pixels, any rigid frames): median over pixels
    valid in both (finite, z > 0, ``mask``) of ‖reference − c_ref‖ / ‖points − c_pts‖, the c's the centroids of
    those pixels; pixels closer to their centroid than ``near_centroid`` × the median distance are left out (their
    ratio is noise-dominated). Returns (ratio, pixel count); NaN, 0 when no pixel is valid."""
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(points, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"scale: point maps must be (h, w, 3) of one shape, got {a.shape} and {b.shape}")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(a).all(-1) & np.isfinite(b).all(-1) & (a[..., 2] > 0) & (b[..., 2] > 0)
    if mask is not None:
        valid &= mask
    if not valid.any():
        return float("nan"), 0
    a, b = a[valid], b[valid]
    da = np.linalg.norm(a - a.mean(0), axis=1)
    db = np.linalg.norm(b - b.mean(0), axis=1)
    keep = db > near_centroid * np.median(db)
    n = int(keep.sum())
    if n == 0:
        return float("nan"), 0
    return float(np.median(da[keep] / db[keep])), n


def frame_shapes(maps: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """Each frame's 3-D shape in the pair's pass-1 units, (h, w, 3) float32, as the chain compares them.

    Image 1: ``P1(t1,π1)``. Image 2, with a symmetric engine: ``ρ · P2(t2,π2)``, its shape as the *first* image of
    the second pass, brought into pass-1 units by ``ρ = sqrt(r(P1(t1,π1), P1(t1,π2)) · r(P2(t2,π1), P2(t2,π2)))``
    (r = ``shape_ratio``): each frame's size as first over as second image, in the two passes, so a network bias
    between the two roles cancels in ρ, and the chain always compares frames in the same role (a bias would
    otherwise compound pair after pair). Without the second pass: ``P2(t2,π1)``; None when that is missing too."""
    x1 = np.asarray(maps["p1_t1_pi1"], dtype=np.float32)
    if all(n in maps for n in ("p2_t2_pi1", "p2_t2_pi2", "p1_t1_pi2")):
        r1, n1 = shape_ratio(x1, maps["p1_t1_pi2"])
        r2, n2 = shape_ratio(maps["p2_t2_pi1"], maps["p2_t2_pi2"])
        if n1 and n2:
            return x1, np.asarray(maps["p2_t2_pi2"], dtype=np.float32) * np.float32(np.sqrt(r1 * r2))
    return x1, (np.asarray(maps["p2_t2_pi1"], dtype=np.float32) if "p2_t2_pi1" in maps else None)


def _key(stamp: float) -> int:
    """Frames are matched by stamp to the nanosecond."""
    return int(round(float(stamp) * 1e9))


class ScaleEstimator:
    """Metres per model unit for each pair of a sequence; see the module docstring for the sources.

    Call ``update`` once per processed pair, in processing order; multiply the pair's points, translations,
    centroids, extents and velocities by the returned ``scale``.
    """

    def __init__(self, source: str = "none", fixed_scale: float = 1.0, initial_scale: float = 1.0,
                 min_pixels: int = 50, conf_threshold: float = 0.0, history: int = 32):
        if source not in SCALE_SOURCES:
            raise ValueError(f"scale_source '{source}' unknown (use one of {', '.join(SCALE_SOURCES)})")
        for name, value in (("fixed_scale", fixed_scale), ("initial_scale", initial_scale)):
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if min_pixels < 1 or history < 2:
            raise ValueError(f"min_pixels must be >= 1 and history >= 2 (got {min_pixels}, {history})")
        self.source = source
        self.fixed_scale = float(fixed_scale)
        self.initial_scale = float(initial_scale)
        self.min_pixels = int(min_pixels)
        self.conf_threshold = float(conf_threshold)
        self.history = int(history)
        self.chain_breaks = 0
        self.depth_misses = 0
        self._memory: OrderedDict[int, np.ndarray] = OrderedDict()   # stamp (ns) -> metric points (h, w, 3)
        self._last: float | None = None

    def reset(self) -> None:
        """Forget the sequence (stamps went backwards, a bag looped): the next pair starts a new chain."""
        self._memory.clear()
        self._last = None

    @property
    def last_scale(self) -> float | None:
        return self._last

    def update(self, stamp1: float, stamp2: float, maps: dict, T_c1_c2: np.ndarray | None = None,
               depth1: np.ndarray | None = None) -> ScaleEstimate:
        """Scale for the pair (I1 at ``stamp1``, I2 at ``stamp2``, seconds). ``maps``: engine outputs (model units,
        optical frames; ``conf_*`` used when ``conf_threshold`` > 0). ``T_c1_c2``: 4×4 camera 2 → camera 1 in model
        units (checked; the chain does not need it). ``depth1``: metric depth of I1 (metres, any resolution, 0/NaN
        invalid), used by source "depth"."""
        if self.source == "none":
            return ScaleEstimate(1.0, "none")
        if self.source == "fixed":
            return ScaleEstimate(self.fixed_scale, "fixed")
        z1, _ = frame_depths(maps, T_c1_c2)
        x1, x2 = frame_shapes(maps)
        conf1 = self._conf_mask(maps, "conf_p1_t1_pi1", z1.shape)
        conf2 = self._conf_mask(maps, "conf_p2_t2_pi1", z1.shape)
        estimate = None
        if self.source == "depth" and depth1 is not None:
            depth = np.asarray(depth1, dtype=np.float64)
            if depth.ndim != 2:
                raise ValueError(f"scale: depth image must be (H, W), got shape {depth.shape}")
            # the engine centre-cropped the image to its aspect: the same window of the registered depth image
            ratio, n = median_ratio(resize_nearest(crop_image(depth, *z1.shape), *z1.shape), z1, conf1)
            if n >= self.min_pixels:
                estimate = ScaleEstimate(ratio, "depth", n)
        if estimate is None and self.source == "depth":
            self.depth_misses += 1
        if estimate is None:
            estimate = self._chain(((stamp1, x1, conf1), (stamp2, x2, conf2)))
        self._remember(stamp1, x1 * np.float32(estimate.scale))
        if x2 is not None:
            self._remember(stamp2, x2 * np.float32(estimate.scale))
        self._last = estimate.scale
        return estimate

    def _chain(self, frames) -> ScaleEstimate:
        best = None
        for stamp, points, conf in frames:
            if points is None or _key(stamp) not in self._memory:
                continue
            ratio, n = shape_ratio(self._memory[_key(stamp)], points, conf)
            if n >= self.min_pixels and (best is None or n > best.n_pixels):
                best = ScaleEstimate(ratio, "chain", n, stamp)
        if best is not None:
            return best
        if self._last is None:
            return ScaleEstimate(self.initial_scale, "initial")
        self.chain_breaks += 1
        return ScaleEstimate(self._last, "hold")

    def _conf_mask(self, maps: dict, name: str, shape) -> np.ndarray | None:
        if self.conf_threshold <= 0 or name not in maps:
            return None
        conf = np.asarray(maps[name])
        if conf.shape != shape:
            raise ValueError(f"scale: {name} has shape {conf.shape}, expected {shape}")
        return conf >= self.conf_threshold

    def _remember(self, stamp: float, points_metric: np.ndarray) -> None:
        self._memory[_key(stamp)] = points_metric
        self._memory.move_to_end(_key(stamp))
        while len(self._memory) > self.history:
            self._memory.popitem(last=False)


def scale_result(result, scale: float):
    """A copy of a ``DPMResult`` with every length multiplied by ``scale`` (metres per model unit): point maps (both
    passes), flows, the translation of ``T_c1_c2``, and each object's ``t``, ``centroid`` and ``extent``.
    Rotations, confidences, masks, labels, K and dt are unchanged."""
    import dataclasses

    from dpm_ros import ALL_POINT_MAP_NAMES

    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale}")
    s = np.float32(scale)
    maps = {k: (v * s if k in ALL_POINT_MAP_NAMES else v) for k, v in result.maps.items()}
    T = np.array(result.T_c1_c2, dtype=np.float64, copy=True)
    T[:3, 3] *= scale
    objects = [dataclasses.replace(o, t=np.asarray(o.t) * scale, centroid=np.asarray(o.centroid) * scale,
                                   extent=np.asarray(o.extent) * scale) for o in result.objects]
    flows = {k: v * s for k, v in result.flows.items()}
    return dataclasses.replace(result, maps=maps, T_c1_c2=T, objects=objects, flows=flows)
