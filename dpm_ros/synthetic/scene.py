"""Procedural dynamic scenes, two families. ``room``: a textured room (floor, walls, ceiling), static clutter and rigid
objects (boxes, ellipsoids, cylinders) that translate and rotate over time, seen by a moving pinhole camera under random
lighting. ``flying``: random textured primitives at random depths and orientations in front of the camera inside a
randomly rotated, randomly sized textured box (the background), so no floor, horizon or "lower rows are nearer" holds
and only two-view matching explains the depth (the FlyingChairs / FlyingThings3D idea).

A scene is pure description: primitives in their own local frames, poses as functions of time, texture and light
parameters. ``raycast.py`` and ``gl.py`` render it; ``pairs.py`` turns renders into the eight ground-truth point maps.
World frame: z up, metres; the floor is the plane z = 0 inside the room box. Cameras use the optical convention
(z forward, x right, y down). Time in seconds.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from dpm_ros.se3 import invert_se3

ROOM, BOX, ELLIPSOID, CYLINDER = 0, 1, 2, 3
N_WAVES = 4
FAMILIES = ("room", "flying")

CAMERA_MODES = {
    # mode: (translation range m, rotation range deg, translation axis in the camera frame or None = random,
    #        rotation axis or None = random) over one pair (t1 -> t2)
    "forward": ((0.05, 0.5), (0.0, 2.0), (0.0, 0.0, 1.0), None),
    "turning": ((0.0, 0.1), (2.0, 10.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0)),
    "sideways": ((0.05, 0.4), (0.0, 2.0), (1.0, 0.0, 0.0), None),
    "shaking": ((0.0, 0.05), (0.5, 4.0), None, None),
}
"""Per-pair camera motion of ``camera_motion="modes"`` (a pair spans ~0.1–0.3 s of a robot or hand-held camera)."""


def rotvec_to_matrix(rv: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation vector (axis·angle, radians) -> 3×3 rotation matrix."""
    rv = np.asarray(rv, dtype=np.float64)
    angle = float(np.linalg.norm(rv))
    if angle < 1e-15:
        return np.eye(3)
    k = rv / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * (kx @ kx)


