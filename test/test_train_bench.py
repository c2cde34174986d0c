"""`dpm bench train` at a tiny preset, and what makes the default CPU step fast, checked by counting the operators
one step dispatches (deterministic, unlike timings): bf16 matmuls, the explicit attention instead of SDPA's math
kernel, RoPE fused with the head split, no zero-filled select/slice gradients in the network's outputs or the loss,
no pixel_unshuffle, the loss's distances as one node each, one fused AdamW kernel per parameter group, far fewer
operators than the step before issue 9."""
from __future__ import annotations

import collections
import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dpm_ros.cli import main

MATMULS = ("mm", "bmm", "addmm", "baddbmm")


class _OpCount(TorchDispatchMode):
    """Counts the aten operators dispatched inside the context (matmuls also by dtype)."""

    def __init__(self):
        super().__init__()
        self.ops, self.matmul_dtypes = collections.Counter(), collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        if name in MATMULS:
            self.matmul_dtypes[[a for a in args if isinstance(a, torch.Tensor)][-1].dtype] += 1
        return func(*args, **(kwargs or {}))


def _count_step(tr, batch, legacy: bool = False) -> _OpCount:
    from dpm_ros.benchmarks.train import _legacy_step
    step = (lambda: _legacy_step(tr, batch)) if legacy else (lambda: tr.train_step(batch))
    step()                       # first step: optimizer state is created
    with _OpCount() as count:
        step()
    return count


def test_default_cpu_step_is_the_fast_one(tmp_path):
    from dpm_ros.benchmarks.train import _batch, _make_trainer
    from dpm_ros.training.data import DataConfig
    batch, _ = _batch(DataConfig(height=32, width=48), 2)
    fast = _count_step(_make_trainer("dpm_tiny", 32, 48, 2, "bf16", tmp_path / "bf16"), batch)
    before = _count_step(_make_trainer("dpm_tiny", 32, 48, 2, "before", tmp_path / "before"), batch, legacy=True)
    # every matmul of forward and backward in bf16 (encoder, decoders, attention, heads)
    assert set(fast.matmul_dtypes) == {torch.bfloat16} and sum(fast.matmul_dtypes.values()) > 150
    # attention as two bf16 matmuls, not PyTorch's math SDPA (bf16 upcast to fp32, masking, copies)
    assert fast.ops["_scaled_dot_product_attention_math"] == 0 and fast.ops["_safe_softmax"] == 0
    assert fast.ops["bmm"] == 2 * 3 * 10     # 10 attentions (2 encoder, 2x2x2 decoder): 2 fwd + 4 bwd bmm each
    # the benchmark's matmul_bound counts every kind of product the step dispatches
    from dpm_ros.benchmarks.train import MATMUL_OPS
    assert {f"aten::{op}" for op in MATMULS if fast.ops[op]} <= set(MATMUL_OPS)
    # one fused AdamW kernel per parameter group (decay / no decay), foreach gradient clipping
    assert fast.ops["_fused_adamw_"] == 2 and fast.ops["_foreach_norm"] >= 1
    assert before.ops["_fused_adamw_"] == 0 and set(before.matmul_dtypes) == {torch.float32}
    # RoPE fused with the head split (rope.SplitHeadsRope): one addcmul_ per call forward (self-attention rotates
    # q and k in one call; cross-attention: q, then k of the fused k/v projection), one per rotated tensor backward,
    # and one stack per addcmul_ (the quarter swap) plus one for the clipping's norms and one per points_from_raw
    # (norm3's unbind, backward). apply_rope would dispatch neg/cat/mul/add instead (and no addcmul_ at all: the
    # fused AdamW has none)
    enc, dec = 2, 2                                             # dpm_tiny's depths
    rope = (enc + 2 * dec * 3) + (2 * enc + 2 * dec * 4)
    assert fast.ops["addcmul_"] == rope and fast.ops["stack"] == rope + 1 + 2, (fast.ops["addcmul_"],
                                                                                fast.ops["stack"])
    # outputs split with split/chunk, the loss map by map: no zero-filled full-size gradients of indexing
    assert fast.ops["select_backward"] == 0 and fast.ops["slice_backward"] == 0
    assert before.ops["select_backward"] > 0 and before.ops["slice_backward"] > 0       # the legacy loss's
    # LinearHead's channels-last copy instead of pixel_shuffle / pixel_unshuffle; the loss's distances as one
    # node each and every 3-vector norm as network.norm3 (torch's norm backward would add a masked_fill_ each)
    assert fast.ops["pixel_unshuffle"] == 0 and fast.ops["pixel_shuffle"] == 0
    assert fast.ops["masked_fill_"] == 0, fast.ops["masked_fill_"]
    assert fast.ops["linalg_vector_norm"] == 1, fast.ops["linalg_vector_norm"]   # the clipping's total norm
    total_fast, total_before = sum(fast.ops.values()), sum(before.ops.values())
    # fewer dispatched ops in all (0.82 before network.norm3, whose 6 ops on contiguous planes replace one slow
    # norm over a size-3 axis: more ops, less time)
    assert total_fast < 0.86 * total_before, (total_fast, total_before)


