"""``dpm bench train``: training throughput of a preset, before/after this package's fast step, side by side.

Configurations, timed in interleaved rounds (A, B, C, A, B, C, ...) so that a machine whose load changes during the
run treats them alike:

* ``before``: the training step as it was before the fast path (fp32, PyTorch's default CPU attention kernel, the
  stacked loss of before issue 9 (:func:`legacy_dpm_loss`), per-parameter AdamW and gradient clipping) — kept here
  only as the benchmark's reference;
* ``fp32``: the trainer's step (:meth:`Trainer.train_step`) without autocast;
* ``bf16``: the trainer's step under bf16 autocast (what ``precision=auto`` picks on a CPU with native bf16).

Each for every ``--train-threads`` value. Every step is timed on the same pre-generated batch, in wall seconds and in
CPU seconds of this process (``time.process_time``: all its threads), so ``pairs_per_cpu_s`` is robust to other
processes sharing the cores; ``pairs_per_s`` (wall) is not. The generator's cost is measured separately (CPU seconds
per pair on one thread), and ``end_to_end_pairs_per_cpu_s`` = 1 / (step CPU per pair + generator CPU per pair) is
what one training pair costs in total with the data generated in worker processes.

``matmul_bound`` profiles one step of each configuration but ``before``: the CPU seconds spent in matrix products,
their share of the step, and ``speedup_if_only_matmuls_cost`` = before's step / those seconds — the most any removal
of element-wise work could give on this CPU (on one whose bf16 products are only ~3x fp32 it is near 3x).

``step_share`` splits a short real run (data from ``workers`` worker processes) into forward, loss, backward,
optimizer and data wait. With ``--loss-steps N`` two runs of N steps from the same initialisation on the same data
(``before`` step in fp32 and the default step) are compared on the held-out loss (dpm_loss on evaluation pairs, fp32).
"""
from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def _batch(cfg, batch: int, offset: int = 0):
    import torch

    from dpm_ros.training.data import SyntheticPairs
    ds = SyntheticPairs(cfg, batch)
    items = [ds[offset + i] for i in range(batch)]
    return torch.utils.data.default_collate(items), [float(it["gen_cpu_s"]) for it in items]


