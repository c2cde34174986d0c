"""Training loop: data is a pure function of the sample index, a short dpm_tiny run lowers the loss, exact resume,
the schedule, and `dpm train` end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dpm_ros import ALL_POINT_MAP_NAMES
from dpm_ros.training.data import (TRAIN_SEED_BASE, DataConfig, StepBatches, SyntheticPairs, generate_sample,
                                   motion_scale_at, sample_kind)
from dpm_ros.training.evaluate import eval_seeds
from dpm_ros.training.loss import KIND_DYNAMIC, KIND_SAME_TIME, KIND_STATIC
from dpm_ros.training.trainer import Trainer, TrainConfig, lr_factor

TINY = dict(height=32, width=48)


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(preset="dpm_tiny", out=str(tmp_path / "run"), steps=20, batch=4, lr=2e-3, warmup=3, ckpt_every=5,
                log_every=1, threads=1, workers=0, data=DataConfig(**TINY, curriculum_steps=10))
    base.update(kw)
    return TrainConfig(**base)


def test_sample_is_a_pure_function_of_its_index():
    ds = SyntheticPairs(DataConfig(**TINY), global_batch=4)
    a, b = ds[13], ds[13]
    for key in ALL_POINT_MAP_NAMES + ("img1", "valid1", "moving2", "kind"):
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(ds[14]["img1"], a["img1"])


def test_kinds_follow_the_configured_shares_and_static_has_zero_flow():
    cfg = DataConfig(**TINY, p_same_time=0.2, p_static=0.3)
    kinds = np.array([sample_kind(i, cfg) for i in range(2000)])
    assert abs((kinds == KIND_STATIC).mean() - 0.3) < 0.04
    assert abs((kinds == KIND_SAME_TIME).mean() - 0.2) < 0.04
    assert abs((kinds == KIND_DYNAMIC).mean() - 0.5) < 0.04
    s = generate_sample(TRAIN_SEED_BASE + 5, cfg, KIND_STATIC)
    v = s["valid1"]
    assert np.abs(s["p1_t2_pi1"][v] - s["p1_t1_pi1"][v]).max() < 1e-5
    assert not s["moving1"].any() and not s["moving2"].any()
    d = generate_sample(TRAIN_SEED_BASE + 5, cfg, KIND_DYNAMIC)
    assert d["moving1"].any()


def test_training_and_evaluation_seeds_are_disjoint():
    assert max(eval_seeds(200)) < TRAIN_SEED_BASE
    with pytest.raises(ValueError):
        eval_seeds(TRAIN_SEED_BASE + 1)


def test_step_batches_are_disjoint_across_ranks_and_resume_where_they_stopped():
    full = list(StepBatches(0, 4, local_batch=3, rank=0, world=2)) + list(StepBatches(0, 4, 3, rank=1, world=2))
    flat = [i for b in full for i in b]
    assert sorted(flat) == list(range(24))
    assert list(StepBatches(2, 4, 3, rank=0, world=1)) == [[6, 7, 8], [9, 10, 11]]


def test_curriculum_goes_from_large_to_realistic_motion():
    cfg = DataConfig(motion_scale_start=3.0, curriculum_steps=100)
    assert motion_scale_at(0, cfg) == 3.0
    assert motion_scale_at(50, cfg) == pytest.approx(2.0)
    assert motion_scale_at(100, cfg) == 1.0 and motion_scale_at(10 ** 6, cfg) == 1.0


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, warmup=10, min_lr_ratio=0.05)
    f = [lr_factor(s, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert lr_factor(100, cfg) == pytest.approx(0.05)


def test_short_tiny_run_lowers_the_loss(tmp_path):
    trainer = Trainer(_cfg(tmp_path, steps=24), resume=False, progress=False)
    hist = trainer.run()
    losses = [h["loss"] for h in hist]
    assert len(losses) == 24
    assert np.mean(losses[-4:]) < 0.85 * np.mean(losses[:4])
    logged = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert [r["step"] for r in logged] == list(range(1, 25))


def test_resume_reproduces_the_next_step_exactly(tmp_path):
    straight = Trainer(_cfg(tmp_path / "a", steps=8), resume=False, progress=False).run()
    first = Trainer(_cfg(tmp_path / "b", steps=8), resume=False, progress=False)
    first.run(max_steps=5)          # stops after step 5 and checkpoints
    second = Trainer(_cfg(tmp_path / "b", steps=8), resume=True, progress=False)
    assert second.step == 5
    rest = second.run()
    assert [h["step"] for h in rest] == [6, 7, 8]
    for h_straight, h_resumed in zip(straight[5:], rest):
        assert h_resumed["loss"] == h_straight["loss"]
        assert h_resumed["lr"] == h_straight["lr"]


def test_worker_processes_give_the_same_batches_as_the_main_process(tmp_path):
    in_main = Trainer(_cfg(tmp_path / "a", steps=3, workers=0), resume=False, progress=False).run()
    in_workers = Trainer(_cfg(tmp_path / "b", steps=3, workers=1), resume=False, progress=False).run()
    assert [h["loss"] for h in in_main] == [h["loss"] for h in in_workers]


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    Trainer(_cfg(tmp_path, steps=2), resume=False, progress=False).run()
    other = _cfg(tmp_path, steps=2, data=DataConfig(height=64, width=64))
    with pytest.raises(ValueError, match="checkpoint"):
        Trainer(other, resume=True, progress=False)


def test_init_starts_a_new_run_from_saved_weights_at_another_resolution(tmp_path):
    """--init: a new run (step 0) whose network equals the saved weights exactly, here at a new resolution; a file of
    another architecture is refused with the file named."""
    from dpm_ros.model import build_model, save_model

    src = build_model("dpm_tiny", height=32, width=48)
    torch.nn.init.normal_(next(src.parameters()))           # not the fresh-init values
    save_model(src, tmp_path / "w.safetensors")
    run = Trainer(_cfg(tmp_path, init=str(tmp_path / "w.safetensors"), data=DataConfig(height=48, width=64)),
                  resume=False, progress=False)
    assert run.step == 0
    for (name, a), b in zip(src.state_dict().items(), run.net.state_dict().values()):
        assert torch.equal(a, b), name
    bad = torch.nn.Linear(2, 2)
    torch.save(bad.state_dict(), tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt is not a readable safetensors model file"):
        Trainer(_cfg(tmp_path / "x", init=str(tmp_path / "bad.pt")), resume=False, progress=False)


def test_dpm_train_command_writes_checkpoint_log_and_weights(tmp_path):
    from dpm_ros.cli import main
    from dpm_ros.model.checkpoint import load_model
    out = tmp_path / "cli"
    rc = main(["train", "--preset", "dpm_tiny", "--steps", "3", "--batch", "2", "--out", str(out), "--workers", "0",
               "--warmup", "1", "--no-progress", "--log-every", "1"])
    assert rc == 0
    assert (out / "last.pt").is_file() and (out / "log.jsonl").is_file()
    net = load_model(out / "model.safetensors")
    assert net.config.preset == "dpm_tiny"
    meta = json.loads((out / "model.json").read_text())
    assert meta["record"]["steps"] == 3
    assert main(["train", "--preset", "dpm_tiny", "--steps", "0", "--out", str(out)]) == 1


@pytest.mark.slow
def test_torchrun_ddp_on_cpu_trains_in_lockstep(tmp_path):
    """Two processes under torchrun (gloo): disjoint data, averaged gradients, one checkpoint and log by rank 0."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed beside this Python")
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000), "-m",
           "dpm_ros.cli", "train", "--preset", "dpm_tiny", "--steps", "3", "--batch", "2", "--out", str(out),
           "--workers", "0", "--no-progress", "--log-every", "1", "--warmup", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    logged = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [r["step"] for r in logged] == [1, 2, 3]          # rank 0 only
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] == 3


def test_installed_dpm_executable_trains_with_worker_processes(tmp_path):
    """The `dpm` executable the build installs (not `python -m`): spawn data workers re-run the main script, which
    must not start a second `dpm train` inside each worker (the script's __main__ guard)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    exe = Path(sys.executable).with_name("dpm")
    if not exe.exists():
        exe = Path(shutil.which("dpm") or "")
    if not exe.is_file():
        pytest.skip("the dpm executable is not installed beside this Python (pip install . or scripts/setup.sh)")
    out = tmp_path / "exe"
    cmd = [str(exe), "train", "--preset", "dpm_tiny", "--height", "32", "--width", "48", "--steps", "2", "--batch",
           "2", "--out", str(out), "--workers", "1", "--no-progress", "--log-every", "1", "--warmup", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [json.loads(line)["step"] for line in open(out / "log.jsonl")] == [1, 2]