def test_bench_train_reports_configs_shares_and_a_loss_check_that_trains(tmp_path):
    out = tmp_path / "train.json"
    assert main(["bench", "train", "--preset", "dpm_tiny", "--resolution", "48x32", "--train-batch", "2",
                 "--train-threads", "1", "--train-steps", "1", "--train-rounds", "2", "--gen-pairs", "2",
                 "--share-steps", "2", "--workers", "0", "--loss-steps", "3", "--loss-pairs", "2",
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["target"] == "train" and r["resolution"] == "48x32" and r["batch"] == 2
    assert {"before_threads1", "fp32_threads1"} <= set(r["configs"])
    for k, c in r["configs"].items():
        assert c["step_cpu_s"] > 0 and c["end_to_end_pairs_per_cpu_s"] < c["pairs_per_cpu_s"]
    assert r["generator_cpu_s_per_pair"] > 0
    # the machine facts that decide what bf16 can gain: flags as /proc/cpuinfo says, both matmul rates measured
    info = open("/proc/cpuinfo").read()
    assert r["amx_bf16"] == ("amx_bf16" in info) and r["avx512_bf16"] == ("avx512_bf16" in info)
    assert r["cpu_model"]
    assert all(v > 1.0 for v in r["matmul_1024_gflops_1thread"].values())
    assert set(r["matmul_1024_gflops_1thread"]) == {"fp32", "bf16"}
    # the matrix products' part of each step: present, below the whole step, so the ceiling exceeds the speed-up
    bound = r["matmul_bound"]
    assert set(bound["matmul_cpu_s_per_step"]) == {k.rsplit("_", 1)[0] for k in r["configs"]} - {"before"}
    for mode, secs in bound["matmul_cpu_s_per_step"].items():
        assert 0 < secs < r["configs"][f"{mode}_threads1"]["step_cpu_s"]
        assert 0 < bound["matmul_share_of_step"][mode] < 1
        assert bound["speedup_if_only_matmuls_cost"][mode] > r["speedup_pairs_per_cpu_s"][f"{mode}_threads1"]
    share = r["step_share"]
    assert sum(share[p] for p in ("data", "fwd", "loss", "bwd", "opt")) == pytest.approx(1.0, abs=0.01)
    chk = r["heldout_loss_check"]
    # both runs start from the same initialisation, both trained (moved away from it), and end close together
    init = chk["init_heldout_loss"]
    assert init > 0
    for mode in ("before", "auto"):
        assert chk[mode]["heldout_loss"] != pytest.approx(init, rel=1e-4)
    assert chk["auto"]["heldout_loss"] == pytest.approx(chk["before"]["heldout_loss"], rel=0.05)


def test_bf16_step_feeds_the_loss_fp32_maps_and_matches_fp32_closely(tmp_path):
    """Under bf16 autocast the heads' outputs are cast back to fp32 (points, confidences, loss in fp32); the first
    step's loss is within 2 % of the fp32 step's on the same batch and initialisation, and the 'before' step of the
    benchmark computes the same loss as the fp32 step (same function, other kernels)."""
    from dpm_ros.benchmarks.train import _batch, _legacy_step, _make_trainer
    from dpm_ros.training.data import DataConfig
    from dpm_ros.training.loss import dpm_loss
    batch, _ = _batch(DataConfig(height=32, width=48), 2)
    losses = {}
    for mode in ("fp32", "bf16"):
        tr = _make_trainer("dpm_tiny", 32, 48, 2, mode, tmp_path / mode)
        with tr._autocast(), tr._attention_kernel():
            pred = tr.forward(batch["img1"], batch["img2"])
        assert pred["p1_t1_pi1"].dtype == torch.float32 and pred["conf_p1_t1_pi1"].dtype == torch.float32
        if mode == "bf16":   # the heads' fp32 cast also makes the memory planar: the (B, H, W, 3) maps are views
            # of contiguous (B, 3, H, W) planes and confidences are contiguous (network.norm3 and the loss read
            # contiguous planes); fp32 keeps the heads' layout (the benchmark's "before" step runs there)
            for name in ("p1_t1_pi1", "p2_t2_pi1", "p1_t2_pi1", "p2_t1_pi2", "delta_p1_t2_pi1"):
                _, h, w, _ = pred[name].shape
                assert pred[name].stride()[1:] == (w, 1, h * w), (name, pred[name].stride())
            for name in ("conf_p1_t1_pi1", "motion_logit_p1_t2_pi1"):
                assert pred[name].stride()[1:] == (pred[name].shape[2], 1), (name, pred[name].stride())
        losses[mode] = tr.train_step(batch)["loss"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)
    tr = _make_trainer("dpm_tiny", 32, 48, 2, "before", tmp_path / "before")
    pred = tr.net.forward_raw(batch["img1"], batch["img2"])
    assert float(dpm_loss(pred, batch)[0].detach()) == pytest.approx(losses["fp32"], rel=1e-5)
    _legacy_step(tr, batch)
