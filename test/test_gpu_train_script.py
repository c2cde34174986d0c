"""scripts/gpu_train.sh end to end on the CPU at a tiny preset: continues a committed-style curve state, checkpoints,
exports weights and writes the logs into the folder it was given."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_runs_end_to_end_on_cpu_at_a_tiny_preset(tmp_path):
    from dpm_ros.model import build_model, load_model, save_model
    from dpm_ros.training.curve import FORMAT
    torch.manual_seed(5)
    src = build_model("dpm_tiny", height=32, width=48)
    save_model(src, tmp_path / "engines" / "w.safetensors")
    state = tmp_path / "training_state" / "curve.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"format": FORMAT, "preset": "dpm_tiny", "weights": "../engines/w.safetensors",
                                 "pairs_seen": 500, "cpu_hours": 0.1, "next_sample": 500,
                                 "continue": {"warmup": 2, "log_every": 1}}))
    out = tmp_path / "collect"
    # the GPU machine has torch, numpy, OpenCV, safetensors, tqdm only: the run must not need scipy
    block = tmp_path / "block" / "scipy"
    block.mkdir(parents=True)
    (block / "__init__.py").write_text("raise ImportError('scipy is not installed on the GPU machine')\n")
    env = dict(os.environ, PYTHON=str(Path(os.sys.executable)), PYTHONPATH=str(tmp_path / "block"))
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_train.sh"), str(out), "--state", str(state),
                           "--device", "cpu", "--batch", "2", "--workers", "1", "--threads", "1", "--minutes", "5",
                           "--", "--max-steps", "4"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["step"] == 4 and result["pairs_seen"] == 500 + 4 * 2
    assert result["precision"] == "torch.bfloat16"
    assert [json.loads(line)["step"] for line in open(out / "log.jsonl")] == [1, 2, 3, 4]
    ckpt = torch.load(out / "runs" / "from-500" / "last.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["config"]["data_offset"] == 500
    trained = load_model(out / "model.safetensors").state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in src.state_dict().items() if k in trained)
    assert "done (exit 0)" in (out / "gpu_train.log").read_text()
    assert "pairs_per_s" in proc.stderr
