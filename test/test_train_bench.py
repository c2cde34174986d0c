"""`dpm bench train` at a tiny preset: every configuration is timed, the speed-ups are ratios of the measured
numbers, the shares add up, and the held-out loss check trains both steps from the same initialisation."""
from __future__ import annotations

import json

import pytest
import torch

from dpm_ros.cli import main


def test_bench_train_reports_before_after_shares_and_the_loss_check(tmp_path, capsys):
    out = tmp_path / "train.json"
    assert main(["bench", "train", "--preset", "dpm_tiny", "--resolution", "48x32", "--train-batch", "2",
                 "--train-threads", "1", "--train-steps", "1", "--train-rounds", "2", "--gen-pairs", "2",
                 "--share-steps", "2", "--workers", "0", "--loss-steps", "2", "--loss-pairs", "2",
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["target"] == "train" and r["resolution"] == "48x32" and r["batch"] == 2
    assert {"before_threads1", "fp32_threads1"} <= set(r["configs"])
    for k, c in r["configs"].items():
        assert c["step_cpu_s"] > 0 and c["pairs_per_cpu_s"] == pytest.approx(2 / c["step_cpu_s"], rel=0.02)
        assert r["speedup_pairs_per_cpu_s"][k] == pytest.approx(
            c["pairs_per_cpu_s"] / r["configs"]["before_threads1"]["pairs_per_cpu_s"], rel=0.02)
        assert c["end_to_end_pairs_per_cpu_s"] < c["pairs_per_cpu_s"]       # generation costs CPU too
    assert r["generator_cpu_s_per_pair"] > 0
    share = r["step_share"]
    assert sum(share[p] for p in ("data", "fwd", "loss", "bwd", "opt")) == pytest.approx(1.0, abs=0.01)
    chk = r["heldout_loss_check"]
    assert chk["before"]["heldout_loss"] > 0 and chk["auto"]["heldout_loss"] > 0
    assert chk["ratio_default_to_before"] == pytest.approx(
        chk["auto"]["heldout_loss"] / chk["before"]["heldout_loss"], rel=1e-3)


def test_bf16_step_feeds_the_loss_fp32_maps_and_matches_fp32_closely(tmp_path):
    """Under bf16 autocast the heads' outputs are cast back to fp32 (points, confidences, loss in fp32); the first
    step's loss is within 2 % of the fp32 step's on the same batch and initialisation."""
    from dpm_ros.benchmarks.train import _batch, _make_trainer
    from dpm_ros.training.data import DataConfig
    batch, _ = _batch(DataConfig(height=32, width=48), 2)
    losses = {}
    for mode in ("fp32", "bf16"):
        tr = _make_trainer("dpm_tiny", 32, 48, 2, mode, tmp_path / mode)
        with tr._autocast(), tr._attention_kernel():
            pred = tr.forward(batch["img1"], batch["img2"])
        assert pred["p1_t1_pi1"].dtype == torch.float32 and pred["conf_p1_t1_pi1"].dtype == torch.float32
        losses[mode] = tr.train_step(batch)["loss"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)
