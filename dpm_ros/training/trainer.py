"""The training loop: AdamW, linear warm-up + cosine decay, gradient clipping, checkpoints with exact resume,
a JSON-lines log and a progress bar. Single process by default; PyTorch DDP when started by ``torchrun``.

Exact resume: a checkpoint holds the model, optimiser, scheduler, the torch/numpy/python RNG states and the step;
the data of step k is a pure function of k (dpm_ros.training.data), so resuming at k reproduces step k's loss.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from dpm_ros.training.data import DataConfig, make_loader
from dpm_ros.training.loss import LossWeights, dpm_loss

CHECKPOINT_NAME = "last.pt"


@dataclass
class TrainConfig:
    """Everything that defines a run (stored in every checkpoint and in the shipped model's JSON)."""
    preset: str = "dpm_small"
    out: str = "runs/dpm_small"
    steps: int = 10000
    batch: int = 16                 # per process
    lr: float = 1e-3
    min_lr_ratio: float = 0.02
    weight_decay: float = 0.05
    warmup: int = 300
    clip: float = 1.0
    ckpt_every: int = 250
    log_every: int = 10
    threads: int = 1
    workers: int = 1
    seed: int = 0
    model_overrides: dict = field(default_factory=dict)
    init: str = ""     # weights (.safetensors + .json) to start a new run from; ignored when resuming
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossWeights = field(default_factory=LossWeights)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["data"] = DataConfig(**d.get("data", {}))
        d["loss"] = LossWeights(**d.get("loss", {}))
        return cls(**d)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base LR at a step: linear warm-up over ``warmup`` steps, then cosine to min_lr_ratio."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    frac = min((step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1), 1.0)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))


class RawForward(torch.nn.Module):
    """What the loss needs from the network in one call (so DDP sees a plain ``forward``)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> dict:
        if hasattr(self.net, "forward_raw"):
            return self.net.forward_raw(img1, img2)
        return self.net(img1, img2)


def build_network(cfg: TrainConfig) -> torch.nn.Module:
    from dpm_ros.model import build_model
    overrides = dict(cfg.model_overrides)
    overrides.setdefault("height", cfg.data.height)
    overrides.setdefault("width", cfg.data.width)
    return build_model(cfg.preset, **overrides)


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def _rng_state() -> dict:
    """RNG states as tensors and plain containers (so torch.load(weights_only=True) reads them back)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def save_checkpoint(path: Path, net, optimizer, scheduler, step: int, cfg: TrainConfig, wall_s: float) -> None:
    """Atomic write of everything needed to continue at ``step`` (the next step to run)."""
    state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "step": step, "rng": _rng_state(), "config": cfg.to_dict(), "model_config": net.config.to_dict(),
             "wall_s": wall_s}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


