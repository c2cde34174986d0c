"""A pair of frames in, a ``DPMResult`` out: engine inference, then the geometry of dpm_theory.md (intrinsics, motion
masks, ego-motion, objects, flow). ROS-free; the node, ``dpm replay`` and the demo call it.

Frames: image 1 is the newest (t1), image 2 the older one (t2); every output is in camera 1's optical frame (REP 103:
z forward, x right, y down) at the engine's output resolution, in model units (metres when the engine is metric).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from dpm_ros import SWAPPED_POINT_MAP_NAMES
from dpm_ros.config import Config
from dpm_ros.engine.base import Engine, check_image
from dpm_ros.engine.pair_io import crop_intrinsics
from dpm_ros.geometry import (ego_motion, estimate_focal, intrinsics, scene_flow,
                              to_matrix)
from dpm_ros.geometry.flow import flows_and_masks
from dpm_ros.geometry.objects import object_fits, object_pixels


@dataclass
class Frame:
    """One camera frame: ``image`` uint8 (H, W, 3) RGB, ``stamp`` seconds, ``K`` optional 3×3 intrinsics (pixels)
    at the camera's resolution (e.g. from CameraInfo). ``size``: the camera's (H, W) when ``image`` was already
    downscaled to the engine's input on arrival (the node does); None = ``image.shape[:2]``."""
    image: np.ndarray
    stamp: float
    K: np.ndarray | None = None
    size: tuple | None = None

    @property
    def hw(self) -> tuple:
        """(H, W) of the camera image, pixels."""
        return tuple(self.size) if self.size is not None else self.image.shape[:2]


@dataclass
class ObjectMotion:
    """One moving object of image 1: ``R``, ``t`` its rigid motion t1 → t2 in camera 1 (``x_t2 = R·x_t1 + t``);
    ``centroid`` (3,) and axis-aligned ``extent`` (3,) of its points at t1 in camera 1 (model units);
    ``confidence`` the mean map confidence of its pixels; ``n_points`` its pixel count; ``id`` its label in
    ``DPMResult.labels1``."""
    id: int
    R: np.ndarray
    t: np.ndarray
    centroid: np.ndarray
    extent: np.ndarray
    confidence: float
    n_points: int


@dataclass
class DPMResult:
    """Everything the pipeline derives from one pair (output resolution h × w).

    ``maps``: the engine outputs by name; ``K``: 3×3 intrinsics used (given K scaled to h × w, else from the
    estimate); ``focal``: the focal length estimated from P1(t1,π1) (pixels, reported even when K is given);
    ``motion_mask1/2``: bool (h, w) moving pixels of image 1/2; ``labels1``: uint16 (h, w) object ids (0 = static);
    ``objects``: list of ObjectMotion; ``T_c1_c2``: 4×4 camera 2 → camera 1; ``pass2_scale``: Sim(3) scale of pass
    1 over pass 2 (1.0 without a second pass); ``ego_method``: the form actually used; ``flows``: "object_forward",
    "object_backward" and, with a symmetric engine, "scene_forward", "scene_backward" (h, w, 3) displacements (divide
    by ``dt`` for velocities); ``dt = t2 − t1`` seconds (negative for an older image 2); ``timings``: ms per step
    ("intrinsics", "ego_motion", "flows_and_masks" (one pass: flows and both masks), "objects", "scene_flows" only
    when the ego-motion form is not pixel-aligned, "geometry" their total).
    """
    maps: dict
    K: np.ndarray
    focal: float
    motion_mask1: np.ndarray
    motion_mask2: np.ndarray
    labels1: np.ndarray
    objects: list
    T_c1_c2: np.ndarray
    pass2_scale: float
    ego_method: str
    flows: dict
    dt: float
    timings: dict = field(default_factory=dict)


