"""Checkpoints: our safetensors + JSON format round-trips bit-exactly; DUSt3R-format .pth files written here from a
random model with DUSt3R's key names load (scratch alias, heads 3/4 absent -> static baseline); mismatches list
every problem."""
from __future__ import annotations

import argparse
import fractions
import json

import pytest
import torch

from dpm_ros.model import (CheckpointMismatchError, build_model, load_dust3r_checkpoint, load_model,
                           read_model_meta, save_model)

DPT_TINY = dict(head_type="dpt", patch_size=16, height=32, width=48, dpt_feature_dim=16,
                dpt_layer_dims=(8, 8, 16, 16))
ARGS = ("AsymmetricCroCo3DStereo(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), "
        "head_type='dpt', output_mode='pts3d', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf))")


def images(seed=0, h=32, w=48):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g) * 2 - 1, torch.rand(1, 3, h, w, generator=g) * 2 - 1


def dust3r_state_dict(model, keep_alias="layer_rn"):
    """What a DUSt3R/MonST3R file holds: no heads 3/4, and (like some files) only one name of the scratch alias."""
    drop = "layer_rn." if keep_alias == "canonical" else "_rn."
    return {k: v.clone() for k, v in model.state_dict().items()
            if not k.startswith(("downstream_head3.", "downstream_head4."))
            and not (".scratch.layer" in k and drop in k and not (drop == "_rn." and ".layer_rn." in k))}


def test_save_load_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(3)
    model = build_model("dpm_tiny").eval()
    with torch.no_grad():  # non-trivial heads 3/4
        for p in model.downstream_head3.parameters():
            p.add_(torch.randn_like(p))
    path = save_model(model, tmp_path / "m.safetensors", record={"steps": 12, "note": "test"})
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["config"]["preset"] == "dpm_tiny" and meta["record"]["steps"] == 12
    loaded = load_model(path)
    assert loaded.config == model.config and loaded.record == {"steps": 12, "note": "test"}
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    img1, img2 = images()
    with torch.no_grad():
        out_a, out_b = model(img1, img2), loaded(img1, img2)
    assert all(torch.equal(out_a[k], out_b[k]) for k in out_a)
    # without the JSON the header metadata is enough
    (tmp_path / "m.json").unlink()
    assert read_model_meta(path)["config"] == model.config.to_dict()


def test_save_load_dpt_model_keeps_scratch_alias_shared(tmp_path):
    model = build_model("dpm_tiny", **DPT_TINY)
    path = save_model(model, tmp_path / "dpt.safetensors")
    loaded = load_model(path)
    s = loaded.downstream_head2.dpt.scratch
    assert s.layer_rn[0] is s.layer1_rn
    assert torch.equal(s.layer4_rn.weight, model.downstream_head2.dpt.scratch.layer4_rn.weight)
    with pytest.raises(ValueError, match=".safetensors"):
        save_model(model, tmp_path / "dpt.pth")


@pytest.mark.parametrize("keep_alias", ["layer_rn", "canonical"])
def test_dust3r_pth_loads_as_static_baseline(tmp_path, keep_alias):
    torch.manual_seed(5)
    source = build_model("dpm_tiny", **DPT_TINY).eval()
    sd = dust3r_state_dict(source, keep_alias)
    assert not any(k.startswith("downstream_head3") for k in sd)
    assert any(".scratch.layer_rn." in k for k in sd) == (keep_alias == "layer_rn")
    assert any(".scratch.layer1_rn." in k for k in sd) == (keep_alias == "canonical")
    path = tmp_path / "dust3r.pth"
    torch.save({"model": sd, "args": {"model": ARGS}, "epoch": 7}, path)
    model = load_dust3r_checkpoint(path, "dpm_tiny", **DPT_TINY)
    img1, img2 = images(1)
    with torch.no_grad():
        out = model(img1, img2)
        ref = source(img1, img2)
    for same in ("p1_t1_pi1", "p2_t2_pi1", "p2_t2_pi2", "p1_t1_pi2"):  # heads 1/2: the checkpoint's network
        assert torch.equal(out[same], ref[same])
    for cross, same in (("p1_t2_pi1", "p1_t1_pi1"), ("p2_t1_pi1", "p2_t2_pi1"),
                        ("p2_t1_pi2", "p2_t2_pi2"), ("p1_t2_pi2", "p1_t1_pi2")):
        assert torch.equal(out[cross], out[same])
        torch.testing.assert_close(out["conf_" + cross], out["conf_" + same])
    assert float(out["motion_prob_1"].max()) < 0.01
    # heads 3/4 trunks are copies of heads 1/2
    assert torch.equal(model.downstream_head3.dpt.scratch.refinenet2.out_conv.weight,
                       model.downstream_head1.dpt.scratch.refinenet2.out_conv.weight)


def test_dust3r_pth_with_namespace_args_and_ddp_prefix(tmp_path):
    source = build_model("dpm_tiny")
    sd = {"module." + k: v for k, v in dust3r_state_dict(source).items()}
    path = tmp_path / "monst3r.pth"
    torch.save({"model": sd, "args": argparse.Namespace(model=ARGS, lr=1e-4)}, path)
    model = load_dust3r_checkpoint(path, "dpm_tiny")
    assert torch.equal(model.downstream_head2.proj.weight, source.downstream_head2.proj.weight)


def test_dust3r_safetensors_and_preset_guess(tmp_path):
    from safetensors.torch import save_file
    source = build_model("dpm_tiny")
    path = tmp_path / "dust3r.safetensors"
    save_file(dust3r_state_dict(source), str(path))
    model = load_dust3r_checkpoint(path, "dpm_tiny")
    assert torch.equal(model.enc_blocks[1].attn.qkv.weight, source.enc_blocks[1].attn.qkv.weight)
    with pytest.raises(CheckpointMismatchError):  # guessed preset is the ViT-L one: every shape conflicts
        with torch.device("meta"):
            load_dust3r_checkpoint(path)


def test_mismatch_lists_missing_unexpected_and_shape_conflicts(tmp_path):
    sd = dust3r_state_dict(build_model("dpm_tiny"))
    del sd["enc_norm.weight"]
    sd["prediction_head.weight"] = torch.zeros(3)
    sd["decoder_embed.bias"] = torch.zeros(7)
    path = tmp_path / "bad.pth"
    torch.save({"model": sd, "args": ARGS}, path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_dust3r_checkpoint(path, "dpm_tiny")
    msg = str(err.value)
    assert "missing keys (1): enc_norm.weight" in msg
    assert "unexpected keys (1): prediction_head.weight" in msg
    assert "decoder_embed.bias: checkpoint [7] vs network [32]" in msg
    assert isinstance(err.value, ValueError)


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": fractions.Fraction(1, 3)}, path)  # a class outside the allow-list
    with pytest.raises(ValueError, match="unsafe to unpickle"):
        load_dust3r_checkpoint(path, "dpm_tiny")
    with pytest.raises(FileNotFoundError):
        load_dust3r_checkpoint(tmp_path / "absent.pth", "dpm_tiny")
