"""``dpm export`` and ``dpm build-engine`` from the command line (the cli entry point, in-process)."""
from __future__ import annotations

import torch

from dpm_ros.cli import main
from dpm_ros.engine.cache import file_sha256
from dpm_ros.engine.onnx_model import read_onnx_info
from dpm_ros.engine.tensorrt_build import tensorrt_unavailable_reason
from dpm_ros.model import build_model, save_model


def test_export_random_preset_then_from_saved_weights_with_check(tmp_path, capsys):
    out = tmp_path / "engines" / "dpm_tiny.onnx"
    assert main(["export", "--preset", "dpm_tiny", "--out", str(out), "--height", "24", "--width", "40"]) == 0
    info = read_onnx_info(out)
    assert (info.preset, info.height, info.width, info.symmetric, info.opset) == ("dpm_tiny", 24, 40, True, 18)
    assert "wrote" in capsys.readouterr().out

    torch.manual_seed(1)
    weights = tmp_path / "tiny.safetensors"
    save_model(build_model("dpm_tiny"), weights)
    out2 = tmp_path / "trained.onnx"
    assert main(["export", "--weights", str(weights), "--out", str(out2), "--single-pass", "--check"]) == 0
    info2 = read_onnx_info(out2)
    assert info2.extra["weights_sha256"] == file_sha256(weights) and not info2.symmetric
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("check")][0]
    assert float(line.rsplit(":", 1)[1]) < 1e-4   # ONNX Runtime vs torch, max relative error


def test_export_user_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "--out", str(tmp_path / "x.onnx")]) == 1
    assert "give --weights (a trained model) or --preset" in capsys.readouterr().err
    assert main(["export", "--preset", "dpm_tiny", "--out", str(tmp_path / "x.onnx"), "--height", "30"]) == 1
    assert "multiples of the patch size 8" in capsys.readouterr().err
    assert main(["export", "--weights", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "x.onnx")]) == 1
    assert "none.safetensors: weights not found" in capsys.readouterr().err


def test_build_engine_explains_when_tensorrt_cannot_run(tmp_path, capsys):
    out = tmp_path / "dpm_tiny.onnx"
    assert main(["export", "--preset", "dpm_tiny", "--out", str(out)]) == 0
    reason = tensorrt_unavailable_reason()
    if reason is None:  # a GPU machine: the real build runs and is cached
        assert main(["build-engine", "--onnx", str(out), "--precision", "fp32"]) == 0
        assert list(tmp_path.glob("dpm_tiny.*.engine"))
        return
    assert main(["build-engine", "--onnx", str(out), "--fp16", "--workspace", "2"]) == 2
    err = capsys.readouterr().err
    assert reason in err and "ONNX Runtime" in err
    assert main(["build-engine", "--onnx", str(tmp_path / "missing.onnx")]) == 1
    assert "missing.onnx: ONNX model not found" in capsys.readouterr().err
