"""Ground-truth DPM pairs and continuous sequences from synthetic scenes.

``make_pair`` renders one random scene at t1 and t2; ``SyntheticSequence`` renders frames of one continuous scene
(smooth camera and object motion) and builds the same pair dict for any two of its frames.

Conventions: pixel (u, v) = column u, row v; integer coordinates are pixel centres, so pixel (u, v) sees the ray
``K^-1 (u, v, 1)`` and a centred camera has cx = (W-1)/2, cy = (H-1)/2. Point maps are (H, W, 3) float32 in the
optical frame (z forward, x right, y down) of the named camera, metres; NaN where ``valid`` is False (a pixel that
sees no surface, e.g. open sky). ``P_i(t_j, π_k)``: the surface point seen by pixel i at time t_i, moved by its
object's rigid motion to t_j (static points unchanged), expressed in camera k's frame.
"""
from __future__ import annotations

import numpy as np

from dpm_ros.se3 import invert_se3

from .. import ALL_POINT_MAP_NAMES
from .render import render
from .scene import Scene, SceneConfig, random_scene


def _transform(T: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 4×4 transform to (..., 3) points."""
    return pts @ T[:3, :3].T + T[:3, 3]


def pair_from_renders(scene: Scene, K: np.ndarray, t1: float, t2: float, T_w_c1: np.ndarray, T_w_c2: np.ndarray,
                      r1: dict, r2: dict) -> dict:
    """The make_pair dict from two renders (``render`` outputs) of ``scene`` at t1 and t2."""
    fwd = {k: scene.object_motion(k, t1, t2) for k in scene.labels}     # world frame, t1 -> t2
    out: dict = {}
    for i, o, r, T_w_ci, T_w_co in ((1, 2, r1, T_w_c1, T_w_c2), (2, 1, r2, T_w_c2, T_w_c1)):
        pts = r["points"].astype(np.float64)             # camera i, time t_i
        moved = pts.copy()                               # camera i, the other time
        T_ci_w = invert_se3(T_w_ci)
        for k, M in fwd.items():
            sel = r["labels"] == k
            if sel.any():
                M_i = T_ci_w @ (M if i == 1 else invert_se3(M)) @ T_w_ci
                moved[sel] = _transform(M_i, pts[sel])
        T_co_ci = invert_se3(T_w_co) @ T_w_ci
        out[f"p{i}_t{i}_pi{i}"] = pts                    # exact copy of the render: projects onto its pixel
        out[f"p{i}_t{o}_pi{i}"] = moved
        out[f"p{i}_t{i}_pi{o}"] = _transform(T_co_ci, pts)
        out[f"p{i}_t{o}_pi{o}"] = _transform(T_co_ci, moved)
    result = {name: out[name].astype(np.float32) for name in ALL_POINT_MAP_NAMES}
    valid1, valid2 = r1["labels"] >= 0, r2["labels"] >= 0
    result.update(
        img1=r1["rgb"].copy(), img2=r2["rgb"].copy(), K=K.copy(), T_w_c1=T_w_c1.copy(), T_w_c2=T_w_c2.copy(),
        instances1=np.maximum(r1["labels"], 0).astype(np.int32),
        instances2=np.maximum(r2["labels"], 0).astype(np.int32),
        object_motions=fwd, valid1=valid1, valid2=valid2, t1=float(t1), t2=float(t2),
        depth1=np.where(valid1, r1["points"][..., 2], np.nan).astype(np.float32),
        depth2=np.where(valid2, r2["points"][..., 2], np.nan).astype(np.float32),
    )
    result["moving1"] = result["instances1"] > 0
    result["moving2"] = result["instances2"] > 0
    return result


def make_pair(seed: int, height: int = 64, width: int = 64, n_objects: int = 4, *, kind: str | None = None,
              time_gap: float = 0.1, config: SceneConfig | None = None, renderer: str = "auto",
              min_moving_share: float = 0.0, max_attempts: int = 8, **knobs) -> dict:
    """One random dynamic scene seen at t1 = 0 and t2 = ``time_gap`` (seconds), with ground truth.

    Args: ``seed`` (deterministic output per seed), image size in pixels, ``n_objects`` rigid objects,
    ``kind`` "dynamic" | "static" (nothing but the camera moves: P(t2) = P(t1); default: the config's, i.e.
    "dynamic"), ``time_gap`` = t2 - t1 (s, may be negative), ``config`` a SceneConfig and/or its fields as keyword
    ``knobs`` (e.g. ``object_translation=(0.2, 0.5)``, ``object_rotation_deg``, ``object_radius``,
    ``camera_translation``, ``camera_rotation_deg``, ``moving_prob``: per-pair motion magnitudes), ``renderer``
    "auto" (OpenGL/EGL, else numpy) | "gl" | "numpy". ``min_moving_share``: redraw the scene (deterministically,
    up to ``max_attempts`` scenes) until at least this fraction of image 1's pixels sees moving objects; the scene
    with the largest share is kept if none reaches it ("dynamic" kind only).

    Returns a dict: the eight point maps by name ((H, W, 3) float32, metres, optical frame of the named camera, NaN
    where invalid); ``img1``, ``img2`` (H, W, 3) uint8 RGB; ``K`` (3×3, both frames); ``T_w_c1``, ``T_w_c2`` (4×4
    camera-to-world); ``instances1``, ``instances2`` (H, W) int32 (0 = static, k = moving object k);
    ``object_motions`` {k: 4×4 world-frame rigid motion t1 -> t2} for the moving objects; ``valid1``, ``valid2``,
    ``moving1``, ``moving2`` (H, W) bool; ``depth1``, ``depth2`` (H, W) float32 z (m, NaN invalid); ``t1``, ``t2``
    (s); ``seed``; ``kind``; ``family``; ``attempt`` (which redraw was kept; 0 = the seed's first scene).
    """
    if height < 2 or width < 2:
        raise ValueError(f"image size must be at least 2×2 pixels, got {height}×{width}")
    if not 0.0 <= min_moving_share <= 1.0 or max_attempts < 1:
        raise ValueError(f"need 0 <= min_moving_share <= 1 and max_attempts >= 1, got {min_moving_share}, "
                         f"{max_attempts}")
    if kind is not None:
        knobs["kind"] = kind
    config = (config or SceneConfig()).replace(**knobs)
    t1, t2 = 0.0, float(time_gap)
    attempts = max_attempts if min_moving_share > 0 and config.kind == "dynamic" else 1
    best = None
    for attempt in range(attempts):
        scene = random_scene(seed if attempt == 0 else (seed, attempt), n_objects, config, style="pair",
                             time_gap=time_gap)
        K = scene.intrinsics(height, width)
        T1 = scene.camera.pose(t1)
        r1 = render(scene, t1, T1, K, height, width, renderer)
        share = float((r1["labels"] > 0).mean())
        if best is None or share > best[0]:
            best = (share, attempt, scene, K, T1, r1)
        if share >= min_moving_share:
            break
    _, attempt, scene, K, T1, r1 = best
    T2 = scene.camera.pose(t2)
    r2 = render(scene, t2, T2, K, height, width, renderer)
    out = pair_from_renders(scene, K, t1, t2, T1, T2, r1, r2)
    out.update(seed=int(seed), kind=config.kind, family=config.family, attempt=attempt)
    return out


class SyntheticSequence:
    """Frames of one continuous synthetic scene: camera orbits the centre, objects oscillate and spin smoothly.

    Frame i has stamp ``t0 + i / fps`` seconds. Motion knobs of ``config`` / ``knobs`` are rates here:
    ``object_translation`` m/s (peak), ``object_rotation_deg`` deg/s, ``camera_translation`` m/s,
    ``camera_rotation_deg`` deg/s. Deterministic in all constructor arguments (``params()`` returns them as JSON-able
    data; ``SyntheticSequence(**params)`` regenerates the same sequence).
    """

    def __init__(self, seed: int = 0, n_frames: int = 30, fps: float = 10.0, height: int = 128, width: int = 128,
                 n_objects: int = 4, *, kind: str | None = None, t0: float = 1.0, renderer: str = "auto",
                 config: SceneConfig | dict | None = None, **knobs):
        if n_frames < 1 or fps <= 0:
            raise ValueError(f"need n_frames >= 1 and fps > 0, got n_frames={n_frames}, fps={fps}")
        if height < 2 or width < 2:
            raise ValueError(f"image size must be at least 2×2 pixels, got {height}×{width}")
        if isinstance(config, dict):
            config = SceneConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
        defaults = dict(object_translation=(0.2, 0.6), object_rotation_deg=(10.0, 60.0),
                        camera_translation=(0.3, 0.8), camera_rotation_deg=(0.0, 5.0))
        base = config or SceneConfig(**defaults)
        if kind is not None:
            knobs["kind"] = kind
        self.config = base.replace(**knobs)
        self.seed, self.n_frames, self.fps = int(seed), int(n_frames), float(fps)
        self.height, self.width, self.n_objects, self.t0 = int(height), int(width), int(n_objects), float(t0)
        self.renderer = renderer
        self.scene = random_scene(self.seed, self.n_objects, self.config, style="sequence")
        self.K = self.scene.intrinsics(self.height, self.width)
        self._cache: dict[int, dict] = {}

    def params(self) -> dict:
        """Constructor arguments as plain JSON-able data (regenerates this exact sequence)."""
        return dict(seed=self.seed, n_frames=self.n_frames, fps=self.fps, height=self.height, width=self.width,
                    n_objects=self.n_objects, t0=self.t0, config=self.config.to_dict())

    def __len__(self) -> int:
        return self.n_frames

    def stamp(self, i: int) -> float:
        """Time of frame i in seconds."""
        self._check(i)
        return self.t0 + i / self.fps

    def _check(self, i: int) -> None:
        if not 0 <= i < self.n_frames:
            raise ValueError(f"frame index {i} out of range 0..{self.n_frames - 1}")

    def _render(self, i: int) -> dict:
        """Render of frame i (cached; callers must not modify it in place)."""
        r = self._cache.get(i)
        if r is None:
            if len(self._cache) > 64:
                self._cache.clear()
            t = self.stamp(i) - self.t0
            T = self.scene.camera.pose(t)
            r = dict(render(self.scene, t, T, self.K, self.height, self.width, self.renderer), T_w_c=T)
            self._cache[i] = r
        return r

    def object_poses(self, i: int) -> dict[int, np.ndarray]:
        """{k: 4×4 local-to-world pose of moving object k} at frame i (its motion between frames i and j is
        ``pose_j @ inv(pose_i)``, world frame)."""
        t = self.stamp(i) - self.t0
        return {p.label: p.pose(t) for p in self.scene.primitives if p.label > 0}

    def frame(self, i: int) -> dict:
        """Frame i: ``image`` (H, W, 3) uint8 RGB, ``stamp`` (s), ``K`` (3×3), ``T_w_c`` (4×4 camera-to-world),
        ``depth`` (H, W) float32 z in metres (NaN where no surface), ``instances`` (H, W) int32 (0 = static)."""
        r = self._render(i)
        valid = r["labels"] >= 0
        return dict(image=r["rgb"].copy(), stamp=self.stamp(i), K=self.K.copy(), T_w_c=r["T_w_c"].copy(),
                    depth=np.where(valid, r["points"][..., 2], np.nan).astype(np.float32),
                    instances=np.maximum(r["labels"], 0).astype(np.int32), valid=valid)

    def pair(self, i: int, j: int) -> dict:
        """The make_pair dict for image 1 = frame i (t1) and image 2 = frame j (t2)."""
        self._check(i)
        self._check(j)
        r1, r2 = self._render(i), self._render(j)
        out = pair_from_renders(self.scene, self.K, self.stamp(i) - self.t0, self.stamp(j) - self.t0,
                                r1["T_w_c"], r2["T_w_c"], r1, r2)
        out.update(t1=self.stamp(i), t2=self.stamp(j), seed=self.seed, kind=self.config.kind)
        return out
