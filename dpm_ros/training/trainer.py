"""The training loop: AdamW, linear warm-up + cosine decay (or constant LR for an open-ended learning curve),
gradient clipping, checkpoints with exact resume (every ``ckpt_every`` steps, every ``ckpt_minutes`` of wall time and
on SIGINT/SIGTERM), a JSON-lines log and a progress bar. Single process by default; PyTorch DDP under ``torchrun``.

Exact resume: a checkpoint holds the model, optimiser, scheduler, the torch/numpy/python RNG states and the step;
the data of step k is a pure function of k (dpm_ros.training.data), so resuming at k reproduces step k's loss.

Speed (``precision``): the network's forward runs under bf16 autocast where the hardware has bf16 (CPUs with
AVX-512 BF16/AMX, CUDA); its four heads' outputs are cast back to fp32 (forward hooks), so the point/confidence
mappings, the per-pair normalisation and the whole loss run in fp32. On CPU under bf16, attention is two plain
bf16 matmuls (dpm_ros.model.blocks._scaled_attention: ~2.5x faster forward+backward than PyTorch's CPU SDPA kernels at
64-192 tokens); in fp32 on CPU it is PyTorch's math SDPA kernel (for 64-token sequences several times faster than
the CPU flash kernel, whose backward dominated the step). Also on the bf16 CPU path: RoPE is fused with the head
split (dpm_ros.model.rope.SplitHeadsRope: one autograd node, the softmax scale in q's tables); the network splits its
outputs with split/chunk and the loss works map by map with one autograd node per per-pixel distance, so no
zero-filled gradients of indexing; LinearHead writes channels-last memory directly. AdamW and gradient clipping use
the fused/foreach kernels. ``torch.compile`` is not used: before these fusions it gained 1.13-1.2x per step after a
first compile of 2-11 min, after them compiling the forward made the step 0.93x as fast (first step 170 s;
docs/performance.md, training speed).
"""
from __future__ import annotations

import contextlib
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
    precision: str = "auto"         # auto (bf16 autocast where supported) | bf16 | fp32
    schedule: str = "cosine"        # cosine (warm-up, cosine to min_lr_ratio at `steps`) | constant (warm-up, lr)
    ckpt_minutes: float = 0.0       # also checkpoint every this many wall-clock minutes (0: off)
    data_offset: int = 0            # global index of this run's first training sample (learning-curve continuation)
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
    if cfg.schedule == "constant":
        return 1.0
    frac = min((step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1), 1.0)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))


