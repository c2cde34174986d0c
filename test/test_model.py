"""The DPM network: output contract, symmetric batch, gated residual heads, RoPE, DUSt3R-exact parameter names."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dpm_ros import ALL_POINT_MAP_NAMES, POINT_MAP_NAMES
from dpm_ros.model import DPMConfig, build_model, preprocess
from dpm_ros.model.network import conf_from_raw, norm3, points_from_raw, split_keep_layout
from dpm_ros.model.rope import apply_rope, rope_tables

CHECKPOINTS = Path(__file__).resolve().parents[2] / "shared" / "checkpoints"
CROSS = {"p1_t2_pi1": "p1_t1_pi1", "p2_t1_pi1": "p2_t2_pi1", "p2_t1_pi2": "p2_t2_pi2", "p1_t2_pi2": "p1_t1_pi2"}


def randomise_cross_heads(model, seed=0):
    """Give heads 3/4 non-trivial delta and gate weights (a fresh model has delta = 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in (model.downstream_head3, model.downstream_head4):
            w, b, _ = head.output_layer()
            w.copy_(torch.randn(w.shape, generator=g) * 0.2)
            b.copy_(torch.randn(b.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomise_cross_heads(build_model("dpm_tiny")).eval()


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 32, 48, generator=g) * 2 - 1, torch.rand(2, 3, 32, 48, generator=g) * 2 - 1


def test_forward_names_and_shapes(tiny, pair):
    with torch.no_grad():
        out = tiny(*pair)
    expected = list(ALL_POINT_MAP_NAMES) + ["conf_" + n for n in ALL_POINT_MAP_NAMES] + ["motion_prob_1",
                                                                                       "motion_prob_2"]
    assert list(out) == expected
    for n in ALL_POINT_MAP_NAMES:
        assert out[n].shape == (2, 32, 48, 3) and out[n].dtype == torch.float32
        assert out["conf_" + n].shape == (2, 32, 48)
        assert bool((out["conf_" + n] > 1).all())
    for k in ("motion_prob_1", "motion_prob_2"):
        assert out[k].shape == (2, 32, 48)
        assert 0 <= float(out[k].min()) and float(out[k].max()) <= 1
        assert float(out[k].std()) > 1e-3  # randomised gate: not a constant
    with torch.no_grad():
        single = tiny(*pair, symmetric=False)
    assert [k for k in single if not k.startswith(("conf_", "motion"))] == list(POINT_MAP_NAMES)


def test_symmetric_batch_equals_two_single_passes(tiny, pair):
    img1, img2 = pair
    with torch.no_grad():
        sym = tiny(img1, img2)
        fwd = tiny(img1, img2, symmetric=False)
        bwd = tiny(img2, img1, symmetric=False)
    for name in POINT_MAP_NAMES:
        torch.testing.assert_close(sym[name], fwd[name], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sym["conf_" + name], fwd["conf_" + name], atol=1e-5, rtol=1e-5)
    for swapped, name in zip(ALL_POINT_MAP_NAMES[4:], POINT_MAP_NAMES):
        torch.testing.assert_close(sym[swapped], bwd[name], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sym["conf_" + swapped], bwd["conf_" + name], atol=1e-5, rtol=1e-5)
    # the passes really differ (the decoders are asymmetric), so the check above is not vacuous
    assert float((sym["p2_t2_pi2"] - sym["p1_t1_pi1"]).abs().max()) > 1e-3
    tiny.symmetric = False
    try:
        with torch.no_grad():
            assert "p2_t2_pi2" not in tiny(img1, img2)
    finally:
        tiny.symmetric = True


def test_gated_residual_heads(tiny, pair):
    """X = S + sigmoid(motion_logit_X) * delta_X for the four cross-time maps; motion_prob_* are the gates."""
    with torch.no_grad():
        raw = tiny.forward_raw(*pair)
    for cross, same in CROSS.items():
        m = torch.sigmoid(raw["motion_logit_" + cross])
        torch.testing.assert_close(raw[cross], raw[same] + m[..., None] * raw["delta_" + cross])
        assert float((raw[cross] - raw[same]).abs().max()) > 1e-3
    torch.testing.assert_close(raw["motion_prob_1"], torch.sigmoid(raw["motion_logit_p1_t2_pi1"]))
    torch.testing.assert_close(raw["motion_prob_2"], torch.sigmoid(raw["motion_logit_p2_t1_pi1"]))


def test_fresh_model_is_the_static_baseline(pair):
    model = build_model("dpm_tiny").eval()
    with torch.no_grad():
        out = model(*pair)
    for cross, same in CROSS.items():
        assert torch.equal(out[cross], out[same])
    assert torch.allclose(out["motion_prob_1"], torch.full_like(out["motion_prob_1"], 1 / (1 + np.exp(6.0))))


def test_gates_receive_gradients_from_a_fresh_model(pair):
    """Delta = 0 at start, but delta must still learn (through m > 0) and the gate must learn from its BCE."""
    model = build_model("dpm_tiny")
    raw = model.forward_raw(*pair, symmetric=False)
    target = raw["p1_t1_pi1"].detach() + 0.1
    loss = (raw["p1_t2_pi1"] - target).abs().mean() + torch.nn.functional.binary_cross_entropy_with_logits(
        raw["motion_logit_p1_t2_pi1"], torch.ones_like(raw["motion_logit_p1_t2_pi1"]))
    loss.backward()
    w, b, rows = model.downstream_head3.output_layer()
    assert float(w.grad[:3 * rows].abs().sum()) > 0      # delta rows
    assert float(b.grad[4 * rows:].abs().sum()) > 0      # motion logit rows


@pytest.mark.parametrize("head_type", ["linear", "dpt"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_every_trainable_parameter_gets_a_gradient(head_type, symmetric):
    """DistributedDataParallel (torchrun) needs every trainable parameter in the graph."""
    kw = dict(head_type="dpt", patch_size=16, dpt_feature_dim=16, dpt_layer_dims=(8, 8, 16, 16)) \
        if head_type == "dpt" else {}
    model = build_model("dpm_tiny", **kw)
    img = torch.rand(1, 3, 32, 48)
    raw = model.forward_raw(img, img.flip(-1), symmetric=symmetric)
    sum(v.float().mean() for v in raw.values()).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    assert not model.mask_token.requires_grad


def test_points_and_confidence_mappings():
    x = torch.tensor([[3.0, 0.0, 4.0], [0.0, 0.0, 0.0], [-1.0, 2.0, 2.0]])
    p = points_from_raw(x)
    torch.testing.assert_close(p.norm(dim=-1), torch.expm1(x.norm(dim=-1)))
    torch.testing.assert_close(p[0], torch.tensor([0.6, 0.0, 0.8]) * float(np.expm1(5.0)))
    assert torch.equal(p[1], torch.zeros(3))
    torch.testing.assert_close(conf_from_raw(torch.tensor([0.0, float(np.log(3.0))])), torch.tensor([2.0, 4.0]))


@pytest.mark.parametrize("planar", [False, True])
def test_norm3_equals_torch_norm_values_and_gradients(planar):
    """network.norm3 (√(x² + y² + z²) from channel slices) equals torch's vector norm over the last axis, value and
    gradient (fp64), on contiguous (B, H, W, 3) maps and on views of planar (B, 3, H, W) memory; at u = 0 the
    gradient is 0 like torch's (not NaN); points_from_raw is DUSt3R's mapping through it."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 5, 7, 3, generator=g, dtype=torch.float64) * 3
    u[0, 1, 2] = 0.0
    if planar:
        u = u.movedim(-1, 1).contiguous().movedim(1, -1)
    a, b = u.clone().requires_grad_(), u.clone().requires_grad_()
    w = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    ours, ref = norm3(a), torch.linalg.vector_norm(b, dim=-1)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    assert torch.isfinite(a.grad).all() and float(a.grad[0, 1, 2].abs().max()) == 0.0
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    d = ref[..., None]
    torch.testing.assert_close(points_from_raw(u), u / d.clamp_min(1e-8) * torch.expm1(d), rtol=1e-12, atol=1e-12)


def test_split_keep_layout_gradient_equals_autograds_in_the_inputs_layout():
    """split_keep_layout: the same views as split, and a gradient equal to autograd's (zeros for an unused part)
    but laid out like the input: for a (N, H, W, C) view of planar (N, C, H, W) memory the gradient is planar too
    (autograd's cat would make it (N, H, W, C)-contiguous)."""
    g = torch.Generator().manual_seed(1)
    planes = torch.randn(4, 5, 6, 7, generator=g, dtype=torch.float64)
    a = planes.clone().requires_grad_()
    b = planes.clone().requires_grad_()
    ours = split_keep_layout(a.permute(0, 2, 3, 1), [3, 1, 1], -1)
    ref = b.permute(0, 2, 3, 1).split([3, 1, 1], -1)
    assert all(torch.equal(x, y) for x, y in zip(ours, ref))
    weights = [torch.randn(x.shape, generator=g, dtype=torch.float64) for x in ref]
    loss_ours = (ours[0] * weights[0]).sum() + (ours[2] * weights[2]).sum()      # part 1 unused: zero gradient
    loss_ref = (ref[0] * weights[0]).sum() + (ref[2] * weights[2]).sum()
    torch.testing.assert_close(torch.autograd.grad(loss_ours, a)[0], torch.autograd.grad(loss_ref, b)[0],
                               rtol=0, atol=0)
    # the gradient that reaches the (N, H, W, C) view is planar memory (autograd.grad: no accumulation, which would
    # re-layout it), and unused parts are zero even in reused (dirty) memory
    view = a.detach().permute(0, 2, 3, 1).requires_grad_()
    parts = split_keep_layout(view, [3, 1, 1], -1)
    for _ in range(3):
        dirty = [torch.full_like(planes, float("nan")) for _ in range(8)]   # freed just before: reused memory
        del dirty
        grad = torch.autograd.grad((parts[0] * weights[0]).sum(), view, retain_graph=True)[0]
        assert grad.permute(0, 3, 1, 2).is_contiguous(), grad.stride()
        assert float(grad[..., 3:].abs().max()) == 0.0
    # along the batch, as the network splits its two passes
    halves = split_keep_layout(view.detach().requires_grad_(), [2, 2], 0)
    assert [h.shape[0] for h in halves] == [2, 2] and torch.equal(torch.cat(halves), view.detach())
    with torch.no_grad():       # inference: plain split
        assert all(p.grad_fn is None for p in split_keep_layout(a.permute(0, 2, 3, 1), [3, 1, 1], -1))


def test_rope_rotates_first_half_by_row_second_by_column():
    rows, cols, hd = 3, 5, 16
    cos, sin = rope_tables(rows, cols, hd, base=100.0)
    assert cos.dtype == torch.float32 and cos.shape == (rows * cols, hd)
    # token 7 = row 1, column 2; channel j of the row half pairs with j + 4 at angle row * 100^(-2j/8)
    n, r, c = 7, 1, 2
    for j in range(4):
        f = 100.0 ** (-2 * j / 8)
        assert cos[n, j].item() == pytest.approx(np.cos(r * f), abs=1e-6)
        assert sin[n, 8 + j].item() == pytest.approx(np.sin(c * f), abs=1e-6)


def test_rope_attention_depends_on_relative_position_only():
    rows, cols, hd = 6, 6, 16
    cos, sin = rope_tables(rows, cols, hd)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, hd, generator=g), torch.randn(1, 1, 1, hd, generator=g)

    def score(pq, pk):
        iq, ik = pq[0] * cols + pq[1], pk[0] * cols + pk[1]
        return float((apply_rope(q, cos[iq:iq + 1], sin[iq:iq + 1]) *
                      apply_rope(k, cos[ik:ik + 1], sin[ik:ik + 1])).sum())
    assert score((1, 2), (3, 1)) == pytest.approx(score((2, 4), (4, 3)), abs=1e-5)
    assert abs(score((1, 2), (3, 1)) - score((1, 2), (1, 3))) > 1e-3
    # rotation keeps the norm
    torch.testing.assert_close(apply_rope(q, cos[9:10], sin[9:10]).norm(), q.norm())


def test_split_heads_rope_equals_the_reference_formula_forward_and_backward():
    """The training fast path (RoPE fused with the head split, one autograd node, the softmax scale in q's tables)
    against reshape/permute + apply_rope in float64: outputs and the gradient of the projection output agree to
    1e-12; q, k, v come out contiguous (B, heads, N, d)."""
    from dpm_ros.model.rope import split_heads_rope
    rows, cols, heads, hd = 3, 4, 2, 16
    cos, sin = (t.double() for t in rope_tables(rows, cols, hd))
    g = torch.Generator().manual_seed(1)
    B, N = 2, rows * cols
    for parts, scales in ((3, (0.25, 1.0)), (1, (0.25,)), (2, (1.0,))):
        t = torch.randn(B, N, parts * heads * hd, generator=g, dtype=torch.float64, requires_grad=True)
        fast = split_heads_rope(t, heads, cos, sin, scales)
        ref = t.reshape(B, N, parts, heads, hd).permute(2, 0, 3, 1, 4)
        ref = [apply_rope(ref[i], cos, sin) * scales[i] if i < len(scales) else ref[i] for i in range(parts)]
        assert len(fast) == parts and all(f.is_contiguous() and f.shape == (B, heads, N, hd) for f in fast)
        for f, r in zip(fast, ref):
            torch.testing.assert_close(f, r, rtol=0, atol=1e-12)
        w = [torch.randn(f.shape, generator=g, dtype=torch.float64) for f in fast]
        gf, = torch.autograd.grad(sum((f * x).sum() for f, x in zip(fast, w)), t)
        gr, = torch.autograd.grad(sum((r * x).sum() for r, x in zip(ref, w)), t)
        torch.testing.assert_close(gf, gr, rtol=0, atol=1e-12)


def test_split_heads_rope_swaps_quarters_only_on_contiguous_memory(monkeypatch):
    """The quarter swap of a permuted or transposed view was ~20x slower than of a contiguous copy (RoPE ~30 % of a
    bf16 step on an AVX-512 CPU without AMX): forward and backward swap contiguous tensors, also when a key's
    gradient arrives transposed (as from the score matmul q·kᵀ), and the values still equal the reference."""
    from dpm_ros.model import rope
    seen = []
    swap = rope._swap_quarters
    monkeypatch.setattr(rope, "_swap_quarters", lambda x: seen.append(x.is_contiguous()) or swap(x))
    rows, cols, heads, hd = 3, 4, 2, 16
    cos, sin = (t.double() for t in rope_tables(rows, cols, hd))
    g = torch.Generator().manual_seed(2)
    t = torch.randn(2, rows * cols, 3 * heads * hd, generator=g, dtype=torch.float64, requires_grad=True)
    q, k, v = rope.split_heads_rope(t, heads, cos, sin, (0.5, 1.0))
    w = torch.randn(2, heads, hd, rows * cols, generator=g, dtype=torch.float64)
    gf, = torch.autograd.grad((q.sum(-1, keepdim=True) * k).sum() + (k * w.transpose(-2, -1)).sum()
                              + v.sum(), t)
    ref = t.reshape(2, rows * cols, 3, heads, hd).permute(2, 0, 3, 1, 4)
    rq, rk = apply_rope(ref[0], cos, sin) * 0.5, apply_rope(ref[1], cos, sin)
    gr, = torch.autograd.grad((rq.sum(-1, keepdim=True) * rk).sum() + (rk * w.transpose(-2, -1)).sum()
                              + ref[2].sum(), t)
    torch.testing.assert_close(gf, gr, rtol=0, atol=1e-12)
    assert len(seen) >= 3 and all(seen), seen      # forward (q and k together), backward q and k (+ the tables)


@pytest.mark.parametrize("block", ["encoder", "decoder"])
def test_fast_attention_path_equals_the_sdpa_path_in_fp32(block, monkeypatch):
    """The bf16 CPU path of the attention modules (fused qkv RoPE, k/v of cross-attention from one matmul, scaled
    queries, two matmuls) forced on in fp32 equals the reference path (apply_rope + SDPA) to fp32 rounding, output
    and every parameter gradient."""
    from dpm_ros.model import blocks
    torch.manual_seed(0)
    cos, sin = rope_tables(3, 4, 16)
    mod = blocks.Block(32, 2, 2.0) if block == "encoder" else blocks.DecoderBlock(32, 2, 2.0)
    x, y = torch.randn(2, 12, 32), torch.randn(2, 12, 32)

    def run():
        mod.zero_grad()
        out = mod(x, cos, sin) if block == "encoder" else mod(x, y, (cos, sin), (cos, sin))
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        return out.detach(), [p.grad.clone() for p in mod.parameters()]
    ref_out, ref_grads = run()
    monkeypatch.setattr(blocks, "_fast_cpu", lambda t: t.device.type == "cpu")
    out, grads = run()
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_linear_head_is_pixel_shuffle_in_channels_last_memory():
    """Under bf16 autocast on a CPU, LinearHead's channels-last copy (projection rows in (dy, dx, c) order) equals
    pixel_shuffle of the plain projection, and its (B, C, H, W) output is a view of (B, H, W, C) memory (what the
    network's maps read without another copy); in fp32 (inference, ONNX export) it is the plain pixel_shuffle."""
    import torch.nn.functional as F

    from dpm_ros.model.heads import LinearHead
    head = LinearHead(16, 5, 4)
    tokens = torch.randn(2, 3 * 5, 16)

    def ref():
        return F.pixel_shuffle(head.proj(tokens).transpose(1, 2).reshape(2, -1, 3, 5), 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = head([tokens], (3, 5)), ref()
    assert out.dtype == torch.bfloat16 and out.permute(0, 2, 3, 1).is_contiguous()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out = head([tokens], (3, 5))
    assert torch.equal(out, ref())


@pytest.mark.parametrize("patch,height,width", [(16, 48, 80), (8, 32, 40)])
def test_dpt_head_output_resolution(patch, height, width):
    model = build_model("dpm_tiny", head_type="dpt", patch_size=patch, height=height, width=width,
                        dpt_feature_dim=16, dpt_layer_dims=(8, 8, 16, 16)).eval()
    img = torch.zeros(1, 3, height, width)
    with torch.no_grad():
        out = model(img, img)
    assert out["p1_t1_pi1"].shape == (1, height, width, 3)
    assert out["conf_p1_t2_pi2"].shape == (1, height, width)


def test_portrait_pairs_run_transposed_like_dust3r(tiny, pair):
    """H > W: the network sees the transposed (landscape) images; outputs come back in the input's layout."""
    img1, img2 = (x[:, :, :32, :24].transpose(2, 3).contiguous() for x in pair)  # (B, 3, 24, 32) landscape
    with torch.no_grad():
        land = tiny(img1, img2)
        port = tiny(img1.transpose(2, 3), img2.transpose(2, 3))
    assert port["p1_t2_pi1"].shape == (2, 32, 24, 3) and port["motion_prob_2"].shape == (2, 32, 24)
    for k in land:
        assert torch.equal(port[k], land[k].transpose(1, 2)), k


def test_bad_inputs_raise_value_errors(tiny):
    img = torch.zeros(1, 3, 32, 48)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny(torch.zeros(1, 3, 30, 48), torch.zeros(1, 3, 30, 48))
    with pytest.raises(ValueError, match="same shape"):
        tiny(img, torch.zeros(1, 3, 32, 40))
    with pytest.raises(ValueError, match="floating-point"):
        tiny(img.to(torch.uint8), img.to(torch.uint8))
    with pytest.raises(ValueError, match="unknown model preset"):
        build_model("dpm_huge")
    with pytest.raises(ValueError, match="head dimension"):
        build_model("dpm_tiny", enc_num_heads=3)


def test_preprocess_matches_dust3r_normalisation():
    img = np.array([[[0, 128, 255]]], dtype=np.uint8)
    x = preprocess(img)
    assert x.shape == (1, 3, 1, 1) and x.dtype == torch.float32
    torch.testing.assert_close(x.flatten(), torch.tensor([-1.0, 128 / 127.5 - 1, 1.0]))
    assert preprocess(np.zeros((4, 8, 16, 3), np.uint8)).shape == (4, 3, 8, 16)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="RGB"):
        preprocess(np.zeros((8, 8, 4), np.uint8))


def test_config_dict_round_trip():
    cfg = build_model("dpm_tiny", head_type="dpt").config
    assert DPMConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config keys"):
        DPMConfig.from_dict({**cfg.to_dict(), "colour": 3})


def read_tsv(path: Path) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a .tsv of ../shared/checkpoints, {N} expanded (enc_blocks 0..23, dec_blocks* 0..11)."""
    keys = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split("\t")
        shape = tuple(int(s) for s in re.findall(r"\d+", shape))
        n = 24 if key.startswith("enc_blocks") else 12
        for i in range(n if "{N}" in key else 1):
            keys[key.replace("{N}", str(i))] = shape
    return keys


def _meta_model(preset):
    with torch.device("meta"):
        return build_model(preset)


def _need(path):
    """Skip when a ../shared/checkpoints file is missing; fail instead under DPM_REQUIRE_SHARED_DATA=1 (CI)."""
    if not path.is_file():
        msg = f"{path} not found (../shared/checkpoints; set up beside the checkout)"
        if os.environ.get("DPM_REQUIRE_SHARED_DATA"):
            pytest.fail(msg)
        pytest.skip(msg)


def test_vitl_512_dpt_has_every_dust3r_key_and_shape():
    tsv = CHECKPOINTS / "dust3r_vitl_512_dpt.keys.tsv"
    _need(tsv)
    expected = read_tsv(tsv)
    assert len(expected) == 1009
    model = _meta_model("dust3r_vitl_512_dpt")
    sd = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: sd.get(k) for k in expected} == expected
    # the rest are heads 3/4, mirroring heads 1/2 except the 5-channel output layer
    extra = {k: s for k, s in sd.items() if k not in expected}
    mirror = {k.replace("downstream_head1", "downstream_head3").replace("downstream_head2", "downstream_head4"): s
              for k, s in expected.items() if k.startswith(("downstream_head1.", "downstream_head2."))}
    assert set(extra) == set(mirror)
    for k, s in mirror.items():
        if k.endswith(("dpt.head.4.weight", "dpt.head.4.bias")):
            assert extra[k] == (5,) + s[1:] and s[0] == 4
        else:
            assert extra[k] == s, k
    # the header's parameter count: 571.17 M unique without heads 3/4
    unique = sum(p.numel() for n, p in model.named_parameters()
                 if not n.startswith(("downstream_head3.", "downstream_head4.")))
    assert round(unique / 1e6, 2) == 571.17
    assert model.downstream_head1.dpt.scratch.layer_rn[2] is model.downstream_head1.dpt.scratch.layer3_rn


def test_vitl_224_linear_heads_match_dust3r():
    tsv = CHECKPOINTS / "dust3r_vitl_224_linear.heads.tsv"
    _need(tsv)
    model = _meta_model("dust3r_vitl_224_linear")
    sd = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for k, s in read_tsv(tsv).items():
        assert sd[k] == s, k
        cross = k.replace("head1", "head3").replace("head2", "head4")
        assert sd[cross] == (s[0] * 5 // 4,) + s[1:]
    assert not any(".dpt." in k for k in sd)


def test_small_preset_size():
    model = build_model("dpm_small")
    n = sum(p.numel() for p in model.parameters())
    assert 2e6 <= n <= 6e6
