"""The learning curve continued from a committed state: a segment stopped by SIGTERM and continued gives the same
weights as one uninterrupted segment, data continues after the pairs already seen, and `dpm curve eval` grows the
model card's table by one row per evaluation."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dpm_ros.cli import main
from dpm_ros.training import curve

STEPS = 150


def _state(tmp_path: Path) -> Path:
    """A committed-style state around saved dpm_tiny weights (standing in for engines/dpm_small.*)."""
    from dpm_ros.model import build_model, save_model
    torch.manual_seed(3)
    save_model(build_model("dpm_tiny", height=32, width=48), tmp_path / "engines" / "w.safetensors")
    state = {"format": curve.FORMAT, "preset": "dpm_tiny", "weights": "../engines/w.safetensors",
             "pairs_seen": 1000, "cpu_hours": 0.5, "next_sample": 1000,
             "continue": {"batch": 2, "lr": 1e-3, "warmup": 5, "steps": STEPS, "workers": 0, "threads": 1,
                          "ckpt_every": 40, "ckpt_minutes": 0.0, "log_every": 1}}
    path = tmp_path / "training_state" / "curve.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(state))
    return path


def _cli(*args: str) -> list[str]:
    # --nice 0: a test on a loaded machine must not starve itself (the default is nice 19)
    return [sys.executable, "-m", "dpm_ros.cli", "curve", *args, "--nice", "0"]


def _steps_logged(log: Path) -> int:
    if not log.exists():
        return 0
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1])["step"] if lines else 0


def test_sigterm_and_continue_equals_one_uninterrupted_segment(tmp_path):
    state = _state(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    # one uninterrupted segment
    straight = tmp_path / "straight"
    proc = subprocess.run(_cli("continue", "--foreground", "--no-progress", "--state", str(state), "--runs",
                               str(straight)), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the same segment, stopped by SIGTERM part-way, then continued by the same command
    stopped = tmp_path / "stopped"
    log = stopped / "from-1000" / "log.jsonl"
    p = subprocess.Popen(_cli("continue", "--foreground", "--no-progress", "--state", str(state), "--runs",
                              str(stopped)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while _steps_logged(log) < 12 and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert p.poll() is None, "the segment ended before it could be stopped"
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=120)
    assert p.returncode == 0
    ckpt = torch.load(stopped / "from-1000" / "last.pt", weights_only=True)
    assert 12 <= ckpt["step"] < STEPS, "SIGTERM must stop the segment part-way and checkpoint"
    proc = subprocess.run(_cli("continue", "--foreground", "--no-progress", "--state", str(state), "--runs",
                               str(stopped)), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = torch.load(straight / "from-1000" / "last.pt", weights_only=True)
    b = torch.load(stopped / "from-1000" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == STEPS
    for name, w in a["model"].items():
        assert torch.equal(w, b["model"][name]), name
    # the segment started from the committed weights and read data after the pairs already seen
    cfg = json.loads((stopped / "from-1000" / "train_config.json").read_text())
    assert cfg["data_offset"] == 1000 and cfg["schedule"] == "constant"
    assert a["cpu_s"] > 0

    # one row per evaluation in the model card's table
    card = tmp_path / "card.md"
    card.write_text("# card\n\nsome text\n")
    for n in (1, 2):
        assert main(["curve", "eval", "--state", str(state), "--runs", str(stopped), "--card", str(card),
                     "--pairs", "3", "--cache-dir", str(tmp_path / "cache")]) == 0
        rows = [ln for ln in card.read_text().splitlines() if ln.startswith("| 1,300 |")]
        assert len(rows) == n                       # pairs seen: 1000 committed + 150 steps x 2
    assert card.read_text().startswith("# card\n\nsome text\n")
    cells = rows[0].split("|")
    assert 0.0 < float(cells[4]) < 5.0              # Lrel of an (untrained) tiny model: finite, positive
    # the parallax column is the diagnostic's gain on the same pairs, computed here independently (all 3 variants)
    from dpm_ros.training import evaluate as ev
    from dpm_ros.training.curve import newest_checkpoint
    from dpm_ros.training.diagnose import parallax_gain
    net = ev.load_weights(newest_checkpoint(stopped))
    samples = ev.load_eval_set(3, net.config.height, net.config.width, tmp_path / "cache", progress=False)
    gain = parallax_gain(lambda x: ev.predict_model(net, x, progress=False), samples)["gain"]["p1_t1_pi1"]
    assert abs(float(cells[5]) - gain) <= 5e-5 and cells[5].strip()[0] in "+-"


def test_adopt_advances_the_committed_state_and_the_next_segment_reads_new_data(tmp_path):
    state = _state(tmp_path)
    runs = tmp_path / "runs"
    assert main(["curve", "continue", "--foreground", "--no-progress", "--state", str(state), "--runs", str(runs),
                 "--steps", "6"]) == 0
    ckpt = runs / "from-1000" / "last.pt"
    before = (tmp_path / "engines" / "w.safetensors").read_bytes()
    assert main(["curve", "eval", "--adopt", "--state", str(state), "--runs", str(runs), "--card",
                 str(tmp_path / "card.md"), "--pairs", "2", "--cache-dir", str(tmp_path / "cache")]) == 0
    new = json.loads(state.read_text())
    assert new["pairs_seen"] == 1012 and new["next_sample"] == 1012
    assert (tmp_path / "engines" / "w.safetensors").read_bytes() != before
    from dpm_ros.model import load_model
    adopted = load_model(tmp_path / "engines" / "w.safetensors").state_dict()
    trained = torch.load(ckpt, weights_only=True)["model"]
    for name, w in adopted.items():
        assert torch.equal(w, trained[name]), name
    # the next segment continues from the adopted weights and the next unseen sample
    assert curve.segment_dir(new, runs).name == "from-1012"
    cfg = curve.segment_config(new, state, runs)
    assert cfg.data_offset == 1012 and cfg.init.endswith("w.safetensors")


def test_adopt_keeps_the_committed_dtype_history_and_file_mode(tmp_path):
    """An fp16 state stays fp16 (half the bytes in every commit), its record keeps its history, and the files keep
    the mode a plain write gives (mkstemp and safetensors both create 0600)."""
    from dpm_ros.model import load_model, save_model
    from dpm_ros.model.checkpoint import read_model_meta, stored_dtype
    state = _state(tmp_path)
    weights = tmp_path / "engines" / "w.safetensors"
    save_model(load_model(weights), weights, record={"history": "run 1"}, dtype=torch.float16)
    assert stored_dtype(weights) == torch.float16
    runs = tmp_path / "runs"
    assert main(["curve", "continue", "--foreground", "--no-progress", "--state", str(state), "--runs", str(runs),
                 "--steps", "4"]) == 0
    umask = os.umask(0)
    os.umask(umask)
    curve.adopt(runs / "from-1000" / "last.pt", state, {"pairs_seen": 1008, "cpu_hours": 0.6, "next_sample": 1008,
                                                        "step": 4})
    assert stored_dtype(weights) == torch.float16
    record = read_model_meta(weights)["record"]
    assert record["history"] == "run 1" and record["curve"]["segment_step"] == 4
    assert record["curve"]["stored_as"] == "float16"
    trained = torch.load(runs / "from-1000" / "last.pt", weights_only=True)["model"]
    adopted = load_model(weights).state_dict()
    assert all(torch.equal(w.float(), trained[n].half().float()) for n, w in adopted.items())
    for path in (weights, weights.with_suffix(".json"), state):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_continuation_at_another_resolution_and_bad_state_is_refused(tmp_path):
    state = _state(tmp_path)
    cfg = curve.segment_config(curve.load_state(state), state, tmp_path / "runs", {"height": 48, "width": 64})
    assert (cfg.data.height, cfg.data.width) == (48, 64)
    assert (cfg.data.p_flying, cfg.data.p_room_modes, cfg.data.p_augment) == (0.0, 0.0, 0.0)   # rooms-only default
    mix = curve.segment_config(curve.load_state(state), state, tmp_path / "runs",
                               {"p_flying": 0.5, "p_room_modes": 0.5, "p_augment": 0.8})     # issue 10's scene mix
    assert (mix.data.p_flying, mix.data.p_room_modes, mix.data.p_augment) == (0.5, 0.5, 0.8)
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="bad.json"):
        curve.load_state(bad)
    assert main(["curve", "eval", "--runs", str(tmp_path / "none"), "--state", str(state)]) == 1


def test_time_based_checkpoints_and_wall_time_limit(tmp_path):
    """ckpt_minutes checkpoints on wall time alone (here: after every step), max_minutes stops a call early."""
    from dpm_ros.training.data import DataConfig
    from dpm_ros.training.trainer import Trainer, TrainConfig
    cfg = TrainConfig(preset="dpm_tiny", out=str(tmp_path / "r"), steps=50, batch=2, warmup=2, ckpt_every=10 ** 6,
                      ckpt_minutes=1e-9, log_every=1, workers=0, data=DataConfig(height=32, width=48))
    tr = Trainer(cfg, resume=False, progress=False)
    saved = []
    real = tr.checkpoint
    tr.checkpoint = lambda: saved.append(tr.step) or real()
    tr.run(max_steps=3)
    assert saved == [1, 2, 3, 3]                     # one per step on time, plus the final one
    assert len(tr.run(max_minutes=0.0)) == 1          # the limit is checked after each step