def legacy_dpm_loss(pred: dict, batch: dict, weights=None) -> tuple:
    """The training loss as it was before issue 9 (stacked (B, 4, H, W, 3) maps, select gradients): the ``before``
    step's loss, and the reference :func:`dpm_ros.training.loss.dpm_loss` must equal (test_training_loss).

    pred: the model's ``forward_raw`` dict (maps (B,H,W,3), ``conf_<name>`` (B,H,W)); for each cross-time map X
    optionally ``delta_X`` (raw Δ, (B,H,W,3)) and ``motion_logit_X`` (gate logit, (B,H,W)) — terms whose inputs
    are absent are skipped. batch: ground truth under the same map names (metres), ``valid1``,
    ``valid2`` (B,H,W) bool, ``moving1``, ``moving2`` (B,H,W) bool, ``kind`` (B,) int.
    Returns (total, {term: float}) with per-map regression errors for logging."""
    import torch
    import torch.nn.functional as F

    from dpm_ros import POINT_MAP_NAMES, SWAPPED_POINT_MAP_NAMES
    from dpm_ros.training.loss import FLOW_PAIRS, KIND_SAME_TIME, LossWeights, _balanced_mean, pair_scale
    from dpm_ros.training.loss import supervision_matrix
    w = weights or LossWeights()
    sup = supervision_matrix(batch["kind"])
    motion_ok = (batch["kind"] != KIND_SAME_TIME).float()  # (B,)
    passes = [(1, POINT_MAP_NAMES)]
    if all(name in pred for name in SWAPPED_POINT_MAP_NAMES):
        passes.append((2, SWAPPED_POINT_MAP_NAMES))
    total_conf = pred[POINT_MAP_NAMES[0]].new_zeros(())
    total_flow, total_delta, total_gate = total_conf.clone(), total_conf.clone(), total_conf.clone()
    logs: dict[str, float] = {}
    for pass_id, names in passes:
        pw = torch.stack([batch["valid" + n[1]] for n in names], dim=1).float() * sup[:, :, None, None].float()
        p_hat = torch.stack([pred[n] for n in names], dim=1)
        p_gt = torch.stack([batch[n] for n in names], dim=1).to(p_hat.dtype)
        s_hat = pair_scale(p_hat, pw).clamp_min(1e-6)[:, None, None, None, None]
        s_gt = pair_scale(p_gt, pw).clamp_min(1e-6)[:, None, None, None, None]
        err = (p_hat / s_hat - p_gt / s_gt).norm(dim=-1)  # (B, 4, H, W)
        for k, name in enumerate(names):
            conf = pred["conf_" + name]
            wk = pw[:, k]
            count = wk.sum().clamp_min(1.0)
            term = conf * err[:, k] - w.alpha * torch.log(conf)
            total_conf = total_conf + (term * wk).sum() / count
            logs["reg_" + name] = float((err[:, k].detach() * wk).sum() / count)
        # motion terms, per view of this pass (cross-time map X = same-time map S + m·Δ)
        for same, cross in FLOW_PAIRS[pass_id]:
            k_same, k_cross = names.index(same), names.index(cross)
            view = cross[1]
            wv = batch["valid" + view].float() * motion_ok[:, None, None]
            moving = batch["moving" + view].float()
            f_gt = (p_gt[:, k_cross] - p_gt[:, k_same]) / s_gt[:, 0]
            f_hat = (p_hat[:, k_cross] - p_hat[:, k_same]) / s_hat[:, 0]
            total_flow = total_flow + _balanced_mean((f_hat - f_gt).norm(dim=-1), moving, wv)
            if "delta_" + cross in pred:
                d_hat = pred["delta_" + cross] / s_hat[:, 0]
                wm = wv * moving
                total_delta = total_delta + ((d_hat - f_gt).norm(dim=-1) * wm).sum() / wm.sum().clamp_min(1.0)
            if "motion_logit_" + cross in pred:
                bce = F.binary_cross_entropy_with_logits(pred["motion_logit_" + cross], moving, reduction="none")
                total_gate = total_gate + _balanced_mean(bce, moving, wv)
    total = total_conf + w.flow * total_flow + w.delta * total_delta + w.gate * total_gate
    logs.update({k: float(v.detach()) for k, v in (("loss", total), ("conf", total_conf), ("flow", total_flow),
                                                   ("delta", total_delta), ("gate", total_gate))})
    return total, logs


def _legacy_step(trainer, batch: dict) -> None:
    """The step before the fast path: fp32, default attention kernel, the loss before issue 9, for-loop AdamW and
    clipping."""
    import torch

    batch = {k: v for k, v in batch.items() if k != "gen_cpu_s"}
    trainer.net.train()
    pred = trainer.net.forward_raw(batch["img1"], batch["img2"])
    loss, _ = legacy_dpm_loss(pred, batch, trainer.cfg.loss)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainer.net.parameters(), trainer.cfg.clip, foreach=False)
    trainer.optimizer.step()


def _make_trainer(preset: str, height: int, width: int, batch: int, mode: str, out: Path, workers: int = 0,
                  seed: int = 0):
    import torch

    from dpm_ros.training.data import DataConfig
    from dpm_ros.training.trainer import Trainer, TrainConfig
    cfg = TrainConfig(preset=preset, out=str(out), batch=batch, steps=10 ** 6, warmup=10, lr=5e-4, seed=seed,
                      workers=workers, precision={"before": "fp32"}.get(mode, mode), ckpt_every=10 ** 9,
                      log_every=10 ** 9, data=DataConfig(height=height, width=width))
    tr = Trainer(cfg, resume=False, device="cpu", progress=False)
    if mode == "before":
        groups = tr.optimizer.param_groups
        tr.optimizer = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]}
                                          for g in groups], lr=cfg.lr, foreach=False)
        from dpm_ros.training.trainer import lr_factor
        tr.scheduler = torch.optim.lr_scheduler.LambdaLR(tr.optimizer, lambda s: lr_factor(s, cfg))
    return tr


