"""One frame pair → one typed result: pipeline → metric scale → odometry → object tracking (no ROS inside). The
live node (its worker thread) and ``dpm replay`` run this very code; ``dpm_ros.ros.outputs.step_messages`` turns its
``PairResult`` into the messages, so both publish/write the same bytes by construction.

Side inputs the step keeps: camera calibrations (K by stamp, or the latest), metric depth images (``depth_topic``,
matched to I1 by stamp, metres) and the base → camera extrinsic (a lookup callable).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from dpm_ros.config import Config
from dpm_ros.geometry.motion import object_velocities
from dpm_ros.stream.odometry import EgoOdometry, OdometryState
from dpm_ros.stream.pairing import FramePair, StampedFrame
from dpm_ros.stream.scale import ScaleEstimate, ScaleEstimator, scale_result
from dpm_ros.stream.tracking import Detection, ObjectTracker

METRIC_SOURCES = ("fixed", "depth")   # scale sources whose output is metres; "chain" is metric only with `metric`
STAMP_TOL = 1e-6                       # seconds: "same stamp"


def frame_sizes(engine, info=None) -> tuple:
    """(engine_hw, out_hw) for ``image_convert.prepare_pixels``: the resolution the engine resizes its inputs to
    (None when it takes frames as they are, e.g. the oracle) and its output grid, (height, width) pixels."""
    info = info or engine.info()
    out_hw = (int(info.height), int(info.width))
    return (out_hw if getattr(engine, "resizes_input", False) else None), out_hw


def ensure_prepared(frame, prepare: Callable) -> bool:
    """Make a frame whose downscale was deferred (``frame.source`` set, ``image`` None) ready: engine input and
    cloud colours by ``prepare(pixels, encoding)``, the source pixels released. True when it had to."""
    if frame.image is not None:
        return False
    frame.image, frame.colours = prepare(*frame.source)
    frame.source = None
    return True


class StampedBuffer:
    """Recent items by stamp (metric depth images, CameraInfo K); ``get`` waits (bounded) for one that has not arrived
    yet: side topics and the image travel separately and may come late under load. Thread-safe."""

    def __init__(self, size: int = 64):
        self._items: OrderedDict[int, object] = OrderedDict()
        self._size = int(size)
        self._cond = threading.Condition()

    def add(self, stamp: float, item) -> None:
        with self._cond:
            self._items[int(round(stamp * 1e9))] = item
            while len(self._items) > self._size:
                self._items.popitem(last=False)
            self._cond.notify_all()

    def latest(self):
        """The item added last, or None."""
        with self._cond:
            return next(reversed(self._items.values()), None)

    def get(self, stamp: float, timeout: float = 0.0):
        """The item stamped ``stamp`` (±1 µs), waiting up to ``timeout`` seconds for it; None if absent."""
        key = int(round(stamp * 1e9))
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hit = next((v for k, v in reversed(self._items.items()) if abs(k - key) <= 1000), None)
                left = deadline - time.monotonic()
                if hit is not None or left <= 0:
                    return hit
                self._cond.wait(left)


@dataclass
class PairResult:
    """What one pair produced (no message): ``result`` the pipeline's ``DPMResult`` scaled to metres (model units for
    scale_source none); ``frame`` I1 (stamp in s and integer ns, engine input, colours, camera size); ``frame_id``
    camera 1's optical frame (``camera_frame`` or I1's own); ``metric`` whether positions are metres;
    ``odometry`` the pose and twist at t1, None while the base → camera extrinsic is awaited; ``child_frame`` the
    odometry's child frame; ``ids`` stable object ids and ``velocities`` (linear, angular) per object, per second in
    camera 1's frame, both in ``result.objects`` order; ``scale`` metres per model unit and its ``scale_source``;
    ``inference_ms`` pipeline time; ``stages`` ms per stage (see ``PairProcessor.process``)."""
    result: Any
    frame: StampedFrame
    frame_id: str
    odometry: Optional[OdometryState]
    child_frame: str
    ids: list
    velocities: list
    scale: float
    scale_source: str
    inference_ms: float
    metric: bool
    timings: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)


MIN_FOCAL_FRACTION, MAX_FOCAL_FACTOR, PRINCIPAL_MARGIN = 0.05, 50.0, 0.25


@dataclass(frozen=True)
class Calibration:
    """A camera calibration (a CameraInfo's numbers): ``stamp`` seconds, ``k`` the 9 values of K (row-major,
    pixels), ``d`` distortion coefficients, ``height``/``width`` the image it belongs to (pixels)."""
    stamp: float
    k: Any
    d: Any
    height: int
    width: int
    distortion_model: str = ""


def camera_info_problem(cal: Calibration) -> Optional[str]:
    """Why a calibration cannot be used, or None. Checks: image size > 0; K finite with last row (0, 0, 1); fx, fy
    in [MIN_FOCAL_FRACTION, MAX_FOCAL_FACTOR] × the larger image side (pixels: 0.05× is beyond any fisheye, 50× a
    long telephoto); principal point within PRINCIPAL_MARGIN of the image (cx in [−0.25 W, 1.25 W]); D finite."""
    try:
        K = np.asarray(cal.k, float).reshape(3, 3)
        D = np.asarray(cal.d, float)
    except (TypeError, ValueError) as exc:
        return f"K or D unreadable ({exc})"
    W, H = int(cal.width), int(cal.height)
    if W <= 0 or H <= 0:
        return f"image size {W}×{H} (width and height must be > 0)"
    if not np.isfinite(K).all():
        return f"K has non-finite values ({K.ravel().tolist()})"
    if not np.allclose(K[2], (0.0, 0.0, 1.0), atol=1e-6) or K[1, 0] != 0:
        return f"K's last row is {K[2].tolist()} and K[1][0] = {K[1, 0]} (a pinhole K has [0, 0, 1] and 0)"
    side = max(W, H)
    lo, hi = MIN_FOCAL_FRACTION * side, MAX_FOCAL_FACTOR * side
    if not (lo <= K[0, 0] <= hi and lo <= K[1, 1] <= hi):
        return (f"focal length fx {K[0, 0]:.6g}, fy {K[1, 1]:.6g} px is outside [{lo:.6g}, {hi:.6g}] px for a "
                f"{W}×{H} image")
    m = PRINCIPAL_MARGIN
    if not (-m * W <= K[0, 2] <= (1 + m) * W and -m * H <= K[1, 2] <= (1 + m) * H):
        return f"principal point ({K[0, 2]:.6g}, {K[1, 2]:.6g}) px is far outside the {W}×{H} image"
    if not np.isfinite(D).all():
        return f"distortion D has non-finite values ({D.tolist()})"
    return None


class PairProcessor:
    """The node's per-pair work. ``config``: the node's ``dpm_ros.config.Config`` (a runtime change comes by
    ``set_config`` and takes effect at the next pair); ``engine``: an Engine; ``extrinsic_lookup(camera_frame)``:
    4×4 pose of the camera optical frame in ``base_frame`` or None (used only when ``base_frame`` is set);
    ``notify(level, kind, text)``: level "info" or "warn" (the caller throttles and counts); ``prepare(pixels,
    encoding)`` → (engine input, cloud colours): how frames whose downscale the node deferred are made ready
    (``image_convert.prepare_pixels``)."""

    def __init__(self, config: Config, engine, extrinsic_lookup: Callable[[str], Optional[np.ndarray]] | None = None,
                 notify: Callable[[str, str, str], None] | None = None, prepare: Callable | None = None):
        from dpm_ros.pipeline import DPMPipeline, Frame  # torch and geometry: imported when the node starts

        self.config = config
        self._pending: Optional[Config] = None      # set_config's, applied by the worker before its next pair
        self._Frame, self._DPMPipeline = Frame, DPMPipeline
        self.engine = engine
        self._prepare = prepare   # (pixels, encoding) → (engine input, colours), for frames the node deferred
        self.pipeline = DPMPipeline(engine, config)
        self.tracker = ObjectTracker(config.track_gate_abs, config.track_gate_rel, config.track_max_age)
        self.odometry = EgoOdometry()
        self.scale = ScaleEstimator(config.scale_source, fixed_scale=config.fixed_scale,
                                    initial_scale=config.fixed_scale)
        self.metric = config.metric or config.scale_source in METRIC_SOURCES
        self.depth = StampedBuffer()
        self.extrinsic_ok = not config.base_frame
        self._extrinsic_lookup = extrinsic_lookup
        self._notify = notify or (lambda level, kind, text: None)
        self._camera_infos = StampedBuffer(200)   # stamp -> (K, height, width)
        self.camera_info_misses = 0
        self.camera_info_rejected = 0
        self.camera_info_problem = ""
        self.depth_errors = 0
        self.scale_resets = 0
        self._last_t1: Optional[float] = None
        self.last_scale: Optional[float] = None

    # --- side inputs (any thread) ---------------------------------------------------------------------------------

    def add_camera_info(self, cal: Calibration) -> bool:
        """Keep a calibration; False (ignored, counted in ``camera_info_rejected``, told once per kind) when it fails
        ``camera_info_problem``. Distortion is not applied (feed rectified images): non-zero D is told once."""
        problem = camera_info_problem(cal)
        if problem is not None:
            self.camera_info_rejected += 1
            self.camera_info_problem = problem
            self._notify("warn", "camera_info", f"ignored CameraInfo: {problem}; K is estimated from the point map "
                         "until a valid one arrives (counted in camera_info_rejected)")
            return False
        K = np.asarray(cal.k, float).reshape(3, 3)
        if np.any(np.asarray(cal.d, float) != 0):
            self._notify("warn", "distortion", f"CameraInfo has distortion ({cal.distortion_model}, D = "
                         f"{list(np.round(np.asarray(cal.d, float), 4))}) that dpm_node does not apply: feed "
                         "rectified images (image_rect from image_proc) or the geometry is biased")
        self._camera_infos.add(cal.stamp, (K, int(cal.height), int(cal.width)))
        return True

    def add_depth(self, stamp: float, read: Callable[[], np.ndarray]) -> None:
        """Keep I1's metric depth (for scale_source 'depth'): ``read()`` → float (H, W) metres, NaN where invalid
        (``image_convert.depth_to_metres``); an ImageFormatError it raises is counted (``scale_depth_errors``) and
        passed on."""
        try:
            depth = read()
        except ValueError:
            self.depth_errors += 1
            raise
        self.depth.add(stamp, depth)

    def set_config(self, config: Config) -> None:
        """A runtime change (only ``runtime`` parameters differ): the pipeline is rebuilt and the tracker retuned
        from it before the next pair."""
        self._pending = config

    def counters(self) -> dict:
        """Numbers for /diagnostics."""
        return dict(odometry_approximate_chains=self.odometry.approximate_chains,
                    odometry_resets=self.odometry.resets, camera_info_misses=self.camera_info_misses,
                    camera_info_rejected=self.camera_info_rejected,
                    waiting_for_extrinsic=not self.extrinsic_ok, scale_source=self.config.scale_source,
                    scale_last=float(self.last_scale) if self.last_scale is not None else float("nan"),
                    scale_chain_breaks=self.scale.chain_breaks, scale_depth_misses=self.scale.depth_misses,
                    scale_depth_errors=self.depth_errors, scale_resets=self.scale_resets)

    # --- the step (one thread) ------------------------------------------------------------------------------------

    def camera_k(self, frame, wait: float = 0.0) -> Optional[np.ndarray]:
        """K (pixels) at the frame's resolution from CameraInfo (exact stamp, waiting up to ``wait`` seconds for it,
        or the latest), or None (estimate)."""
        if not self.config.use_camera_info:
            return None
        if self.config.camera_info_sync == "latest":
            match = self._camera_infos.latest()
        else:  # wait only on a camera that publishes CameraInfo at all (it is optional)
            match = self._camera_infos.get(frame.stamp, wait if self._camera_infos.latest() is not None else 0.0)
        if match is None:
            self.camera_info_misses += 1
            self._notify("warn", "camera_info_miss", f"no CameraInfo with stamp {frame.stamp:.6f} s "
                         f"(camera_info_sync {self.config.camera_info_sync}): K estimated from the point map")
            return None
        K, h, w = match
        H, W = frame.hw   # camera size (image may be downscaled)
        if h and w and (h, w) != (H, W):
            K = np.diag([W / w, H / h, 1.0]) @ K
        return K

    def process(self, pair: FramePair, depth_wait: float = 0.0, camera_info_wait: float = 0.0) -> PairResult:
        """Run one pair (I1 = ``pair.newest``). ``depth_wait`` / ``camera_info_wait``: seconds to wait for I1's
        depth image / CameraInfo when they come late (live node; a bag replay has them in order).
        ``PairResult.stages``: ms per stage ("convert_resize_late" when a frame's downscale was deferred to here,
        "wait" for I1's CameraInfo, "inference", "geometry", "scale", "odometry_tracking")."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self.config = pending
            self.pipeline = self._DPMPipeline(self.engine, pending)
            self.tracker.gate_abs, self.tracker.gate_rel = pending.track_gate_abs, pending.track_gate_rel
            self.tracker.max_age = pending.track_max_age
        new, old = pair.newest, pair.older
        t_prep = time.perf_counter()
        late = sum(ensure_prepared(f, self._prepare) for f in (new, old))   # frames the node left to this worker
        t_wait = time.perf_counter()
        # eps_abs: metres → this pair's model units, with the best factor known before inference
        eps_abs = self.config.eps_abs / self._scale_guess() if self.config.eps_abs > 0 else None
        f1 = self._Frame(image=new.image, stamp=new.stamp, K=self.camera_k(new, camera_info_wait), size=new.size)
        f2 = self._Frame(image=old.image, stamp=old.stamp, K=self.camera_k(old), size=old.size)
        t0 = time.perf_counter()
        result = self.pipeline.process(f1, f2, eps_abs)
        t1 = time.perf_counter()
        inference_ms = 1000.0 * (t1 - t0)
        result, estimate = self._metric(new.stamp, old.stamp, result, depth_wait)   # includes the depth wait
        t2 = time.perf_counter()

        camera_frame = self.config.camera_frame or new.frame_id
        state = self._update_odometry(camera_frame, new.stamp, old.stamp, np.asarray(result.T_c1_c2, float))
        velocities = [object_velocities(o, result.dt) for o in result.objects]
        ids = self._track(new.stamp, result, velocities, state.T_odom_camera)
        t3 = time.perf_counter()
        timings = dict(getattr(result, "timings", {}) or {})
        stages = {"wait": 1000.0 * (t0 - t_wait), "inference": timings.get("inference", inference_ms),
                  "geometry": timings.get("geometry", 0.0), "scale": 1000.0 * (t2 - t1),
                  "odometry_tracking": 1000.0 * (t3 - t2)}
        if late:
            stages["convert_resize_late"] = 1000.0 * (t_wait - t_prep)
        return PairResult(result, new, camera_frame, state if self.extrinsic_ok else None,
                          self.config.base_frame or camera_frame, ids, velocities, estimate.scale, estimate.source,
                          inference_ms, self.metric, timings, stages)

    def _scale_guess(self) -> float:
        """Metres per model unit before the pair is seen: the fixed factor, else the previous pair's (or the chain's
        initial factor); 1 for 'none'."""
        if self.scale.source == "none":
            return 1.0
        if self.scale.source == "fixed" or self.scale.last_scale is None:
            return self.scale.fixed_scale if self.scale.source == "fixed" else self.scale.initial_scale
        return self.scale.last_scale

    def _metric(self, t1: float, t2: float, result, depth_wait: float) -> tuple[Any, ScaleEstimate]:
        """The pair scaled to metres (or kept in model units for 'none'); resets the chain when stamps go back."""
        if self._last_t1 is not None and t1 < self._last_t1:
            self.scale.reset()
            self.scale_resets += 1
        self._last_t1 = t1
        depth1 = None
        if self.scale.source == "depth":
            depth1 = self.depth.get(t1, depth_wait)
        breaks, misses = self.scale.chain_breaks, self.scale.depth_misses
        estimate = self.scale.update(t1, t2, result.maps, result.T_c1_c2, depth1=depth1)
        if self.scale.depth_misses != misses:
            why = "no depth image with I1's stamp" if depth1 is None else "too few valid depth pixels"
            self._notify("warn", "scale_depth", f"scale: {why} on '{self.config.depth_topic}' at t = {t1:.6f} s; "
                                                f"scale from the chain ({estimate.source}, {estimate.scale:.4g})")
        elif self.scale.chain_breaks != breaks:
            self._notify("warn", "scale_chain", f"scale chain broken at t = {t1:.6f} s (the pair shares no frame "
                                                f"with earlier pairs): holding scale {estimate.scale:.4g}")
        self.last_scale = estimate.scale
        if estimate.source == "none" or estimate.scale == 1.0:
            return result, estimate
        return scale_result(result, estimate.scale), estimate

    def _update_odometry(self, camera_frame: str, t1: float, t2: float, T_c1_c2: np.ndarray):
        if not self.extrinsic_ok:
            lookup = self._extrinsic_lookup
            T = lookup(camera_frame) if lookup is not None else None
            if T is not None:
                self.odometry.set_extrinsic(T)
                self.extrinsic_ok = True
                self._notify("info", "extrinsic",
                             f"extrinsic {self.config.base_frame} → {camera_frame} from /tf_static")
            else:
                self._notify("warn", "extrinsic", f"waiting for /tf_static {self.config.base_frame} → {camera_frame}; "
                                                  "odometry and TF are not published until it arrives")
        return self.odometry.update(t1, t2, T_c1_c2)

    def _track(self, stamp: float, result, velocities: list, T_odom_camera: np.ndarray) -> list[int]:
        """Stable object ids: centroids and velocities moved into odom so camera motion does not break tracks."""
        R, t = T_odom_camera[:3, :3], T_odom_camera[:3, 3]
        dets = []
        for o, (lin, _) in zip(result.objects, velocities):
            c = np.asarray(o.centroid, float)
            dets.append(Detection(R @ c + t, R @ lin, np.asarray(o.extent, float)))
        return self.tracker.update(stamp, dets)