class Trainer:
    """One run. ``run()`` trains from step 0 or from ``out/last.pt`` (``resume=True``) up to cfg.steps."""

    def __init__(self, cfg: TrainConfig, resume: bool = True, device: str = "auto", progress: bool = True):
        self.cfg, self.progress = cfg, progress
        self.rank, self.local_rank, self.world = _dist_info()
        if device == "auto":
            device = f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt = self.out / CHECKPOINT_NAME
        state = torch.load(ckpt, map_location="cpu", weights_only=True) if resume and ckpt.exists() else None
        if state is None:
            self.net = build_network(cfg).to(self.device)
            if cfg.init:
                self._init_from(cfg.init)
        else:  # the architecture the checkpoint was trained with, even if the preset has changed since
            from dpm_ros.model import DPMConfig, DPMNet
            self.net = DPMNet(DPMConfig.from_dict(state["model_config"])).to(self.device)
        decay = [p for n, p in self.net.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in self.net.named_parameters() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        self.step, self.wall_s = 0, 0.0
        if state is not None:
            self.load_state(state, ckpt)
        self.forward = RawForward(self.net)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = torch.nn.parallel.DistributedDataParallel(self.forward, device_ids=ids)
        self._stop = False

    def _init_from(self, weights: str) -> None:
        """Start from saved weights of the same architecture (e.g. the shipped model, at another resolution:
        nothing in the network depends on the image size). ValueError naming the file on any mismatch."""
        from dpm_ros.model import load_model
        src = load_model(weights, map_location="cpu").state_dict()
        own = self.net.state_dict()
        bad = sorted(set(src) ^ set(own)) + [k for k in src if k in own and src[k].shape != own[k].shape]
        if bad:
            raise ValueError(f"--init {weights}: not the architecture of preset {self.cfg.preset} "
                             f"({len(bad)} mismatched parameters, e.g. {bad[:3]})")
        self.net.load_state_dict(src)

    def load_state(self, state: dict, path: Path) -> None:
        """Restore a checkpoint written by save_checkpoint (read with torch.load(weights_only=True))."""
        saved = TrainConfig.from_dict(state["config"])
        if saved.preset != self.cfg.preset or saved.data.height != self.cfg.data.height:
            raise ValueError(f"{path}: checkpoint is for preset {saved.preset} at {saved.data.height}px, not "
                             f"{self.cfg.preset} at {self.cfg.data.height}px (use another --out or --no-resume)")
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.wall_s = int(state["step"]), float(state.get("wall_s", 0.0))
        _set_rng_state(state["rng"])

    def _request_stop(self, *_):
        self._stop = True

    def train_step(self, batch: dict) -> dict:
        """One optimiser step on a collated batch; returns the loss terms (floats) and lr."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        self.net.train()
        pred = self.forward(batch["img1"], batch["img2"])
        loss, logs = dpm_loss(pred, batch, self.cfg.loss)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {self.step}: {logs}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.clip)
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        logs["grad_norm"] = float(gnorm)
        return logs

    def run(self, max_steps: int | None = None) -> list[dict]:
        """Train until cfg.steps (or ``max_steps`` more steps, or SIGINT/SIGTERM); checkpoint on the way and at
        the end. Returns the per-step logs of this call."""
        cfg = self.cfg
        end = cfg.steps if max_steps is None else min(cfg.steps, self.step + max_steps)
        loader = make_loader(cfg.data, self.step, end, cfg.batch, self.rank, self.world, cfg.workers)
        main = self.rank == 0
        old = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
        bar = None
        if main and self.progress:
            from tqdm import tqdm
            bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.preset}", unit="step", smoothing=0.05)
        history: list[dict] = []
        log_file = open(self.out / "log.jsonl", "a") if main else None
        t_last = time.perf_counter()
        try:
            for batch in loader:
                logs = self.train_step(batch)
                now = time.perf_counter()
                self.wall_s += now - t_last
                t_last = now
                self.step += 1
                logs.update(step=self.step, wall_s=round(self.wall_s, 2))
                history.append(logs)
                if main:
                    if self.step % cfg.log_every == 0 or self.step == end:
                        log_file.write(json.dumps(logs) + "\n")
                        log_file.flush()
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{logs['loss']:.3f}", flow=f"{logs['flow']:.4f}")
                    if self.step % cfg.ckpt_every == 0:
                        self.checkpoint()
                if self._stop:
                    break
        finally:
            if main:
                self.checkpoint()
                log_file.close()
                if bar is not None:
                    bar.close()
                for s, h in old.items():
                    signal.signal(s, h)
        return history

    def checkpoint(self) -> Path:
        path = self.out / CHECKPOINT_NAME
        save_checkpoint(path, self.net, self.optimizer, self.scheduler, self.step, self.cfg, self.wall_s)
        return path

    def export(self, path: Path) -> Path:
        """The trained network in our shipped format (safetensors + JSON with the training record)."""
        from dpm_ros.model import save_model
        record = {"train_config": self.cfg.to_dict(), "steps": self.step, "wall_s": round(self.wall_s, 1)}
        return save_model(self.net, Path(path), record=record)