class DPMPipeline:
    """``DPMPipeline(engine, config).process(frame1, frame2) -> DPMResult``.

    ``config``: a ``dpm_ros.config.Config`` (None = its defaults; valid by construction, see config/dpm.yaml), of
    which the pipeline reads ``eps_rel`` (motion threshold as a fraction of the point's distance), ``eps_abs``
    (absolute threshold, 0 = use eps_rel; model units here: the caller converts metres, see ``process``),
    ``conf_threshold`` (pixels whose confidence is lower are ignored by the geometry), ``min_object_pixels``,
    ``object_max_gap`` (3D split distance inside a moving component, fraction of the distance to the camera),
    ``ego_method`` ("pixel_aligned" | "matched" (alias "seed") | "pnp"; the first two need a symmetric engine and fall
    back to "pnp" without one) and ``use_learned_mask`` (threshold the engine's ``motion_prob_*`` at 0.5 when it has
    them). Not node parameters, the cost knobs ``ego_stride`` / ``focal_stride`` (pixel subsampling of the
    pixel-aligned fit and of the focal estimate) and ``object_fit_points`` (each object's motion is fitted on at most
    this many of its pixels, evenly spread; 0 = all): exact on consistent maps, a uniform subsample of the same
    least-squares problem otherwise; they keep the geometry within a few milliseconds at 512×384. Nothing of it
    changes after construction: a new configuration is a new pipeline.
    """

    def __init__(self, engine: Engine, config: Config | None = None, *, ego_stride: int = 4, focal_stride: int = 4,
                 object_fit_points: int = 4096):
        if config is not None and not isinstance(config, Config):
            raise TypeError(f"config must be a dpm_ros.config.Config, got {type(config).__name__}")
        if int(object_fit_points) < 0 or int(ego_stride) < 1 or int(focal_stride) < 1:
            raise ValueError("ego_stride/focal_stride must be >= 1 and object_fit_points >= 0")
        self.engine = engine
        self._config = config if config is not None else Config()
        self._ego_method = "matched" if self._config.ego_method == "seed" else self.config.ego_method
        self._ego_stride, self._focal_stride = int(ego_stride), int(focal_stride)
        self._object_fit_points = int(object_fit_points)

    @property
    def config(self) -> Config:
        """The configuration it was built with (read-only)."""
        return self._config

    @property
    def ego_stride(self) -> int:
        """Pixel stride of the pixel-aligned ego-motion fit (read-only)."""
        return self._ego_stride

    # --- steps -------------------------------------------------------------------------------------------------
    def _apply_conf_threshold(self, maps: dict) -> dict:
        """Copy of ``maps`` with pixels below ``conf_threshold`` set to NaN (their confidence kept)."""
        out = dict(maps)
        for name in list(maps):
            if name.startswith("p") and "conf_" + name in maps:
                low = np.asarray(maps["conf_" + name]) < self.config.conf_threshold
                if low.any():
                    out[name] = np.where(low[..., None], np.float32(np.nan), maps[name]).astype(np.float32)
        return out

    def _intrinsics(self, maps: dict, frame1: Frame) -> tuple[np.ndarray, float]:
        p = maps["p1_t1_pi1"]
        h, w = p.shape[:2]
        K = None
        if frame1.K is not None:
            K = crop_intrinsics(frame1.K, frame1.hw, (h, w))   # the engine centre-crops, then resizes
        pp = None if K is None else (K[0, 2], K[1, 2])
        focal = estimate_focal(p, maps.get("conf_p1_t1_pi1"), principal_point=pp,
                               stride=min(self._focal_stride, max(1, min(h, w) // 8)))
        return (intrinsics(focal, h, w) if K is None else K), focal

    def _learned(self, maps: dict, mask: np.ndarray, prob: str) -> np.ndarray:
        """The learned motion mask ``prob > 0.5`` when asked and present, else ``mask`` (``‖flow‖ > ε``)."""
        if self.config.use_learned_mask and prob in maps:
            return np.asarray(maps[prob]) > 0.5
        return mask

    def _objects(self, maps: dict, mask1: np.ndarray, sq_norms: np.ndarray | None = None) -> tuple[np.ndarray, list]:
        """Objects of image 1: split the motion mask, then object_motion (confidence-weighted SE(3) Umeyama of
        P1(t1,π1) → P1(t2,π1)) per label on its gathered pixels. ``sq_norms``: ‖P1(t1,π1)‖² (H, W) when at hand."""
        # split_objects + each label's pixels; uint16 output: at most the 65535 largest objects
        labels, groups = object_pixels(mask1, maps["p1_t1_pi1"], min_size=self.config.min_object_pixels,
                                       max_gap=self.config.object_max_gap,
                                       max_objects=65535, dtype=np.uint16, sq_norms=sq_norms)
        n = len(groups)
        if n == 0:
            return labels, []
        # All objects' fits (on at most object_fit_points pixels each) and statistics in one batched pass.
        f = object_fits(maps["p1_t1_pi1"], maps["p1_t2_pi1"], groups[:n], maps.get("conf_p1_t1_pi1"),
                        self._object_fit_points)
        objects = [ObjectMotion(id=int(k) + 1, R=f["R"][k], t=f["t"][k], centroid=f["centroid"][k],
                                extent=f["extent"][k], confidence=float(f["confidence"][k]), n_points=len(groups[k]))
                   for k in np.flatnonzero(f["ok"])]
        dropped = (np.flatnonzero(~f["ok"]) + 1).tolist()   # undetermined fits (e.g. collinear): not reported
        if dropped:
            labels[np.isin(labels, dropped)] = 0
        return labels, objects

    # --- the pair ----------------------------------------------------------------------------------------------
    def process(self, frame1: Frame, frame2: Frame, eps_abs: float | None = None) -> DPMResult:
        """Run the engine on (image 1 at t1, image 2 at t2) and derive everything (see DPMResult). ``eps_abs``: this
        pair's absolute motion threshold in model units (the node converts its metres with the pair's expected
        scale), > 0; None = the config's ``eps_abs``."""
        check_image(frame1.image, "frame1.image")
        check_image(frame2.image, "frame2.image")
        t0 = time.perf_counter()
        maps = self.engine.infer(frame1.image, frame2.image)
        inference_ms = 1000.0 * (time.perf_counter() - t0)
        result = self.derive(maps, frame1, frame2, eps_abs)
        result.timings = {"inference": inference_ms, **result.timings,
                          "total": inference_ms + result.timings["geometry"]}
        return result

    def derive(self, maps: dict, frame1: Frame, frame2: Frame, eps_abs: float | None = None) -> DPMResult:
        """Everything after inference, from engine outputs ``maps`` (names of ``engine/base.py``); the frames give
        the stamps, image 1's size and its optional K; ``eps_abs`` as in ``process``."""
        if eps_abs is not None and not (np.isfinite(eps_abs) and eps_abs > 0):
            raise ValueError(f"eps_abs must be a distance > 0 (or None for the config's), got {eps_abs}")
        timings: dict[str, float] = {}
        t0 = tick = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal tick
            now = time.perf_counter()
            timings[name] = 1000.0 * (now - tick)
            tick = now

        if "p1_t1_pi1" not in maps:
            raise ValueError(f"engine outputs lack 'p1_t1_pi1' (have: {', '.join(sorted(maps))})")
        if self.config.conf_threshold > 0:
            maps = self._apply_conf_threshold(maps)
        eps_abs = eps_abs if eps_abs is not None else (self.config.eps_abs or None)   # 0: eps_rel
        K, focal = self._intrinsics(maps, frame1)
        lap("intrinsics")
        symmetric = all(n in maps for n in SWAPPED_POINT_MAP_NAMES)
        method = self._ego_method if symmetric else "pnp"
        s = None
        if method == "pixel_aligned":                  # needs no mask: first, so that its s scales the scene flows
            rot, t, s = ego_motion(maps, method, stride=self._ego_stride)
            lap("ego_motion")
        # Object flows, M1 = M(P1(t1,π1), P1(t2,π1)) and M2 = M(P2(t1,π1), P2(t2,π1)) thresholded on their norms,
        # the scene flows (when s is known) and ‖P1(t1,π1)‖² for the object split: one blocked pass over the maps.
        flows, mask1, mask2, r2 = flows_and_masks(maps, self.config.eps_rel, eps_abs, pass2_scale=s)
        mask1 = self._learned(maps, mask1, "motion_prob_1")
        mask2 = self._learned(maps, mask2, "motion_prob_2")
        lap("flows_and_masks")
        if method == "matched":
            rot, t, s = ego_motion(maps, method, dynamic2=mask2)
            lap("ego_motion")
        elif method == "pnp":
            rot, t, s = ego_motion(maps, "pnp", K=K)
            lap("ego_motion")
        labels1, objects = self._objects(maps, mask1, r2)
        lap("objects")
        if symmetric and "scene_forward" not in flows:
            flows.update({f"scene_{k}": v for k, v in scene_flow(maps, pass2_scale=s).items()})
            lap("scene_flows")
        timings["geometry"] = 1000.0 * (time.perf_counter() - t0)
        return DPMResult(maps=maps, K=K, focal=focal, motion_mask1=mask1, motion_mask2=mask2, labels1=labels1,
                         objects=objects, T_c1_c2=to_matrix(rot, t), pass2_scale=float(s), ego_method=method,
                         flows=flows, dt=float(frame2.stamp) - float(frame1.stamp), timings=timings)
