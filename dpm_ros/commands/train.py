"""``dpm train``: train a DPM network on on-the-fly synthetic pairs (checkpoints under --out, exact resume).

Single process:   dpm train --preset dpm_small --steps 20000 --out runs/dpm_small --threads 1
Resume:           the same command again (continues from runs/dpm_small/last.pt; --no-resume starts over)
Multi-GPU / CPU:  torchrun --nproc_per_node 4 -m dpm_ros.cli train ... (PyTorch DDP; --batch is per process)
"""
from __future__ import annotations

import json
from pathlib import Path


def add_arguments(parser) -> None:
    from dpm_ros.training.data import DataConfig
    from dpm_ros.training.loss import LossWeights
    from dpm_ros.training.trainer import TrainConfig
    d, dd, lw = TrainConfig(), DataConfig(), LossWeights()
    parser.add_argument("--preset", default=d.preset, help="model preset (dpm_small, dpm_tiny, ...)")
    parser.add_argument("--out", default=d.out, help="run directory: last.pt, log.jsonl, model.safetensors")
    parser.add_argument("--steps", type=int, default=d.steps, help="total optimiser steps (schedule length)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in this call")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop after this much wall time in this call (checkpointed, resumable)")
    parser.add_argument("--batch", type=int, default=d.batch, help="pairs per step per process")
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps before the cosine")
    parser.add_argument("--clip", type=float, default=d.clip, help="gradient norm clip")
    parser.add_argument("--ckpt-every", type=int, default=d.ckpt_every, help="checkpoint period in steps")
    parser.add_argument("--ckpt-minutes", type=float, default=d.ckpt_minutes,
                        help="also checkpoint every this many wall-clock minutes (0: off)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=d.precision,
                        help="auto: bf16 autocast on CUDA and on CPUs with native bf16 (loss in fp32), else fp32")
    parser.add_argument("--schedule", choices=("cosine", "constant"), default=d.schedule,
                        help="LR after the warm-up: cosine to 2%% at --steps, or constant")
    parser.add_argument("--log-every", type=int, default=d.log_every, help="JSON log period in steps")
    parser.add_argument("--threads", type=int, default=d.threads, help="torch intra-op threads per process")
    parser.add_argument("--workers", type=int, default=d.workers, help="data generation worker processes")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda:N")
    parser.add_argument("--height", type=int, default=None, help="training resolution (default: the preset's)")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--p-same-time", type=float, default=dd.p_same_time, help="share of same-time samples")
    parser.add_argument("--p-static", type=float, default=dd.p_static, help="share of static-scene samples")
    parser.add_argument("--motion-scale-start", type=float, default=dd.motion_scale_start,
                        help="curriculum: displacement multiplier at step 0, decaying linearly to 1")
    parser.add_argument("--curriculum-steps", type=int, default=dd.curriculum_steps)
    parser.add_argument("--p-flying", type=float, default=0.5,
                        help="share of 'flying' scenes (random primitives, no floor); the rest are rooms (default 0.5)")
    parser.add_argument("--p-room-modes", type=float, default=0.5,
                        help="share of rooms with forward/turning/sideways/shaking camera motion (default 0.5)")
    parser.add_argument("--p-augment", type=float, default=0.8,
                        help="share of pairs with photometric augmentation: exposure, WB, blur, noise, JPEG "
                             "(default 0.8)")
    parser.add_argument("--w-flow", type=float, default=lw.flow, help="weight of the object-flow term")
    parser.add_argument("--w-delta", type=float, default=lw.delta, help="weight of the raw-Δ term")
    parser.add_argument("--w-gate", type=float, default=lw.gate, help="weight of the gate BCE term")
    parser.add_argument("--match-weight", type=float, default=lw.match, metavar="W",
                        help="weight of the supervised-matching term: cross-entropy of the decoders' "
                             "cross-attention (head 0 of every block) against the true token correspondence; "
                             "0: off (issue-10 ablation)")
    parser.add_argument("--match-drop-radius", type=int, default=lw.match_drop_radius, metavar="R",
                        help="supervised matching: drop the targets within Chebyshev distance R tokens of the "
                             "query's own position (0: the own position only, 1: also its 8 neighbours), so only "
                             "correspondences that moved are taught; -1: keep all (default)")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --out")
    parser.add_argument("--init", default="", metavar="WEIGHTS",
                        help="start a new run from these weights (.safetensors, same preset; any resolution)")
    parser.add_argument("--corr-radius", type=int, default=0, metavar="R",
                        help="add the explicit local correlation of the two views' encoder tokens ((2R+1)^2 token "
                             "window, zero-initialised) to the decoder input; 0: off (the presets' architecture)")
    parser.add_argument("--data-offset", type=int, default=0, metavar="N",
                        help="global index of the first training sample (e.g. a curve state's next_sample: "
                             "unseen data)")
    parser.add_argument("--export", default=None, help="also write the final weights here (.safetensors)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args):
    from dpm_ros.training.data import DataConfig
    from dpm_ros.training.loss import LossWeights
    from dpm_ros.training.trainer import TrainConfig
    from dpm_ros.model.config import preset_config
    preset = preset_config(args.preset)
    args.height = args.height or preset.height
    args.width = args.width or preset.width
    for name in ("steps", "batch", "threads", "height", "width", "ckpt_every", "log_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("corr_radius", "data_offset", "match_weight"):
        if getattr(args, name, 0) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    overrides = {"corr_radius": args.corr_radius} if getattr(args, "corr_radius", 0) else {}
    data = DataConfig(height=args.height, width=args.width, p_same_time=args.p_same_time, p_static=args.p_static,
                      motion_scale_start=args.motion_scale_start, curriculum_steps=args.curriculum_steps,
                      p_flying=args.p_flying, p_room_modes=args.p_room_modes, p_augment=args.p_augment)
    if getattr(args, "match_drop_radius", -1) >= 0 and getattr(args, "match_weight", 0.0) <= 0:
        raise ValueError("--match-drop-radius needs --match-weight > 0")
    loss = LossWeights(flow=args.w_flow, delta=args.w_delta, gate=args.w_gate,
                       match=getattr(args, "match_weight", 0.0),
                       match_drop_radius=getattr(args, "match_drop_radius", -1))
    return TrainConfig(preset=args.preset, out=args.out, steps=args.steps, batch=args.batch, lr=args.lr,
                       weight_decay=args.weight_decay, warmup=args.warmup, clip=args.clip,
                       ckpt_every=args.ckpt_every, log_every=args.log_every, threads=args.threads,
                       workers=args.workers, seed=args.seed, init=args.init, data=data, loss=loss,
                       precision=args.precision, schedule=args.schedule, ckpt_minutes=args.ckpt_minutes,
                       model_overrides=overrides, data_offset=getattr(args, "data_offset", 0))


def run(args) -> int:
    from dpm_ros.training.trainer import Trainer
    cfg = config_from_args(args)
    trainer = Trainer(cfg, resume=not args.no_resume, device=args.device, progress=not args.no_progress)
    Path(cfg.out, "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    history = trainer.run(max_steps=args.max_steps, max_minutes=args.max_minutes)
    if trainer.world > 1:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
    if trainer.rank == 0:
        final = trainer.export(Path(args.export) if args.export else Path(cfg.out) / "model.safetensors")
        last = history[-1] if history else {}
        print(json.dumps({"step": trainer.step, "wall_s": round(trainer.wall_s, 1), "loss": last.get("loss"),
                          "weights": str(final)}))
    return 0