def make_pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def look_at(position: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """4×4 camera-to-world pose of an optical camera (z forward, x right, y down) at ``position`` looking at
    ``target`` (world, z up), rolled by ``roll`` radians about its optical axis."""
    z = np.asarray(target, float) - np.asarray(position, float)
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    if np.linalg.norm(x) < 1e-6:  # looking straight up/down: any right vector
        x = np.cross(z, [1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c, s = np.cos(roll), np.sin(roll)
    x, y = c * x + s * y, -s * x + c * y
    return make_pose(np.stack([x, y, z], axis=1), position)


@dataclass
class Trajectory:
    """A smooth path in world coordinates: ``p(t) = c + v·t + amp ⊙ sin(freq ⊙ t + phase)`` (metres, seconds)."""
    c: np.ndarray
    v: np.ndarray = field(default_factory=lambda: np.zeros(3))
    amp: np.ndarray = field(default_factory=lambda: np.zeros(3))
    freq: np.ndarray = field(default_factory=lambda: np.zeros(3))
    phase: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def at(self, t: float) -> np.ndarray:
        return self.c + self.v * t + self.amp * np.sin(self.freq * t + self.phase)


@dataclass
class Primitive:
    """One surface. ``kind``: ROOM (seen from inside), BOX (half-extents ``size``), ELLIPSOID (radii ``size``),
    CYLINDER (capped, axis = local z; ``size`` = x radius, y radius, half-height).
    Pose at time t: ``R(t) = exp([omega]·t) R0``, centre ``path.at(t)``. ``label``: instance id written into the
    instance maps (0 = static, k > 0 = moving object k)."""
    kind: int
    size: np.ndarray
    path: Trajectory
    R0: np.ndarray
    omega: np.ndarray           # angular velocity (rad/s, world frame)
    label: int
    color_a: np.ndarray         # albedo endpoints, RGB in [0, 1]
    color_b: np.ndarray
    checker_scale: float        # checker cells per metre
    checker_weight: float       # 0..1
    waves: np.ndarray           # (N_WAVES, 4): wave vector (rad/m, local frame) and phase
    wave_amps: np.ndarray       # (N_WAVES,)
    open_top: bool = False      # ROOM only: no ceiling (sky pixels are invalid)

    def pose(self, t: float) -> np.ndarray:
        """4×4 local-to-world pose at time t."""
        return make_pose(rotvec_to_matrix(self.omega * t) @ self.R0, self.path.at(t))

    @property
    def moving(self) -> bool:
        return self.label > 0


@dataclass
class Light:
    direction: np.ndarray       # unit vector towards the light (world)
    color: np.ndarray           # RGB tint
    ambient: float
    diffuse: float


@dataclass
class CameraRig:
    """Camera pose over time: looks from ``position.at(t)`` towards ``target.at(t)``, roll ``roll0 + roll_rate·t``."""
    position: Trajectory
    target: Trajectory
    roll0: float = 0.0
    roll_rate: float = 0.0

    def pose(self, t: float) -> np.ndarray:
        """4×4 camera-to-world pose (optical frame) at time t."""
        return look_at(self.position.at(t), self.target.at(t), self.roll0 + self.roll_rate * t)


@dataclass
class Scene:
    primitives: list[Primitive]
    light: Light
    camera: CameraRig
    fov_deg: float
    noise_std: float = 0.0      # sensor noise (grey levels)
    seed: tuple[int, ...] = (0,)
    shadows: bool = True        # hard shadows of the directional light

    def add_noise(self, rgb: np.ndarray, t: float) -> np.ndarray:
        """``rgb`` with Gaussian sensor noise of ``noise_std`` grey levels, deterministic in (seed, t)."""
        if self.noise_std <= 0:
            return rgb
        rng = np.random.default_rng([*self.seed, int(round(t * 1e6)) & 0xFFFFFFFF, 17])
        return np.clip(rgb + rng.normal(0.0, self.noise_std, rgb.shape), 0, 255).round().astype(np.uint8)

    def intrinsics(self, height: int, width: int) -> np.ndarray:
        """3×3 K: square pixels, horizontal field of view ``fov_deg``, principal point at the image centre
        ((W-1)/2, (H-1)/2; integer pixel coordinates are pixel centres)."""
        f = 0.5 * width / np.tan(np.radians(self.fov_deg) / 2)
        return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])

    def object_motion(self, label: int, t_from: float, t_to: float) -> np.ndarray:
        """4×4 world-frame rigid motion of object ``label`` from t_from to t_to (X_to = M X_from)."""
        prim = next(p for p in self.primitives if p.label == label)
        return prim.pose(t_to) @ invert_se3(prim.pose(t_from))

    @property
    def labels(self) -> list[int]:
        return [p.label for p in self.primitives if p.label > 0]


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the generator (ranges are sampled uniformly per scene). Motion knobs for pairs are per pair
    (between t1 and t2), for sequences they set speeds (per second) of smooth bounded motion.

    - ``kind``: "dynamic" (objects move) or "static" (nothing but the camera moves: P(t2) = P(t1)).
    - ``moving_prob``: chance that each object moves (in "dynamic"); objects that do not move are labelled static (0).
    - ``object_radius``: half-extent / radius range of objects (m): sets the moving-pixel share with ``n_objects``.
    - ``object_translation`` (m), ``object_rotation_deg``: per-pair object motion magnitude, random 3D direction and
      axis. For sequences: m/s and deg/s (peak).
    - ``camera_translation`` (m), ``camera_rotation_deg``: per-pair camera motion (sequence: per second).
    - ``camera_distance``: distance of the camera from the scene centre (m); ``fov_deg``: horizontal field of view.
    - ``n_static``: number of static clutter boxes near the walls; ``open_sky_prob``: chance of a room without
      ceiling (sky pixels are invalid); ``light_ambient``: ambient light range; ``image_noise``: range of the
      standard deviation (grey levels) of Gaussian sensor noise added to the images (deterministic per seed/frame);
      ``shadows``: hard shadows of the directional light.
    - ``family``: "room" or "flying" (see the module docstring; "flying" is for pairs, not sequences).
    - ``camera_motion``: "orbit" (the room's legacy motion: translation in a random direction plus pan/tilt/roll
      towards the target) or "modes" (what a robot or hand-held camera does, one per pair, equally likely:
      ``forward`` along the optical axis, ``turning`` about the camera's vertical axis, ``sideways`` along its x axis,
      ``shaking`` small rotations and translations about random axes; magnitudes in ``CAMERA_MODES``). Flying scenes
      always use "modes".
    """
    kind: str = "dynamic"
    family: str = "room"
    camera_motion: str = "orbit"
    moving_prob: float = 1.0
    object_radius: tuple[float, float] = (0.25, 0.7)
    object_translation: tuple[float, float] = (0.05, 0.4)
    object_rotation_deg: tuple[float, float] = (2.0, 25.0)
    camera_translation: tuple[float, float] = (0.0, 0.4)
    camera_rotation_deg: tuple[float, float] = (0.0, 8.0)
    camera_distance: tuple[float, float] = (4.5, 6.0)
    fov_deg: tuple[float, float] = (50.0, 75.0)
    n_static: tuple[int, int] = (1, 4)
    open_sky_prob: float = 0.05
    light_ambient: tuple[float, float] = (0.2, 0.6)
    image_noise: tuple[float, float] = (0.0, 0.0)
    shadows: bool = True

    def __post_init__(self):
        if self.kind not in ("dynamic", "static"):
            raise ValueError(f"kind must be 'dynamic' or 'static', got {self.kind!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.camera_motion not in ("orbit", "modes"):
            raise ValueError(f"camera_motion must be 'orbit' or 'modes', got {self.camera_motion!r}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple) and (len(v) != 2 or v[0] > v[1] or v[0] < 0):
                raise ValueError(f"{f.name} must be a (low, high) range with 0 <= low <= high, got {v}")
        if not 0.0 <= self.moving_prob <= 1.0 or not 0.0 <= self.open_sky_prob <= 1.0:
            raise ValueError("moving_prob and open_sky_prob must be probabilities in [0, 1]")

    def replace(self, **kw) -> "SceneConfig":
        """A copy with some fields changed; ValueError naming the valid knobs for an unknown one."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(kw) - names)
        if unknown:
            raise ValueError(f"unknown scene knob(s) {unknown}; valid: {sorted(names)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / math.sqrt(v @ v)


def _texture(rng: np.random.Generator, scale: float) -> dict:
    """Random solid texture: two colours, a checker and a few sinusoids (spatial frequencies relative to ``scale``)."""
    base = rng.uniform(0.15, 0.95, 3)
    other = np.clip(base * rng.uniform(0.2, 0.7) + rng.uniform(-0.2, 0.3, 3), 0.02, 1.0)
    dirs = rng.normal(size=(N_WAVES, 3))
    waves = np.empty((N_WAVES, 4))
    waves[:, :3] = dirs / np.sqrt((dirs ** 2).sum(1, keepdims=True)) * rng.uniform(1.0, 6.0, (N_WAVES, 1)) \
        * (2 * np.pi / scale)
    waves[:, 3] = rng.uniform(0, 2 * np.pi, N_WAVES)
    return dict(color_a=base, color_b=other, checker_scale=rng.uniform(0.6, 2.5) / scale,
                checker_weight=rng.uniform(0.0, 0.8), waves=waves, wave_amps=rng.uniform(0.05, 0.25, N_WAVES))


def _u(rng, rng_pair) -> float:
    return float(rng.uniform(*rng_pair))


def random_scene(seed: int | tuple[int, ...], n_objects: int, config: SceneConfig = SceneConfig(), style: str = "pair",
                 time_gap: float = 0.1) -> Scene:
    """A random scene, deterministic in ``seed``. ``style="pair"``: linear motion from t=0 so that between t=0 and
    t=``time_gap`` objects and camera move by the per-pair magnitudes of ``config``; ``style="sequence"``: smooth
    bounded oscillating motion (speeds from ``config`` per second) suitable for long sequences. ``seed``: an int or
    a tuple of ints (numpy SeedSequence entropy)."""
    if n_objects < 0:
        raise ValueError(f"n_objects must be >= 0, got {n_objects}")
    if style == "pair" and time_gap == 0:
        raise ValueError("time_gap must be non-zero (t2 - t1, seconds)")
    if config.family == "flying":
        if style != "pair":
            raise ValueError("the flying family makes pairs only (style='pair'); sequences use family='room'")
        return _flying_scene(seed, n_objects, config, time_gap)
    rng = np.random.default_rng(seed)
    half = np.array([rng.uniform(9.0, 11.0), rng.uniform(9.0, 11.0), rng.uniform(1.5, 3.0)])  # room half-extents
    room_centre = np.array([0.0, 0.0, half[2] - 0.1])   # room floor 0.1 m below the floor slab (no z-fighting)
    prims = [Primitive(ROOM, half, Trajectory(room_centre), np.eye(3), np.zeros(3), 0,
                       open_top=bool(rng.uniform() < config.open_sky_prob), **_texture(rng, 1.5)),
             Primitive(BOX, np.array([half[0], half[1], 0.04]), Trajectory(np.array([0.0, 0.0, -0.04])),
                       np.eye(3), np.zeros(3), 0, **_texture(rng, 1.0))]   # floor: top face is z = 0
    for _ in range(int(rng.integers(config.n_static[0], config.n_static[1] + 1))):  # static clutter near the walls
        size = rng.uniform(0.3, 0.9, 3)
        ang = rng.uniform(0, 2 * np.pi)
        c = np.array([np.cos(ang) * (half[0] - 1.2), np.sin(ang) * (half[1] - 1.2), size[2]])
        prims.append(Primitive(BOX, size, Trajectory(c), rotvec_to_matrix([0, 0, rng.uniform(0, np.pi)]),
                               np.zeros(3), 0, **_texture(rng, 1.0)))
    dynamic = config.kind == "dynamic"
    seq = style == "sequence"
    placed: list[tuple[np.ndarray, float]] = []
    for k in range(1, n_objects + 1):
        kind = (BOX, ELLIPSOID, CYLINDER)[int(np.searchsorted([0.4, 0.75], rng.uniform()))]
        r = _u(rng, config.object_radius)
        size = r * rng.uniform(0.6, 1.0, 3)
        bound = float(size.max()) if kind == ELLIPSOID else float(np.linalg.norm(size))
        for _ in range(20):  # rejection sampling: keep objects apart at t = 0 where possible
            ang, rad = rng.uniform(0, 2 * np.pi), 2.0 * np.sqrt(rng.uniform())
            c = np.array([rad * np.cos(ang), rad * np.sin(ang), bound + rng.uniform(0.02, 1.2)])
            if all(np.linalg.norm(c - c2) > bound + b2 for c2, b2 in placed):
                break
        placed.append((c, bound))
        path, omega, label = Trajectory(c), np.zeros(3), 0
        moves = dynamic and rng.uniform() < config.moving_prob
        trans, rot = _u(rng, config.object_translation), np.radians(_u(rng, config.object_rotation_deg))
        direction, axis = _unit(rng), _unit(rng)
        if moves:
            label = k
            omega = axis * rot / (1.0 if seq else abs(time_gap))
            if seq:  # bounded: oscillate with peak speed ~trans (m/s), amplitude <= 0.8 m
                freq = rng.uniform(0.3, 1.2, 3)
                path.amp = np.minimum(np.abs(direction) * trans / freq, 0.8)
                path.amp[2] = min(path.amp[2], max(c[2] - bound - 0.02, 0.0))
                path.freq, path.phase = freq, rng.uniform(0, 2 * np.pi, 3)
            else:
                path.v = direction * trans / abs(time_gap)
        prims.append(Primitive(kind, size, path, rotvec_to_matrix(_unit(rng) * rng.uniform(0, np.pi)), omega,
                               label, **_texture(rng, max(r, 0.2))))

    dist, height = _u(rng, config.camera_distance), rng.uniform(0.6, 2.6)
    ang = rng.uniform(0, 2 * np.pi)
    pos = np.array([dist * np.cos(ang), dist * np.sin(ang), height])
    target = np.array([*rng.uniform(-0.7, 0.7, 2), rng.uniform(0.2, 1.4)])
    cam_trans, cam_rot = _u(rng, config.camera_translation), np.radians(_u(rng, config.camera_rotation_deg))
    roll0 = rng.normal(0, np.radians(4))
    if seq:  # orbit the centre at ~cam_trans m/s, pan/tilt ~cam_rot rad/s around the target
        omega_orbit = cam_trans / dist * rng.choice([-1, 1])
        position = Trajectory(np.array([0, 0, height]), amp=np.array([dist, dist, 0.3]),
                              freq=np.array([omega_orbit, omega_orbit, rng.uniform(0.2, 0.6)]),
                              phase=np.array([ang + np.pi / 2, ang, rng.uniform(0, 2 * np.pi)]))
        tfreq = rng.uniform(0.2, 0.7, 3)
        target_path = Trajectory(target, amp=np.minimum(cam_rot * dist / tfreq, 1.0) * np.array([1, 1, 0.3]),
                                 freq=tfreq, phase=rng.uniform(0, 2 * np.pi, 3))
        rig = CameraRig(position, target_path, roll0)
    else:  # linear over the pair: translate by cam_trans, turn by ~cam_rot (pan/tilt via the target, plus roll)
        view = target - pos
        perp = np.cross(view / np.linalg.norm(view), _unit(rng))
        perp /= np.linalg.norm(perp)
        split = rng.uniform(0.0, 0.35)
        g = abs(time_gap)
        rig = CameraRig(Trajectory(pos, v=_unit(rng) * cam_trans / g),
                        Trajectory(target, v=perp * np.linalg.norm(view) * np.tan(cam_rot * (1 - split)) / g),
                        roll0, cam_rot * split * rng.choice([-1, 1]) / g)
    if config.camera_motion == "modes" and not seq:   # own stream: the room itself is the same as with "orbit"
        rig = _mode_rig(np.random.default_rng([*np.atleast_1d(seed).tolist(), 4242]), pos, target, roll0, time_gap)
    tilt = np.radians(rng.uniform(20, 70))
    light_dir = np.array([np.cos(ang + rng.uniform(-2, 2)) * np.cos(tilt),
                          np.sin(ang + rng.uniform(-2, 2)) * np.cos(tilt), np.sin(tilt)])
    light = Light(light_dir / np.linalg.norm(light_dir), rng.uniform(0.75, 1.0, 3),
                  _u(rng, config.light_ambient), rng.uniform(0.5, 0.9))
    fov = _u(rng, config.fov_deg)
    noise = _u(rng, config.image_noise) if config.image_noise[1] > 0 else 0.0   # drawn last: same scene either way
    seeds = tuple(int(v) for v in np.atleast_1d(seed))
    return Scene(prims, light, rig, fov, noise, seeds, bool(config.shadows))


def _mode_rig(rng: np.random.Generator, pos: np.ndarray, target: np.ndarray, roll0: float,
              time_gap: float) -> CameraRig:
    """A linear camera rig over one pair (t = 0 → ``time_gap``) that starts at look_at(pos, target, roll0) and makes
    one of the ``CAMERA_MODES`` motions (mode drawn uniformly; translation and rotation expressed in the start
    camera's frame, rotation decomposed into pan/tilt of the target and a roll rate)."""
    mode = list(CAMERA_MODES)[int(rng.integers(len(CAMERA_MODES)))]
    trans_rng, rot_rng, t_axis, r_axis = CAMERA_MODES[mode]
    R = look_at(pos, target, roll0)[:3, :3]
    x, y = R[:, 0], R[:, 1]
    t_dir = _unit(rng) if t_axis is None else np.asarray(t_axis, float) * rng.choice([-1.0, 1.0])
    if mode == "forward":
        t_dir = np.abs(t_dir) * (1.0 if rng.uniform() < 0.8 else -1.0)   # mostly forward, sometimes reversing
    r_dir = _unit(rng) if r_axis is None else np.asarray(r_axis, float) * rng.choice([-1.0, 1.0])
    trans, rot = _u(rng, trans_rng), np.radians(_u(rng, rot_rng))
    g = abs(time_gap)
    v = (R @ t_dir) * trans / g
    dist = float(np.linalg.norm(np.asarray(target, float) - pos))
    pitch, yaw, roll = rot * r_dir
    target_v = v + dist * (np.tan(yaw) * x - np.tan(pitch) * y) / g
    return CameraRig(Trajectory(np.asarray(pos, float), v=v), Trajectory(np.asarray(target, float), v=target_v),
                     roll0, roll / g)


def _ray_exit(prim: Primitive, origin: np.ndarray, direction: np.ndarray) -> float:
    """Distance (m) along a unit world ray from ``origin`` (inside the ROOM primitive ``prim``) to its wall."""
    from .raycast import intersect   # raycast imports this module
    T_l_w = invert_se3(prim.pose(0.0))
    t = intersect(prim, T_l_w[:3, :3] @ origin + T_l_w[:3, 3], T_l_w[:3, :3] @ direction)
    return float(t) if np.isfinite(t) else 50.0


def _flying_scene(seed, n_objects: int, config: SceneConfig, time_gap: float) -> Scene:
    """A "flying" scene: camera at the origin looking in a random direction with a random roll, inside a randomly
    rotated textured box (half-extents 3–25 m, the background); 3–10 static and ``n_objects`` moving primitives at
    log-uniform depths along random rays of the view (1.5–15 m static, 1.2–8 m moving; at most 85 % of the way to
    the background), sized 4–30 % of their depth (at most 40 %);
    camera motion from ``CAMERA_MODES``; object motion from ``config`` like the rooms'."""
    rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), 77])
    g = abs(time_gap)
    fov = _u(rng, config.fov_deg)
    forward = _unit(rng)
    forward[2] *= 0.6                                       # keep look_at away from straight up / down
    forward /= np.linalg.norm(forward)
    pos = np.zeros(3)
    roll0 = rng.uniform(-np.pi, np.pi)
    T0 = look_at(pos, forward * 3.0, roll0)
    half = rng.uniform(3.0, 25.0, 3)
    R_room = rotvec_to_matrix(_unit(rng) * rng.uniform(0, np.pi))
    centre = R_room @ (rng.uniform(-1, 1, 3) * np.maximum(half - 1.5, 0.0))   # camera >= 1.5 m from every wall
    room = Primitive(ROOM, half, Trajectory(centre), R_room, np.zeros(3), 0,
                     open_top=bool(rng.uniform() < config.open_sky_prob), **_texture(rng, rng.uniform(0.5, 4.0)))
    prims = [room]
    tan_x = np.tan(np.radians(fov) / 2)

    def place(depth_range, size_frac):
        """A primitive's centre on a random ray of the (slightly enlarged) view, its size, kind and bound."""
        ray_c = np.array([rng.uniform(-1.15, 1.15) * tan_x, rng.uniform(-1.15, 1.15) * tan_x * 0.8, 1.0])
        ray_w = T0[:3, :3] @ (ray_c / np.linalg.norm(ray_c))
        wall = _ray_exit(room, pos, ray_w)
        lo, hi = depth_range[0], min(depth_range[1], 0.85 * wall)
        depth = float(np.exp(rng.uniform(np.log(lo), np.log(max(hi, lo * 1.01)))))
        kind = (BOX, ELLIPSOID, CYLINDER)[int(np.searchsorted([0.4, 0.75], rng.uniform()))]
        r = min(depth * rng.uniform(*size_frac), 0.4 * depth)
        size = r * rng.uniform(0.4, 1.0, 3)
        bound = float(size.max()) if kind == ELLIPSOID else float(np.linalg.norm(size))
        return pos + ray_w * depth, size, kind, bound, r

    for _ in range(int(rng.integers(3, 11))):               # static primitives
        c, size, kind, bound, r = place((1.5, 15.0), (0.04, 0.3))
        prims.append(Primitive(kind, size, Trajectory(c), rotvec_to_matrix(_unit(rng) * rng.uniform(0, np.pi)),
                               np.zeros(3), 0, **_texture(rng, max(r, 0.2))))
    dynamic = config.kind == "dynamic"
    for k in range(1, n_objects + 1):                         # moving primitives
        c, size, kind, bound, r = place((1.2, 8.0), (0.06, 0.3))
        trans, rot = _u(rng, config.object_translation), np.radians(_u(rng, config.object_rotation_deg))
        direction, axis = _unit(rng), _unit(rng)
        moves = dynamic and rng.uniform() < config.moving_prob
        path, omega, label = Trajectory(c), np.zeros(3), 0
        if moves:
            end = c + direction * trans
            if np.linalg.norm(end - pos) < bound + 0.6:       # would hit the camera: move away from it instead
                direction = (c - pos) / np.linalg.norm(c - pos)
            path.v, omega, label = direction * trans / g, axis * rot / g, k
        prims.append(Primitive(kind, size, path, rotvec_to_matrix(_unit(rng) * rng.uniform(0, np.pi)), omega,
                               label, **_texture(rng, max(r, 0.2))))
    rig = _mode_rig(rng, pos, forward * 3.0, roll0, time_gap)
    light_dir = _unit(rng)
    light = Light(light_dir, rng.uniform(0.75, 1.0, 3), _u(rng, config.light_ambient), rng.uniform(0.5, 0.9))
    noise = _u(rng, config.image_noise) if config.image_noise[1] > 0 else 0.0
    seeds = tuple(int(v) for v in np.atleast_1d(seed))
    return Scene(prims, light, rig, fov, noise, seeds, bool(config.shadows))
