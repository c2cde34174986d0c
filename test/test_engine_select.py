"""engine/select.py: the one place an ``engine`` spec becomes a model file or an oracle bag (node, replay, batch)."""
from __future__ import annotations

from pathlib import Path

import pytest

from dpm_ros.batch_workers import engine_backend, gpus_needed
from dpm_ros.config import load_config
from dpm_ros.engine.select import default_engine_path, engine_path, open_engine, oracle_bag


def test_spec_to_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert engine_path(" ~/m.onnx ") == tmp_path / "m.onnx"
    assert engine_path("") == engine_path(None) == default_engine_path()
    assert default_engine_path().name == "dpm_small.onnx" and default_engine_path().is_file()
    assert oracle_bag("oracle:~/seq.mcap") == tmp_path / "seq.mcap"
    assert oracle_bag("m.onnx") is None and oracle_bag("") is None
    with pytest.raises(ValueError, match="oracle engine, not a model file"):
        engine_path("oracle:seq.mcap")


def test_errors_name_the_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"synthetic bag '.*nope.mcap' not found"):
        open_engine(f"oracle:{tmp_path}/nope.mcap")
    with pytest.raises(ValueError, match=r"engine file '.*nope.onnx' not found"):
        open_engine(str(tmp_path / "nope.onnx"))
    assert engine_backend(f"oracle:{tmp_path}/x", "auto") == "oracle"
    assert engine_backend("", "onnxruntime") == "onnxruntime"
    assert Path(engine_path("")).suffix == ".onnx"



def test_ray_asks_no_gpu_for_the_oracle_however_the_spec_is_spaced():
    """open_engine strips the spec; the Ray resource request must read it the same way (it did not: ' oracle:x'
    asked for a GPU)."""
    def cfg(engine, backend):
        return load_config(None, {"engine": engine, "backend": backend})

    assert not gpus_needed(cfg(" oracle:seq.mcap", "auto"), cluster_gpus=1)
    assert gpus_needed(cfg(" m.onnx", "auto"), cluster_gpus=1)
    assert not gpus_needed(cfg("", "onnxruntime"), cluster_gpus=1)
    assert gpus_needed(cfg("", "tensorrt"), cluster_gpus=0)
