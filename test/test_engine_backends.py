"""Backends agree: ONNX Runtime on an exported file vs the torch module it came from (random ``dpm_tiny`` and, when
present, the shipped ``dpm_small``), on synthetic pairs: points within 1e-4 relative, confidences within 1e-3.
``auto`` picks ONNX Runtime on this GPU-less machine. Input handling (resize, normalisation) is shared and exact."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dpm_ros import ALL_POINT_MAP_NAMES, POINT_MAP_NAMES
from dpm_ros.engine import load_engine
from dpm_ros.engine.export import export_onnx
from dpm_ros.engine.onnxruntime_backend import OnnxRuntimeEngine
from dpm_ros.engine.pair_io import normalise_images, prepare_pair
from dpm_ros.engine.torch_backend import TorchEngine
from dpm_ros.model import build_model, load_model, preprocess, save_model

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "engines" / "dpm_small.safetensors"


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| / max |b| over the map."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def synthetic_images(seed: int, height: int = 48, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    from dpm_ros.synthetic import make_pair
    pair = make_pair(seed, height=height, width=width, n_objects=2, renderer="numpy")
    return pair["img1"], pair["img2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("dpm_tiny").eval()
    # give the gated heads non-trivial motion so cross-time maps differ from same-time maps
    model.reset_cross_time_heads(copy_same_time=True)
    with torch.no_grad():
        for head in (model.downstream_head3, model.downstream_head4):
            for p in head.parameters():
                p[p == model.config.motion_init_bias] = 0.0   # motion gate m = 0.5 instead of ~0.0025
                p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("engines") / "dpm_tiny.onnx"
    export_onnx(model, path)
    return model, path


def assert_parity(ref: dict, got: dict, names) -> None:
    for name in names:
        assert got[name].dtype == np.float32 and got[name].shape == ref[name].shape, name
        tol = 1e-4 if name.startswith("p") else 1e-3
        assert rel_err(got[name], ref[name]) < tol, (name, rel_err(got[name], ref[name]))


def test_onnxruntime_matches_torch_on_dpm_tiny_synthetic_pairs(tiny):
    model, path = tiny
    ort_engine = load_engine(path, backend="onnxruntime")
    torch_engine = TorchEngine(model, source="dpm_tiny")
    for seed in (1, 2):
        img1, img2 = synthetic_images(seed)
        ref, got = torch_engine.infer(img1, img2), ort_engine.infer(img1, img2)
        assert set(got) == set(ALL_POINT_MAP_NAMES) | {f"conf_{n}" for n in ALL_POINT_MAP_NAMES} | {
            "motion_prob_1", "motion_prob_2"}
        assert_parity(ref, got, got)
        assert got["p1_t1_pi1"].shape == (32, 48, 3)                    # network resolution, not input's
        assert rel_err(got["p1_t2_pi1"], got["p1_t1_pi1"]) > 1e-3       # the gated heads really moved points


def test_auto_picks_onnxruntime_without_gpu_and_logs_it(tiny, caplog):
    _, path = tiny
    with caplog.at_level(logging.INFO, logger="dpm_ros.engine.loader"):
        engine = load_engine(path)
    info = engine.info()
    assert info.backend == "onnxruntime" and info.device == "cpu" and info.precision == "fp32"
    assert (info.height, info.width, info.symmetric) == (32, 48, True) and info.extra["preset"] == "dpm_tiny"
    assert any("backend onnxruntime" in r.message and "TensorRT not used" in r.message for r in caplog.records)


def test_normalisation_matches_model_preprocess():
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (2, 16, 24, 3), dtype=np.uint8)
    np.testing.assert_allclose(normalise_images(imgs), preprocess(imgs).numpy(), rtol=0, atol=1e-6)
    assert normalise_images(np.full((1, 2, 2, 3), 255, np.uint8)).max() == pytest.approx(1.0)
    assert normalise_images(np.zeros((1, 2, 2, 3), np.uint8)).min() == pytest.approx(-1.0)


def test_inputs_of_any_size_are_area_resized_to_the_network_resolution(tiny):
    _, path = tiny
    engine = OnnxRuntimeEngine(path)
    img1, img2 = synthetic_images(4, height=96, width=144)
    small = [cv2.resize(i, (48, 32), interpolation=cv2.INTER_AREA) for i in (img1, img2)]
    a, b = engine.infer(img1, img2), engine.infer(*small)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    x1, _ = prepare_pair(img1, img2, 32, 48, "x")
    assert x1.shape == (1, 3, 32, 48) and x1.dtype == np.float32


def test_single_pass_export_has_only_the_first_four_maps(tiny, tmp_path):
    model, _ = tiny
    path = tmp_path / "single.onnx"
    info = export_onnx(model, path, symmetric=False)
    assert not info.symmetric
    engine = load_engine(path)
    img1, img2 = synthetic_images(5)
    out = engine.infer(img1, img2)
    assert set(out) == set(POINT_MAP_NAMES) | {f"conf_{n}" for n in POINT_MAP_NAMES} | {"motion_prob_1",
                                                                                         "motion_prob_2"}
    ref = TorchEngine(model, symmetric=False).infer(img1, img2)
    assert_parity(ref, out, out)


def test_export_at_another_resolution_and_with_external_data(tiny, tmp_path):
    model, _ = tiny
    path = tmp_path / "ext.onnx"
    info = export_onnx(model, path, height=24, width=32, external_data=True)
    assert (info.height, info.width) == (24, 32)
    data = tmp_path / "ext.onnx.data"
    assert info.external_files == (data,)
    assert data.is_file() and data.stat().st_size > path.stat().st_size  # the weights live in the .data file
    img1, img2 = synthetic_images(6)
    got = load_engine(path).infer(img1, img2)
    x1, x2 = prepare_pair(img1, img2, 24, 32, "ref")
    with torch.no_grad():
        ref = {k: v[0].numpy() for k, v in model(torch.from_numpy(x1), torch.from_numpy(x2)).items()}
    assert_parity(ref, got, got)


def test_torch_backend_from_saved_weights_and_bf16_autocast_keeps_heads_fp32(tiny, tmp_path):
    model, _ = tiny
    weights = tmp_path / "tiny.safetensors"
    save_model(model, weights)
    engine = load_engine(weights)
    assert engine.info().backend == "torch" and engine.info().precision == "fp32"
    img1, img2 = synthetic_images(7)
    ref = engine.infer(img1, img2)
    bf16 = TorchEngine(load_model(weights), precision="bf16")
    out = bf16.infer(img1, img2)
    assert all(v.dtype == np.float32 for v in out.values())
    assert type(bf16.model.downstream_head1).__name__ == "_Fp32Head"
    err = rel_err(out["p1_t1_pi1"], ref["p1_t1_pi1"])
    assert 0 < err < 0.1, err   # reduced precision really ran, and stayed close
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        TorchEngine(model, precision="fp16")


def test_onnxruntime_matches_torch_on_the_shipped_model(tmp_path):
    model = load_model(SHIPPED)
    path = tmp_path / "dpm_small.onnx"
    export_onnx(model, path)
    img1, img2 = synthetic_images(8, height=96, width=96)
    ref = TorchEngine(model).infer(img1, img2)
    got = load_engine(path, backend="onnxruntime").infer(img1, img2)
    assert_parity(ref, got, got)