def _time_steps(trainer, mode: str, batch: dict, steps: int) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    for _ in range(steps):
        if mode == "before":
            _legacy_step(trainer, batch)
        else:
            trainer.train_step(batch)
    return (time.perf_counter() - w) / steps, (time.process_time() - c) / steps


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def matmul_cpu_s(trainer, mode: str, batch: dict) -> float:
    """CPU seconds one step of ``mode`` spends in matrix products (``MATMUL_OPS``: every linear's forward and
    backward products, attention's score and value products), from ``torch.profiler`` (self time, so a product
    inside a larger operator counts once). The rest of the step is element-wise work, copies and the optimizer."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _time_steps(trainer, mode, batch, 1)
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in MATMUL_OPS) / 1e6


def cpu_facts(size: int = 1024, repeats: int = 3) -> dict:
    """What the speed-up of bf16 depends on, so reports from different machines can be compared: the CPU's model
    name, whether it has AMX-BF16 tiles and AVX-512 BF16 instructions (/proc/cpuinfo), and one thread's measured
    ``size``² matmul rate in fp32 and bf16 (GFLOP/s, best of ``repeats``). On AMX machines bf16 runs ~6x fp32; on
    AVX-512 BF16 without AMX ~2.5x, which caps what bf16 training can gain there."""
    import torch

    from dpm_ros.benchmarks import time_call
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
                 platform.processor() or platform.machine())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rates = {}
    try:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a = torch.randn(size, size).to(dtype)
            b = torch.randn(size, size).to(dtype)
            best_ms = time_call(lambda: a @ b, repeats, warmup=1)["min_ms"]
            rates[name] = round(2 * size ** 3 / best_ms / 1e6, 1)
    finally:
        torch.set_num_threads(threads)
    return {"cpu_model": model, "amx_bf16": "amx_bf16" in info, "avx512_bf16": "avx512_bf16" in info,
            f"matmul_{size}_gflops_1thread": rates}


def heldout_loss(net, height: int, width: int, pairs: int) -> float:
    """Mean dpm_loss of ``net`` (fp32, eval mode, no autocast) over held-out evaluation pairs."""
    import torch

    from dpm_ros.training.data import DataConfig, generate_sample, sample_item
    from dpm_ros.training.evaluate import eval_seeds
    from dpm_ros.training.loss import KIND_DYNAMIC, dpm_loss
    cfg = DataConfig(height=height, width=width)
    items = [sample_item(generate_sample(seed, cfg, KIND_DYNAMIC, 1.0)) for seed in eval_seeds(pairs)]
    net.eval()
    losses = []
    with torch.no_grad():
        for i in range(0, len(items), 16):
            b = torch.utils.data.default_collate(items[i:i + 16])
            pred = net.forward_raw(b["img1"], b["img2"])
            losses.append(float(dpm_loss(pred, b)[0]) * len(items[i:i + 16]))
    return sum(losses) / len(items)


def _loss_check(preset: str, height: int, width: int, batch: int, steps: int, pairs: int, tmp: Path) -> dict:
    """Same init, same data, ``steps`` steps: the before step (fp32) vs the default step; held-out losses."""
    import torch

    from dpm_ros.training.data import make_loader
    out = {}
    for mode in ("before", "auto"):
        tr = _make_trainer(preset, height, width, batch, mode, tmp / mode)   # same seed: same initialisation
        if mode == "before":
            out["init_heldout_loss"] = round(heldout_loss(tr.net, height, width, pairs), 5)
        t = time.process_time()
        for b in make_loader(tr.cfg.data, 0, steps, batch, num_workers=0):
            if mode == "before":
                _legacy_step(tr, b)
                tr.scheduler.step()
            else:
                tr.train_step(b)
        out[mode] = {"heldout_loss": round(heldout_loss(tr.net, height, width, pairs), 5),
                     "cpu_s_incl_generation": round(time.process_time() - t, 1)}
    out["ratio_default_to_before"] = round(out["auto"]["heldout_loss"] / out["before"]["heldout_loss"], 4)
    out.update(steps=steps, pairs_trained=steps * batch, heldout_pairs=pairs)
    return out


def run_train_benchmark(preset: str = "dpm_small", height: int = 96, width: int = 128, batch: int = 8,
                        threads: tuple[int, ...] = (1, 2), steps: int = 3, rounds: int = 3, gen_pairs: int = 16,
                        share_steps: int = 6, workers: int = 1, loss_steps: int = 0, loss_pairs: int = 32) -> dict:
    """The report (JSON-able). Times in seconds; throughputs in training pairs (one pair = one symmetric sample)."""
    import torch

    from dpm_ros.training.data import DataConfig
    from dpm_ros.training.trainer import cpu_has_native_bf16
    data = DataConfig(height=height, width=width)
    # generator: CPU seconds per pair on one thread
    torch.set_num_threads(1)
    _batch(data, 1, offset=10 ** 7)                      # imports and caches outside the timing
    _, gen = _batch(data, gen_pairs, offset=10 ** 7 + 1)
    gen_cpu_per_pair = statistics.mean(gen)
    batch_data, _ = _batch(data, batch)
    modes = ("before", "fp32", "bf16") if cpu_has_native_bf16() else ("before", "fp32")
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="dpm_bench_train_") as tmp:
        tmp = Path(tmp)
        trainers = {(m, n): _make_trainer(preset, height, width, batch, m, tmp / f"{m}{n}")
                    for m in modes for n in threads}
        samples = {k: [] for k in trainers}
        for k, tr in trainers.items():                  # warm-up: allocator, oneDNN primitives
            torch.set_num_threads(k[1])
            _time_steps(tr, k[0], batch_data, 1)
        for _ in range(rounds):
            for k, tr in trainers.items():
                torch.set_num_threads(k[1])
                samples[k].append(_time_steps(tr, k[0], batch_data, steps))
        for (m, n), s in samples.items():
            wall = statistics.median(x[0] for x in s)
            cpu = statistics.median(x[1] for x in s)
            results[f"{m}_threads{n}"] = {
                "step_wall_s": round(wall, 4), "step_cpu_s": round(cpu, 4),
                "pairs_per_s": round(batch / wall, 2), "pairs_per_cpu_s": round(batch / cpu, 2),
                "end_to_end_pairs_per_cpu_s": round(1.0 / (cpu / batch + gen_cpu_per_pair), 2)}
        # the matrix products' part of each step and the speed-up left if nothing else cost (module docstring); not
        # for "before": its attention runs inside SDPA's fused kernel, whose products the profiler does not see
        n0 = threads[0]
        torch.set_num_threads(n0)
        products = {m: matmul_cpu_s(trainers[(m, n0)], m, batch_data) for m in modes if m != "before"}
        before_cpu = results[f"before_threads{n0}"]["step_cpu_s"]
        matmul_bound = {
            "threads": n0, "matmul_cpu_s_per_step": {m: round(v, 4) for m, v in products.items()},
            "matmul_share_of_step": {m: round(v / results[f"{m}_threads{n0}"]["step_cpu_s"], 3)
                                     for m, v in products.items()},
            "speedup_if_only_matmuls_cost": {m: round(before_cpu / v, 2) for m, v in products.items() if v > 0}}
        # share of a real step (data from worker processes), default precision, one thread
        torch.set_num_threads(1)
        from dpm_ros.training.data import DataConfig as DC
        from dpm_ros.training.trainer import Trainer, TrainConfig
        cfg = TrainConfig(preset=preset, out=str(tmp / "share"), batch=batch, steps=share_steps + 2,
                          workers=workers, threads=1, ckpt_every=10 ** 9, log_every=10 ** 9,
                          data=DC(height=height, width=width))
        hist = Trainer(cfg, resume=False, device="cpu", progress=False).run()[2:]
        parts = {p: sum(h["t_" + p] for h in hist) for p in ("data", "fwd", "loss", "bwd", "opt")}
        total = sum(parts.values()) or 1.0
        share = {p: round(v / total, 3) for p, v in parts.items()}
        loss = _loss_check(preset, height, width, batch, loss_steps, loss_pairs, tmp) if loss_steps > 0 else None
    best = max((k for k in results if not k.startswith("before")), key=lambda k: results[k]["pairs_per_cpu_s"])
    ref = results[f"before_threads{threads[0]}"]
    report = {
        "target": "train", "preset": preset, "resolution": f"{width}x{height}", "batch": batch,
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "native_bf16": cpu_has_native_bf16(), **cpu_facts(), "load_average_at_end": list(os.getloadavg()),
        "timing": f"{rounds} interleaved rounds x {steps} steps per configuration, median",
        "generator_cpu_s_per_pair": round(gen_cpu_per_pair, 5),
        "generator_pairs_per_s_per_core": round(1.0 / gen_cpu_per_pair, 2),
        "configs": results,
        "speedup_pairs_per_cpu_s": {k: round(v["pairs_per_cpu_s"] / ref["pairs_per_cpu_s"], 2)
                                    for k, v in results.items()},
        "speedup_end_to_end_per_cpu_s": {k: round(v["end_to_end_pairs_per_cpu_s"]
                                                  / ref["end_to_end_pairs_per_cpu_s"], 2)
                                         for k, v in results.items()},
        "best": best,
        "step_share": {"workers": workers, "steps": len(hist), **share},
        "matmul_bound": matmul_bound,
    }
    if loss is not None:
        report["heldout_loss_check"] = loss
    return report


def add_train_arguments(parser) -> None:
    parser.add_argument("--train-batch", type=int, default=8, help="train: pairs per step (default 8)")
    parser.add_argument("--train-threads", default="1,2", help="train: torch thread counts (default 1,2)")
    parser.add_argument("--train-steps", type=int, default=3, help="train: timed steps per config per round")
    parser.add_argument("--train-rounds", type=int, default=3, help="train: interleaved rounds (default 3)")
    parser.add_argument("--gen-pairs", type=int, default=16, help="train: pairs timed for the generator")
    parser.add_argument("--share-steps", type=int, default=6, help="train: steps of the real run for the shares")
    parser.add_argument("--workers", type=int, default=1, help="train: data workers of that run (default 1)")
    parser.add_argument("--loss-steps", type=int, default=0,
                        help="train: also train before vs default this many steps and compare held-out loss")
    parser.add_argument("--loss-pairs", type=int, default=32, help="train: held-out pairs of that check")


def train_target(args) -> dict:
    res = args.resolution[0] if getattr(args, "resolution", None) else None
    height, width = (res if res else (96, 128))     # the training preset of training_state/landscape.json
    threads = tuple(int(t) for t in str(args.train_threads).split(",") if t.strip())
    if not threads or min(threads) < 1 or args.train_batch < 1 or args.train_steps < 1 or args.train_rounds < 1:
        raise ValueError("--train-threads, --train-batch, --train-steps and --train-rounds must be >= 1")
    return run_train_benchmark(args.preset, height, width, args.train_batch, threads, args.train_steps,
                               args.train_rounds, args.gen_pairs, args.share_steps, args.workers, args.loss_steps,
                               args.loss_pairs)
