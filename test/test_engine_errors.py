"""Bad model files and bad inputs give a ValueError (or FileNotFoundError) that names the file and the problem —
never a crash deep inside a runtime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from dpm_ros.engine import load_engine
from dpm_ros.engine.export import export_onnx
from dpm_ros.engine.onnx_model import read_onnx_info
from dpm_ros.model import build_model


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("engines") / "dpm_tiny.onnx"
    export_onnx(build_model("dpm_tiny"), path)
    return path


@pytest.fixture(scope="module")
def engine(onnx_file):
    return load_engine(onnx_file)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.onnx: model not found"):
        load_engine(tmp_path / "nothere.onnx")


def test_empty_file(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.onnx: model file is empty"):
        load_engine(tmp_path / "empty.onnx")


@pytest.mark.parametrize("fraction", [0.5, 0.97])
def test_truncated_onnx(onnx_file, tmp_path, fraction):
    data = onnx_file.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ValueError, match=r"truncated\.onnx: .*(truncated or corrupt|malformed|lacks)"):
        load_engine(bad)


def test_random_bytes(tmp_path):
    bad = tmp_path / "noise.onnx"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=r"noise\.onnx: .*(truncated or corrupt|empty graph|lacks)"):
        load_engine(bad)


def test_onnx_without_dpm_metadata(onnx_file, tmp_path):
    proto = onnx.load(str(onnx_file))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ValueError, match=r"foreign\.onnx: ONNX file lacks DPM metadata .*dpm export"):
        read_onnx_info(tmp_path / "foreign.onnx")


def test_metadata_that_disagrees_with_the_graph(onnx_file, tmp_path):
    proto = onnx.load(str(onnx_file))
    for prop in proto.metadata_props:
        if prop.key == "dpm.height":
            prop.value = "64"
    onnx.save(proto, str(tmp_path / "lying.onnx"))
    with pytest.raises(ValueError, match=r"lying\.onnx: input img1 has shape \(1, 3, 32, 48\), metadata says"):
        load_engine(tmp_path / "lying.onnx")


def test_external_data_missing_or_truncated(tmp_path):
    path = tmp_path / "ext.onnx"
    export_onnx(build_model("dpm_tiny"), path, external_data=True)
    data = tmp_path / "ext.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"ext\.onnx: ONNX Runtime could not load the model"):
        load_engine(path)
    data.unlink()
    with pytest.raises(ValueError, match=r"ext\.onnx: its external weight file\(s\) .*ext\.onnx\.data.* missing"):
        load_engine(path)


@pytest.mark.parametrize("img,problem", [
    (np.zeros((32, 48, 3), np.float32), "img1: expected dtype uint8, got float32"),
    (np.zeros((32, 48), np.uint8), r"img1: expected an \(H, W, 3\) RGB image, got shape \(32, 48\)"),
    (np.zeros((32, 48, 4), np.uint8), r"img1: expected an \(H, W, 3\) RGB image"),
    (np.zeros((4, 4, 3), np.uint8), "too small"),
])
def test_bad_images_name_the_model_file(engine, onnx_file, img, problem):
    ok = np.zeros(img.shape[:2] + (3,), np.uint8)
    with pytest.raises(ValueError, match=str(onnx_file.name) + ".*" + problem):
        engine.infer(img, ok)


def test_pair_of_different_sizes(engine):
    with pytest.raises(ValueError, match=r"img1 is 64x48 but img2 is 48x32; both images of a pair"):
        engine.infer(np.zeros((48, 64, 3), np.uint8), np.zeros((32, 48, 3), np.uint8))


@pytest.mark.parametrize("name,kwargs,problem", [
    ("m.engine", {}, "pass the .onnx file instead"),
    ("m.pt", {}, "unknown model file type '.pt'"),
    ("m.onnx", {"backend": "torch"}, "torch backend needs .safetensors"),
    ("m.safetensors", {"backend": "onnxruntime"}, "run on the torch backend"),
    ("m.onnx", {"backend": "tflite"}, "backend must be one of"),
])
def test_wrong_backend_or_file_type(tmp_path, name, kwargs, problem):
    (tmp_path / name).write_bytes(b"x" * 10)
    with pytest.raises(ValueError, match=problem):
        load_engine(tmp_path / name, **kwargs)


def test_onnxruntime_rejects_reduced_precision(onnx_file):
    with pytest.raises(ValueError, match="onnxruntime runs the exported fp32 graph"):
        load_engine(onnx_file, backend="onnxruntime", precision="fp16")


def test_tensorrt_requested_without_gpu_says_why(onnx_file):
    from dpm_ros.engine.tensorrt_build import tensorrt_unavailable_reason
    if tensorrt_unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are present here")
    with pytest.raises(RuntimeError, match="TensorRT backend unavailable: "):
        load_engine(onnx_file, backend="tensorrt")


def test_corrupt_weights_for_torch_backend(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match=r"broken\.safetensors"):
        load_engine(bad)
