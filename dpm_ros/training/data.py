"""On-the-fly synthetic training pairs (dpm_ros.synthetic.make_pair) for the DPM network.

Every sample is a pure function of its global index ``idx``: seed = TRAIN_SEED_BASE + idx, the sample kind (Table 6:
dynamic / same-time / static), the scene family and camera motion (the scene mix: ``p_flying`` flying scenes, the
rest rooms of which ``p_room_modes`` use the robot / hand-held camera modes), whether the images are photometrically
augmented (``p_augment``, dpm_ros.synthetic.augment: images only, geometry exact) and the curriculum stage are
derived from ``idx`` too. So a resumed run sees exactly
the data it would have seen, whatever the worker processes did, and DDP ranks read disjoint indices.
Training seeds start at TRAIN_SEED_BASE; held-out evaluation seeds (dpm_ros.training.evaluate) lie below it.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from dpm_ros import ALL_POINT_MAP_NAMES
from dpm_ros.training.loss import KIND_DYNAMIC, KIND_SAME_TIME, KIND_STATIC

TRAIN_SEED_BASE = 1_000_000
"""Training pairs use seeds ≥ this; evaluation seeds are < this (disjoint by construction)."""


@dataclass
class DataConfig:
    """What the trainer draws. The curriculum multiplies make_pair's object translation/rotation ranges by a
    factor that decays linearly from ``motion_scale_start`` to 1 over ``curriculum_steps`` (large → realistic)."""
    height: int = 64
    width: int = 64
    n_objects_min: int = 1
    n_objects_max: int = 4
    p_same_time: float = 0.15
    p_static: float = 0.15
    motion_scale_start: float = 3.0
    curriculum_steps: int = 3000
    p_flying: float = 0.0       # share of "flying" scenes (dpm_ros.synthetic.scene); the rest are rooms
    p_room_modes: float = 0.0   # share of rooms whose camera makes the CAMERA_MODES motions (else the orbit rig)
    p_augment: float = 0.0      # share of pairs with photometric augmentation (exposure, WB, blur, noise, JPEG)

    def to_dict(self) -> dict:
        return asdict(self)


def motion_knobs(motion_scale: float) -> dict:
    """make_pair knobs for a displacement multiplier: the generator's default object translation (m) and rotation
    (deg) ranges times ``motion_scale`` (rotation capped at 90°)."""
    from dpm_ros.synthetic.scene import SceneConfig
    base = SceneConfig()
    lo_t, hi_t = base.object_translation
    lo_r, hi_r = base.object_rotation_deg
    s = float(motion_scale)
    return {"object_translation": (lo_t * s, hi_t * s),
            "object_rotation_deg": (min(lo_r * s, 90.0), min(hi_r * s, 90.0))}


def sample_kind(idx: int, cfg: DataConfig) -> int:
    """The Table-6 supervision kind of sample ``idx`` (deterministic)."""
    u = np.random.default_rng([idx, 7]).random()
    if u < cfg.p_static:
        return KIND_STATIC
    if u < cfg.p_static + cfg.p_same_time:
        return KIND_SAME_TIME
    return KIND_DYNAMIC


def sample_scene(idx: int, cfg: DataConfig) -> tuple[str, str, bool]:
    """(family, camera_motion, augment) of sample ``idx`` (deterministic; the scene mix of ``cfg``)."""
    u = np.random.default_rng([idx, 11]).random(3)
    family = "flying" if u[0] < cfg.p_flying else "room"
    motion = "modes" if family == "flying" or u[1] < cfg.p_room_modes else "orbit"
    return family, motion, bool(u[2] < cfg.p_augment)


def motion_scale_at(step: int, cfg: DataConfig) -> float:
    """Curriculum: displacement multiplier at an optimiser step (start → 1, linear, then 1)."""
    if cfg.curriculum_steps <= 0:
        return 1.0
    frac = min(max(step / cfg.curriculum_steps, 0.0), 1.0)
    return float(cfg.motion_scale_start + (1.0 - cfg.motion_scale_start) * frac)


def generate_sample(seed: int, cfg: DataConfig, kind: int = KIND_DYNAMIC, motion_scale: float = 1.0,
                    n_objects: int | None = None, family: str = "room", camera_motion: str = "orbit",
                    augment: bool = False) -> dict:
    """One pair as numpy arrays: the eight maps (metres, named camera's optical frame, NaN where invalid),
    img1/img2 uint8, valid1/2, moving1/2 (pixels of moving objects; none for the static kind), K, T_w_c1/T_w_c2,
    instances1/2, object_motions, kind, family. ``family`` "room" | "flying", ``camera_motion`` "orbit" | "modes"
    (SceneConfig), ``augment``: photometric augmentation of the images (ground truth unchanged)."""
    from dpm_ros.synthetic import make_pair
    from dpm_ros.synthetic.augment import photometric
    if n_objects is None:
        n_objects = int(np.random.default_rng([seed, 3]).integers(cfg.n_objects_min, cfg.n_objects_max + 1))
    gen_kind = "static" if kind == KIND_STATIC else "dynamic"
    pair = make_pair(seed, cfg.height, cfg.width, n_objects, kind=gen_kind, family=family,
                     camera_motion=camera_motion, **motion_knobs(motion_scale))
    out = {name: np.asarray(pair[name], np.float32) for name in ALL_POINT_MAP_NAMES}
    out["img1"], out["img2"] = np.asarray(pair["img1"], np.uint8), np.asarray(pair["img2"], np.uint8)
    if augment:
        out["img1"], out["img2"] = photometric(out["img1"], out["img2"], seed)
    out["family"] = family
    for key in ("valid1", "valid2", "moving1", "moving2"):
        out[key] = np.asarray(pair[key], bool)
    if kind == KIND_STATIC:
        out["moving1"] = np.zeros_like(out["moving1"])
        out["moving2"] = np.zeros_like(out["moving2"])
    for key in ("K", "T_w_c1", "T_w_c2", "instances1", "instances2", "object_motions"):
        out[key] = pair[key]
    out["kind"] = kind
    return out


class SyntheticPairs(torch.utils.data.Dataset):
    """Map-style dataset over global sample indices; ``global_batch`` samples make one optimiser step.
    ``offset`` is the global index of the run's first sample (a continued learning curve starts after the pairs
    its earlier runs saw); the curriculum step is counted from there. ``match_patch`` P > 0: items also carry the
    token correspondences of the supervised-matching loss at patch size P (see :func:`sample_item`), without those
    within ``match_drop_radius`` tokens of the query's own position when that is >= 0."""

    def __init__(self, cfg: DataConfig, global_batch: int, offset: int = 0, match_patch: int = 0,
                 match_drop_radius: int = -1):
        if global_batch < 1:
            raise ValueError(f"global_batch must be >= 1, got {global_batch}")
        if offset < 0:
            raise ValueError(f"sample offset must be >= 0, got {offset}")
        self.cfg, self.global_batch, self.offset = cfg, global_batch, offset
        self.match_patch, self.match_drop_radius = int(match_patch), int(match_drop_radius)

    def __len__(self) -> int:  # effectively unbounded; the sampler decides what is read
        return 2 ** 40

    def __getitem__(self, idx: int) -> dict:
        t0 = time.process_time()   # the process: the GL renderer (llvmpipe) draws in threads of its own
        step = (idx - self.offset) // self.global_batch
        kind = sample_kind(idx, self.cfg)
        family, camera_motion, augment = sample_scene(idx, self.cfg)
        s = generate_sample(TRAIN_SEED_BASE + idx, self.cfg, kind, motion_scale_at(step, self.cfg),
                            family=family, camera_motion=camera_motion, augment=augment)
        item = sample_item(s, self.match_patch, self.match_drop_radius)
        item["gen_cpu_s"] = torch.tensor(time.process_time() - t0, dtype=torch.float64)  # generator CPU seconds
        return item


