"""scripts/gpu_validate.sh runs its CPU-only steps anywhere: versions, the FP16-with-islands ONNX through ONNX Runtime,
and every GPU step reported as skipped with the reason (here: no TensorRT runtime / no GPU)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_validate_cpu_steps_write_one_report(tmp_path):
    from dpm_ros.engine.tensorrt_build import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT runs here: the full validation is scripts/gpu_validate.sh, not a test")
    out = tmp_path / "report.json"
    proc = subprocess.run([str(ROOT / "scripts" / "gpu_validate.sh"), "--skip-tests", "--out", str(out),
                           "--budget-s", "300"], cwd=ROOT, capture_output=True, text=True, timeout=280,
                          env={**os.environ})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    steps = report["steps"]
    assert steps["versions"]["status"] == "ok"
    assert steps["versions"]["result"]["tensorrt_unavailable_reason"] == reason
    assert steps["tests"] == {"status": "skipped", "reason": "--skip-tests", "seconds": steps["tests"]["seconds"]}
    islands = steps["fp16_islands_onnxruntime_cpu"]
    assert islands["status"] == "ok"
    errors = islands["result"]["ort_cpu_fp16_vs_fp32"]
    assert len(errors) == 18 and all(e["nan"] == e["inf"] == 0 and e["max_rel_err"] < 1e-2 for e in errors.values())
    gpu_steps = [n for n in steps if n not in ("versions", "tests", "fp16_islands_onnxruntime_cpu")]
    assert len(gpu_steps) == 10
    for name in gpu_steps:
        assert steps[name]["status"] == "skipped" and reason in steps[name]["reason"], name
    assert report["summary"]["fp16_islands_onnxruntime_cpu"] == "ok"
