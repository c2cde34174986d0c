"""The optional local-correlation prior (``DPMConfig.corr_radius``): off in every preset, exact numbers, finds a
known shift, starts a warm-started network exactly where its weights were, trains, and exports to ONNX."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dpm_ros.model import PRESETS, build_model, load_model, save_model
from dpm_ros.model.network import local_correlation


def test_every_preset_is_without_the_correlation_layer():
    assert all(c.corr_radius == 0 for c in PRESETS.values())
    assert not any(k.startswith("corr_proj") for k in build_model("dpm_tiny").state_dict())
    assert "corr_radius" not in PRESETS["dpm_small"].to_dict()      # saved JSON / ONNX metadata as before
    on = build_model("dpm_tiny", corr_radius=2)
    assert on.corr_proj.weight.shape == (32, 25) and on.config.to_dict()["corr_radius"] == 2
    assert type(on.config).from_dict(on.config.to_dict()) == on.config
    for bad in (-1, 17, 1.5, True):
        with pytest.raises(ValueError, match="corr_radius"):
            build_model("dpm_tiny", corr_radius=bad)


def test_local_correlation_equals_a_direct_loop():
    g = torch.Generator().manual_seed(0)
    rows, cols, r, C = 3, 5, 2, 6
    f1, f2 = torch.randn(2, rows * cols, C, generator=g), torch.randn(2, rows * cols, C, generator=g)
    out = local_correlation(f1, f2, rows, cols, r)
    assert out.shape == (2, rows * cols, 25)
    a = f1 / f1.norm(dim=-1, keepdim=True)
    b = f2 / f2.norm(dim=-1, keepdim=True)
    ref = torch.zeros_like(out)
    for y in range(rows):
        for x in range(cols):
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    if 0 <= y + dy < rows and 0 <= x + dx < cols:
                        k = (dy + r) * (2 * r + 1) + dx + r
                        ref[:, y * cols + x, k] = (a[:, y * cols + x] * b[:, (y + dy) * cols + x + dx]).sum(-1)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    assert (ref == 0).sum() > 0      # the border case was exercised


def test_correlation_peaks_at_the_true_shift():
    """View 2 = view 1 moved by (+1 row, −2 columns): every token whose match is inside the grid peaks there."""
    rows, cols, r = 6, 8, 3
    grid = torch.randn(1, rows + 4, cols + 4, 16, generator=torch.Generator().manual_seed(1))
    f1 = grid[:, 2:2 + rows, 2:2 + cols].reshape(1, -1, 16)
    f2 = grid[:, 1:1 + rows, 4:4 + cols].reshape(1, -1, 16)        # f2[y, x] = f1's content at (y - 1, x + 2)
    out = local_correlation(f1, f2, rows, cols, r).reshape(rows, cols, 2 * r + 1, 2 * r + 1)
    inside = out[:rows - 1, 2:]                                     # tokens whose match (y + 1, x − 2) is inside
    assert (inside.flatten(2).argmax(-1) == (1 + r) * (2 * r + 1) + (-2 + r)).all()
    assert torch.allclose(inside.amax((-2, -1)), torch.tensor(1.0))


def _trainer(tmp_path, init: str, corr_radius: int):
    from dpm_ros.training.data import DataConfig
    from dpm_ros.training.trainer import TrainConfig, Trainer
    cfg = TrainConfig(preset="dpm_tiny", out=str(tmp_path / f"run{corr_radius}"), steps=2, batch=2, lr=1e-3,
                      warmup=1, precision="fp32", workers=0, init=init, log_every=1,
                      model_overrides={"corr_radius": corr_radius} if corr_radius else {},
                      data=DataConfig(height=32, width=48))
    return Trainer(cfg, resume=False, progress=False)


def test_warm_start_from_weights_without_it_is_exact_and_then_trains(tmp_path):
    torch.manual_seed(0)
    src = build_model("dpm_tiny")
    with torch.no_grad():           # a non-trivial source: move the gates off their init
        src.downstream_head3.output_layer()[1].normal_()
    path = save_model(src, tmp_path / "src.safetensors")
    trainer = _trainer(tmp_path, str(path), corr_radius=2)
    net = trainer.net.eval()
    x1, x2 = torch.randn(2, 3, 32, 48), torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        want, got = load_model(path)(x1, x2), net(x1, x2)
    for k in want:
        assert torch.equal(want[k], got[k]), k
    # the correlation reaches the decoder: one training step gives its projection a non-zero gradient and weight
    trainer.run(max_steps=1)
    assert trainer.step == 1
    assert net.corr_proj.weight.abs().max() > 0
    with torch.no_grad():
        assert not torch.equal(net.eval()(x1, x2)["p1_t1_pi1"], want["p1_t1_pi1"])
    # and a correlation-free network still refuses weights of another architecture
    other = save_model(build_model("dpm_tiny", dec_depth=1), tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not the architecture"):
        _trainer(tmp_path, str(other), corr_radius=2)


def test_train_command_passes_the_switch_and_the_data_offset():
    import argparse

    from dpm_ros.commands.train import add_arguments, config_from_args
    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_args(p.parse_args(["--preset", "dpm_tiny", "--corr-radius", "3", "--data-offset", "84648"]))
    assert cfg.model_overrides == {"corr_radius": 3} and cfg.data_offset == 84648
    assert config_from_args(p.parse_args(["--preset", "dpm_tiny"])).model_overrides == {}
    with pytest.raises(ValueError, match="corr-radius"):
        config_from_args(p.parse_args(["--preset", "dpm_tiny", "--corr-radius", "-1"]))


def test_onnx_export_with_the_correlation_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from dpm_ros.engine.export import export_onnx
    from dpm_ros.engine.onnx_model import output_names
    torch.manual_seed(0)
    net = build_model("dpm_tiny", corr_radius=2).eval()
    with torch.no_grad():
        net.corr_proj.weight.normal_(0, 0.5)   # a trained-looking layer, so the export must compute it
    info = export_onnx(net, tmp_path / "corr.onnx")
    assert info.opset >= 17
    x1, x2 = torch.randn(1, 3, 32, 48), torch.randn(1, 3, 32, 48)
    sess = ort.InferenceSession(str(tmp_path / "corr.onnx"), providers=["CPUExecutionProvider"])
    got = dict(zip(output_names(True), sess.run(None, {"img1": x1.numpy(), "img2": x2.numpy()})))
    with torch.no_grad():
        want = net(x1, x2)
        net.corr_proj.weight.zero_()
        without = net(x1, x2)["p1_t1_pi1"].numpy()
    for k in ("p1_t1_pi1", "p2_t2_pi1", "p1_t2_pi1"):
        np.testing.assert_allclose(got[k], want[k].numpy(), atol=2e-4, rtol=1e-3)
    assert np.abs(got["p1_t1_pi1"] - without).max() > 1e-2    # the correlation term is in the graph