class RawForward(torch.nn.Module):
    """What the loss needs from the network in one call (so DDP sees a plain ``forward``)."""

    def __init__(self, net: torch.nn.Module, match_heads: int = 0):
        super().__init__()
        self.net, self.match_heads = net, match_heads

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> dict:
        if self.match_heads:   # the supervised-matching loss reads the decoders' cross-attention logits
            return self.net.forward_raw(img1, img2, match_heads=self.match_heads)
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


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32). ``auto`` is bf16 on CUDA with bf16
    and on CPUs with native bf16 (AVX-512 BF16 / AMX), else fp32. ValueError for unknown names."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_native_bf16() else None


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (avx512_bf16 or amx_bf16 in /proc/cpuinfo; oneDNN's check too)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and "avx512" in flags
    except (AttributeError, RuntimeError):
        return False


def _heads_to_fp32(net: torch.nn.Module) -> list:
    """Forward hooks casting each prediction head's output to fp32, so everything after the heads (points,
    confidences, gates, the loss) is computed in fp32 under autocast. The cast also makes the output planar
    (B, C, H, W) memory (the bf16 CPU LinearHead writes channels-last): the (B, H, W, 3) maps are then views of
    contiguous planes, on which the points mapping and the loss run several times faster (see
    :func:`dpm_ros.model.network.norm3`). Returns the hook handles."""
    handles = []
    for name, module in net.named_children():
        if name.startswith("downstream_head"):
            handles.append(module.register_forward_hook(
                lambda _m, _i, out: out.to(torch.float32, memory_format=torch.contiguous_format)))
    return handles


def save_checkpoint(path: Path, net, optimizer, scheduler, step: int, cfg: TrainConfig, wall_s: float,
                    cpu_s: float = 0.0) -> None:
    """Atomic write of everything needed to continue at ``step`` (the next step to run)."""
    state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "step": step, "rng": _rng_state(), "config": cfg.to_dict(), "model_config": net.config.to_dict(),
             "wall_s": wall_s, "cpu_s": cpu_s}
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
        if cfg.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be cosine or constant, got {cfg.schedule!r}")
        self.amp_dtype = resolve_precision(cfg.precision, self.device)
        if self.amp_dtype is not None:
            _heads_to_fp32(self.net)
        decay = [p for n, p in self.net.named_parameters() if p.ndim >= 2 and p.requires_grad]
        no_decay = [p for n, p in self.net.named_parameters() if p.ndim < 2 and p.requires_grad]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        try:   # one fused kernel for all parameters (CPU and CUDA in torch >= 2.4)
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, foreach=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        self.step, self.wall_s, self.cpu_s = 0, 0.0, 0.0
        self.time_parts = False     # True: synchronise CUDA between step parts so their times are exact
        if state is not None:
            self.load_state(state, ckpt)
        if cfg.loss.match < 0:
            raise ValueError(f"the matching loss weight must be >= 0, got {cfg.loss.match}")
        if cfg.loss.match_drop_radius >= 0 and cfg.loss.match <= 0:
            raise ValueError(f"match_drop_radius {cfg.loss.match_drop_radius} needs a matching loss weight > 0")
        from dpm_ros.training.matching import MATCH_HEADS
        self.match_heads = MATCH_HEADS if cfg.loss.match > 0 else 0
        self.forward = RawForward(self.net, self.match_heads)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = torch.nn.parallel.DistributedDataParallel(self.forward, device_ids=ids)
        self._stop = False

    def _init_from(self, weights: str) -> None:
        """Start from saved weights of the same architecture (e.g. the shipped model, at another resolution:
        nothing in the network depends on the image size). ValueError naming the file on any mismatch, except
        that weights without the correlation layer (``corr_proj``, zero-initialised) start a ``corr_radius``
        network: it then computes exactly what the weights did."""
        from dpm_ros.model import load_model
        src = load_model(weights, map_location="cpu").state_dict()
        own = self.net.state_dict()
        added = {k for k in own if k.startswith("corr_proj.") and k not in src}
        src.update({k: own[k] for k in added})
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
        self.cpu_s = float(state.get("cpu_s", 0.0))
        _set_rng_state(state["rng"])

    def _request_stop(self, *_):
        self._stop = True

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _attention_kernel(self):
        """CPU: the math SDPA kernel (64-token sequences: far faster than the CPU flash kernel, forward and
        backward); CUDA: PyTorch's choice."""
        if self.device.type != "cpu":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel([SDPBackend.MATH])

    def _tick(self) -> float:
        if self.time_parts and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def train_step(self, batch: dict) -> dict:
        """One optimiser step on a collated batch; returns the loss terms (floats), lr, grad norm and the seconds
        spent in forward (``t_fwd``), loss (``t_loss``), backward (``t_bwd``) and optimizer (``t_opt``)."""
        t0 = self._tick()
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if k != "gen_cpu_s"}
        self.net.train()
        with self._autocast(), self._attention_kernel():
            pred = self.forward(batch["img1"], batch["img2"])
        t1 = self._tick()
        loss, logs = dpm_loss(pred, batch, self.cfg.loss)     # fp32: the heads' outputs are cast back
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {self.step}: {logs}")
        t2 = self._tick()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = self._tick()
        gnorm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.clip, foreach=True)
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        logs["grad_norm"] = float(gnorm)
        t4 = self._tick()
        logs.update(t_fwd=t1 - t0, t_loss=t2 - t1, t_bwd=t3 - t2, t_opt=t4 - t3)
        return logs

    def run(self, max_steps: int | None = None, max_minutes: float | None = None) -> list[dict]:
        """Train until cfg.steps (or ``max_steps`` more steps, ``max_minutes`` of wall time in this call, or
        SIGINT/SIGTERM); checkpoint every ``ckpt_every`` steps, every ``ckpt_minutes`` and at the end. Returns the per-step logs of this call (``t_data``: seconds
        waiting for the batch; ``cpu_s``: CPU seconds of the run so far, data generation included)."""
        cfg = self.cfg
        end = cfg.steps if max_steps is None else min(cfg.steps, self.step + max_steps)
        loader = make_loader(cfg.data, self.step, end, cfg.batch, self.rank, self.world, cfg.workers,
                             offset=cfg.data_offset, pin_memory=self.device.type == "cuda",
                             match_patch=self.net.config.patch_size if self.match_heads else 0,
                             match_drop_radius=cfg.loss.match_drop_radius)
        main = self.rank == 0
        old = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
        bar = None
        if main and self.progress:
            from tqdm import tqdm
            bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.preset}", unit="step", smoothing=0.05)
        history: list[dict] = []
        log_file = open(self.out / "log.jsonl", "a") if main else None
        t_last, cpu_last = time.perf_counter(), time.process_time()
        t_ckpt = t_start = t_last
        try:
            it = iter(loader)
            while True:
                t_wait = time.perf_counter()
                batch = next(it, None)
                if batch is None:
                    break
                t_data = time.perf_counter() - t_wait
                gen_cpu = float(batch["gen_cpu_s"].sum()) if cfg.workers > 0 else 0.0  # else in process_time
                logs = self.train_step(batch)
                now, cpu_now = time.perf_counter(), time.process_time()
                self.wall_s += now - t_last
                self.cpu_s += cpu_now - cpu_last + gen_cpu
                t_last, cpu_last = now, cpu_now
                self.step += 1
                logs.update(step=self.step, wall_s=round(self.wall_s, 2), cpu_s=round(self.cpu_s, 2),
                            t_data=t_data, gen_cpu_s=float(batch["gen_cpu_s"].sum()))
                history.append(logs)
                if main:
                    if self.step % cfg.log_every == 0 or self.step == end:
                        log_file.write(json.dumps({k: (round(v, 4) if k.startswith("t_") else v)
                                                   for k, v in logs.items()}) + "\n")
                        log_file.flush()
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{logs['loss']:.3f}", flow=f"{logs['flow']:.4f}")
                    due = cfg.ckpt_minutes > 0 and now - t_ckpt >= 60.0 * cfg.ckpt_minutes
                    if self.step % cfg.ckpt_every == 0 or due:
                        self.checkpoint()
                        t_ckpt = time.perf_counter()
                if self._stop or (max_minutes is not None and now - t_start >= 60.0 * max_minutes):
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
        save_checkpoint(path, self.net, self.optimizer, self.scheduler, self.step, self.cfg, self.wall_s, self.cpu_s)
        return path

    def export(self, path: Path) -> Path:
        """The trained network in our shipped format (safetensors + JSON with the training record)."""
        from dpm_ros.model import save_model
        record = {"train_config": self.cfg.to_dict(), "steps": self.step, "wall_s": round(self.wall_s, 1),
                  "cpu_s": round(self.cpu_s, 1)}
        return save_model(self.net, Path(path), record=record)