def sample_item(s: dict, match_patch: int = 0, match_drop_radius: int = -1) -> dict:
    """A :func:`generate_sample` dict -> the tensors the network and the loss read (one collatable item): the
    eight maps (metres, zeros where invalid), img1/img2 network inputs, valid/moving masks, kind; with
    ``match_patch`` P > 0 also ``match12`` / ``match21`` (N,) int64: each token's ground-truth corresponding token
    in the other view at patch size P, -1 where none (dpm_ros.training.matching.pair_correspondences; also -1
    within ``match_drop_radius`` tokens of the query's own position when that is >= 0)."""
    # invalid pixels are NaN in the ground truth; the loss masks them, but NaN·0 is NaN: store zeros
    item = {name: torch.from_numpy(np.nan_to_num(s[name], nan=0.0)) for name in ALL_POINT_MAP_NAMES}
    item.update(img1=_to_input(s["img1"]), img2=_to_input(s["img2"]),
                valid1=torch.from_numpy(s["valid1"]), valid2=torch.from_numpy(s["valid2"]),
                moving1=torch.from_numpy(s["moving1"]), moving2=torch.from_numpy(s["moving2"]),
                kind=torch.tensor(int(s["kind"]), dtype=torch.long))
    if match_patch:
        from dpm_ros.training.matching import pair_correspondences
        m12, m21 = pair_correspondences(s, match_patch, match_drop_radius)
        item.update(match12=torch.from_numpy(m12), match21=torch.from_numpy(m21))
    return item


def _to_input(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float32 (3, H, W) normalised like DUSt3R: (x/255 − 0.5)/0.5."""
    return torch.from_numpy(img).permute(2, 0, 1).float().div(255.0).sub(0.5).div(0.5)


class StepBatches(torch.utils.data.Sampler):
    """Index batches for steps [start_step, total_steps): rank r of w reads
    idx = offset + step·global_batch + r·local_batch + i, i < local_batch."""

    def __init__(self, start_step: int, total_steps: int, local_batch: int, rank: int = 0, world: int = 1,
                 offset: int = 0):
        self.start, self.total, self.local, self.rank, self.world = start_step, total_steps, local_batch, rank, world
        self.offset = offset

    def __len__(self) -> int:
        return max(self.total - self.start, 0)

    def __iter__(self):
        g = self.local * self.world
        for step in range(self.start, self.total):
            base = self.offset + step * g + self.rank * self.local
            yield list(range(base, base + self.local))


def make_loader(cfg: DataConfig, start_step: int, total_steps: int, local_batch: int, rank: int = 0,
                world: int = 1, num_workers: int = 1, offset: int = 0,
                pin_memory: bool = False, match_patch: int = 0,
                match_drop_radius: int = -1) -> torch.utils.data.DataLoader:
    """DataLoader yielding one collated batch per optimiser step, generated in ``num_workers`` processes
    (each worker builds whole batches; ``prefetch_factor`` batches per worker are kept ready). Batches carry
    ``gen_cpu_s`` (B,): the generator's CPU seconds per sample."""
    ds = SyntheticPairs(cfg, local_batch * world, offset, match_patch, match_drop_radius)
    sampler = StepBatches(start_step, total_steps, local_batch, rank, world, offset)
    kw = dict(num_workers=num_workers, pin_memory=pin_memory)
    if num_workers > 0:
        # spawn, not fork: a parent that already rendered (OpenGL/EGL context) would deadlock forked workers
        kw.update(prefetch_factor=4, persistent_workers=False, worker_init_fn=_worker_init,
                  multiprocessing_context="spawn")
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, **kw)


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)
