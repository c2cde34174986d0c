"""DPMNet: DUSt3R's two-view network (shared ViT encoder with 2D RoPE, two cross-attending decoders) with four
heads. Heads 1/2 are DUSt3R's (same-time maps); heads 3/4 are gated residual cross-time heads:
``p1_t2_pi1 = p1_t1_pi1 + m * delta`` (head 3, view-1 tokens) and ``p2_t1_pi1 = p2_t2_pi1 + m * delta`` (head 4)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dpm_ros import ALL_POINT_MAP_NAMES
from dpm_ros.model.blocks import Block, DecoderBlock, LayerNorm, PatchEmbed
from dpm_ros.model.config import DPMConfig, preset_config
from dpm_ros.model.heads import DPTHead, LinearHead
from dpm_ros.model.rope import rope_tables

SAME_TIME_CHANNELS = 4   # x, y, z (before the expm1 depth mapping), confidence logit
CROSS_TIME_CHANNELS = 5  # delta x, y, z (raw, model units), confidence logit, motion logit

# (head, pass) -> map name; pass 0 is Φ(I1, I2), pass 1 is Φ(I2, I1). Head order as in dpm_ros.POINT_MAP_NAMES.
_PASS_NAMES = (
    {"head1": "p1_t1_pi1", "head3": "p1_t2_pi1", "head4": "p2_t1_pi1", "head2": "p2_t2_pi1"},
    {"head1": "p2_t2_pi2", "head3": "p2_t1_pi2", "head4": "p1_t2_pi2", "head2": "p1_t1_pi2"},
)


def norm3(u: torch.Tensor) -> torch.Tensor:
    """‖u‖ over the last axis (size 3): (..., 3) -> (...). Equal to ``torch.linalg.vector_norm(u, dim=-1)`` and
    its gradient (0 at u = 0; norms below 1e-15 read as 1e-15), computed as √(x² + y² + z²) from the three channel
    slices: on planar memory (a (B, H, W, 3) view of (B, 3, H, W) planes, as the training path keeps its maps)
    every op reads contiguous planes, ~5x faster than torch's norm over a size-3 inner axis and ~100x faster than
    its norm over an outer one (CPU, 128x96 maps)."""
    x, y, z = u.unbind(-1)
    squared = torch.addcmul(torch.addcmul(x * x, y, y), z, z)
    return torch.sqrt(squared.clamp_min_(1e-30))   # clamp: gradient 0 (not NaN) at u = 0


def points_from_raw(xyz: torch.Tensor) -> torch.Tensor:
    """DUSt3R's depth mapping: ``direction(x) * expm1(|x|)`` along the last axis (3). The ONNX export keeps
    torch's norm (the exported graph's ReduceL2); everywhere else :func:`norm3`."""
    if torch.onnx.is_in_onnx_export():
        d = xyz.norm(dim=-1, keepdim=True)
    else:
        d = norm3(xyz)[..., None]
    return xyz * (torch.expm1(d) / d.clamp_min(1e-8))   # the per-pixel factor first: one pass over the 3 channels


def conf_from_raw(c: torch.Tensor) -> torch.Tensor:
    """DUSt3R's confidence mapping ``1 + exp(c)`` (> 1)."""
    return 1.0 + torch.exp(c)


class _SplitKeepLayout(torch.autograd.Function):
    """``t.split(sizes, dim)`` whose gradient is assembled in ``t``'s own memory layout, one copy per part (zeros
    for parts without a gradient). Autograd's own split gradient is a ``cat``, which allocates contiguous memory:
    for the training path's (N, H, W, C) views of planar (N, C, H, W) memory that is an interleaving copy, and
    every element-wise op of the backward after it would mix layouts (measured: ~4 % of a bf16 CPU step)."""

    @staticmethod
    def forward(ctx, t, sizes, dim):
        ctx.layout = (t.shape, t.stride(), t.dtype, t.device)
        ctx.sizes, ctx.dim = sizes, dim
        ctx.set_materialize_grads(False)    # unused parts arrive as None (no zero tensors allocated for them)
        return tuple(t.split(sizes, dim))

    @staticmethod
    def backward(ctx, *grads):
        shape, stride, dtype, device = ctx.layout
        g = torch.empty_strided(shape, stride, dtype=dtype, device=device)
        for part, grad in zip(g.split(ctx.sizes, ctx.dim), grads):
            if grad is None:
                part.zero_()
            else:
                part.copy_(grad)
        return g, None, None


def split_keep_layout(t: torch.Tensor, sizes: list[int], dim: int) -> tuple[torch.Tensor, ...]:
    """``t.split(sizes, dim)`` (views); when autograd records, through :class:`_SplitKeepLayout` (the gradient keeps
    ``t``'s memory layout). Inference and the ONNX export take plain ``split``."""
    if torch.is_grad_enabled() and t.requires_grad and not torch.onnx.is_in_onnx_export():
        return _SplitKeepLayout.apply(t, sizes, dim)
    return t.split(sizes, dim)


class DPMNet(nn.Module):
    """Dynamic Point Map network. See :mod:`dpm_ros.model` for the input/output contract."""

    def __init__(self, config: DPMConfig):
        super().__init__()
        c = self.config = config
        self.symmetric = True
        self._rope_cache: dict = {}
        self.patch_embed = PatchEmbed(c.patch_size, c.enc_embed_dim)
        # CroCo's masked-modelling token: unused here, kept so DUSt3R files load; frozen so DDP needs no
        # find_unused_parameters
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.dec_embed_dim), requires_grad=False)
        self.enc_blocks = nn.ModuleList([Block(c.enc_embed_dim, c.enc_num_heads, c.mlp_ratio)
                                         for _ in range(c.enc_depth)])
        self.enc_norm = LayerNorm(c.enc_embed_dim)
        self.decoder_embed = nn.Linear(c.enc_embed_dim, c.dec_embed_dim)
        if c.corr_radius:   # explicit correspondence prior (off in every preset; see local_correlation)
            self.corr_proj = nn.Linear((2 * c.corr_radius + 1) ** 2, c.dec_embed_dim)
        self.dec_blocks = nn.ModuleList([DecoderBlock(c.dec_embed_dim, c.dec_num_heads, c.mlp_ratio)
                                         for _ in range(c.dec_depth)])
        self.dec_blocks2 = nn.ModuleList([DecoderBlock(c.dec_embed_dim, c.dec_num_heads, c.mlp_ratio)
                                          for _ in range(c.dec_depth)])
        self.dec_norm = LayerNorm(c.dec_embed_dim)
        self.downstream_head1 = self._make_head(SAME_TIME_CHANNELS)
        self.downstream_head2 = self._make_head(SAME_TIME_CHANNELS)
        self.downstream_head3 = self._make_head(CROSS_TIME_CHANNELS)
        self.downstream_head4 = self._make_head(CROSS_TIME_CHANNELS)
        self.apply(_init_weights)
        nn.init.normal_(self.mask_token, std=0.02)
        self.reset_cross_time_heads(copy_same_time=False)
        if c.corr_radius:   # zero: a network warm-started from weights without it computes exactly what they did
            nn.init.zeros_(self.corr_proj.weight)
            nn.init.zeros_(self.corr_proj.bias)

    def _make_head(self, out_channels: int) -> nn.Module:
        c = self.config
        if c.head_type == "linear":
            return LinearHead(c.dec_embed_dim, out_channels, c.patch_size)
        return DPTHead(c.enc_embed_dim, c.dec_embed_dim, c.dec_depth, out_channels, c.patch_size,
                       c.dpt_layer_dims, c.dpt_feature_dim)

    @torch.no_grad()
    def reset_cross_time_heads(self, copy_same_time: bool = True) -> None:
        """Make heads 3/4 the static baseline: delta = 0 exactly and motion logit = ``config.motion_init_bias``
        (m ≈ 0), so every cross-time map equals its same-time map. With ``copy_same_time`` the trunks and the
        confidence channel are copied from heads 1/2 (the paper's initialisation from DUSt3R/MonST3R weights)."""
        for cross, same in ((self.downstream_head3, self.downstream_head1),
                            (self.downstream_head4, self.downstream_head2)):
            w, b, rows = cross.output_layer()
            if copy_same_time:
                ws, bs, _ = same.output_layer()
                skip = {id(w), id(b)}
                src = dict(same.named_parameters())
                for name, p in cross.named_parameters():
                    if id(p) not in skip:
                        p.copy_(src[name])
                w[3 * rows:4 * rows].copy_(ws[3 * rows:4 * rows])
                b[3 * rows:4 * rows].copy_(bs[3 * rows:4 * rows])
            w[:3 * rows].zero_()
            b[:3 * rows].zero_()
            w[4 * rows:].zero_()
            b[4 * rows:].fill_(self.config.motion_init_bias)

    def _rope(self, rows: int, cols: int, head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (rows, cols, head_dim, str(device))
        if key not in self._rope_cache:
            self._rope_cache[key] = rope_tables(rows, cols, head_dim, self.config.rope_base, device=device)
        return self._rope_cache[key]

    def _check_inputs(self, img1: torch.Tensor, img2: torch.Tensor) -> None:
        for name, img in (("img1", img1), ("img2", img2)):
            if not isinstance(img, torch.Tensor) or img.ndim != 4 or img.shape[1] != 3:
                shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
                raise ValueError(f"{name}: expected a float tensor (B, 3, H, W) from dpm_ros.model.preprocess, "
                                 f"got {shape}")
            if not img.is_floating_point():
                raise ValueError(f"{name}: expected a floating-point tensor (use dpm_ros.model.preprocess), "
                                 f"got {img.dtype}")
        if img1.shape != img2.shape:
            raise ValueError(f"img1 {tuple(img1.shape)} and img2 {tuple(img2.shape)} must have the same shape")
        p = self.config.patch_size
        if img1.shape[2] % p or img1.shape[3] % p:
            raise ValueError(f"image size {img1.shape[2]}x{img1.shape[3]} must be a multiple of the patch size {p} "
                             f"(the model was built for {self.config.height}x{self.config.width})")

    def forward_raw(self, img1: torch.Tensor, img2: torch.Tensor, symmetric: bool | None = None,
                    match_heads: int = 0) -> dict[str, torch.Tensor]:
        """Everything :meth:`forward` returns plus, for each cross-time map X, ``delta_X`` (B, H, W, 3): the
        displacement of the gated residual head, and ``motion_logit_X`` (B, H, W): the pre-sigmoid motion gate,
        so that ``X = same_time_X + sigmoid(motion_logit_X)[..., None] * delta_X`` (use the logits for BCE).
        Portrait inputs (H > W) run transposed, as DUSt3R does; every output keeps the input's (H, W) layout.
        ``match_heads`` h > 0 (training's supervised matching, dpm_ros.training.matching) adds
        ``xattn_logits1`` / ``xattn_logits2``: per block of decoder 1 / 2 the cross-attention logits of heads
        0..h−1, (rows, h, N, N) with rows = 2B when symmetric (pass 1, then the swapped pass), row-major tokens;
        landscape inputs only. h = 0 (default): nothing extra is computed."""
        sym = self.symmetric if symmetric is None else bool(symmetric)
        self._check_inputs(img1, img2)
        if match_heads and img1.shape[2] > img1.shape[3]:
            raise ValueError("cross-attention logits (match_heads) need landscape inputs (H <= W)")
        if img1.shape[2] > img1.shape[3]:
            # DUSt3R's ManyAR rule: portrait pairs run transposed (as landscape); outputs are transposed back
            out = self.forward_raw(img1.transpose(2, 3), img2.transpose(2, 3), sym)
            return {k: v.transpose(1, 2) for k, v in out.items()}
        c = self.config
        B, _, H, W = img1.shape
        rows, cols = H // c.patch_size, W // c.patch_size
        enc_rope = self._rope(rows, cols, c.enc_embed_dim // c.enc_num_heads, img1.device)
        dec_rope = self._rope(rows, cols, c.dec_embed_dim // c.dec_num_heads, img1.device)

        x = self.patch_embed(torch.cat([img1, img2], dim=0))
        for blk in self.enc_blocks:
            x = blk(x, *enc_rope)
        x = self.enc_norm(x)
        e1, e2 = x.chunk(2)
        f1, f2 = (x, torch.cat([e2, e1])) if sym else (e1, e2)

        layers1, layers2 = [f1], [f2]
        a, b = self.decoder_embed(f1), self.decoder_embed(f2)
        if c.corr_radius:
            c12 = local_correlation(e1, e2, rows, cols, c.corr_radius)       # (B, N, (2r+1)²)
            c21 = local_correlation(e2, e1, rows, cols, c.corr_radius)
            a = a + self.corr_proj(torch.cat([c12, c21]) if sym else c12)
            b = b + self.corr_proj(torch.cat([c21, c12]) if sym else c21)
        xattn1, xattn2 = [], []
        for blk1, blk2 in zip(self.dec_blocks, self.dec_blocks2):
            if match_heads:
                (a, s1), (b, s2) = (blk1(a, b, dec_rope, dec_rope, match_heads),
                                    blk2(b, a, dec_rope, dec_rope, match_heads))
                xattn1.append(s1)
                xattn2.append(s2)
            else:
                a, b = blk1(a, b, dec_rope, dec_rope), blk2(b, a, dec_rope, dec_rope)
            layers1.append(a)
            layers2.append(b)
        layers1[-1] = self.dec_norm(layers1[-1])
        layers2[-1] = self.dec_norm(layers2[-1])

        grid = (rows, cols)
        raw = {"head1": self.downstream_head1(layers1, grid), "head2": self.downstream_head2(layers2, grid),
               "head3": self.downstream_head3(layers1, grid), "head4": self.downstream_head4(layers2, grid)}
        # (N, H, W, C) views, split into channel groups (not indexed: no zero-filled full-size gradient per slice;
        # see split_keep_layout for the gradient's memory layout)
        raw = {k: split_keep_layout(v.permute(0, 2, 3, 1), [3, 1] + [1] * (v.shape[1] - 4), -1)
               for k, v in raw.items()}
        out: dict[str, torch.Tensor] = {}
        pts = {k: points_from_raw(raw[k][0]) for k in ("head1", "head2")}
        gate = {"head3": "head1", "head4": "head2"}
        for k, base in gate.items():
            pts[k] = pts[base] + torch.sigmoid(raw[k][2]) * raw[k][0]
        conf = {k: conf_from_raw(raw[k][1].squeeze(-1)) for k in raw}
        npass = 2 if sym else 1
        per_pass = [B] * npass
        split = {k: split_keep_layout(v, per_pass, 0) for k, v in pts.items()}
        split_conf = {k: split_keep_layout(v, per_pass, 0) for k, v in conf.items()}
        split_gate = {k: (split_keep_layout(raw[k][0], per_pass, 0),
                          split_keep_layout(raw[k][2].squeeze(-1), per_pass, 0)) for k in gate}
        for i, names in enumerate(_PASS_NAMES[:npass]):
            for k, name in names.items():
                out[name] = split[k][i]
                out["conf_" + name] = split_conf[k][i]
                if k in gate:
                    out["delta_" + name] = split_gate[k][0][i]
                    out["motion_logit_" + name] = split_gate[k][1][i]
        out["motion_prob_1"] = torch.sigmoid(out["motion_logit_p1_t2_pi1"])
        out["motion_prob_2"] = torch.sigmoid(out["motion_logit_p2_t1_pi1"])
        if match_heads:
            out["xattn_logits1"], out["xattn_logits2"] = tuple(xattn1), tuple(xattn2)
        return out

    def forward(self, img1: torch.Tensor, img2: torch.Tensor, symmetric: bool | None = None
                ) -> dict[str, torch.Tensor]:
        """Point maps of the pair. img1, img2: float32 (B, 3, H, W) from :func:`preprocess`, H and W multiples of
        the patch size. Returns (B, H, W, 3) maps in each pass's camera-1 optical frame (model units), ``conf_*``
        (B, H, W) > 1, ``motion_prob_1/2`` (B, H, W) in [0, 1]; the swapped pass only when symmetric."""
        raw = self.forward_raw(img1, img2, symmetric)
        names = [n for n in ALL_POINT_MAP_NAMES if n in raw]
        return {**{n: raw[n] for n in names}, **{"conf_" + n: raw["conf_" + n] for n in names},
                "motion_prob_1": raw["motion_prob_1"], "motion_prob_2": raw["motion_prob_2"]}


def local_correlation(f1: torch.Tensor, f2: torch.Tensor, rows: int, cols: int, radius: int) -> torch.Tensor:
    """Cosine similarity of each view-1 token with the view-2 tokens around the same grid position.

    f1, f2: (B, N, C) encoder tokens, N = rows·cols in row-major order. Returns (B, N, (2r+1)²): entry
    k = (dy + r)·(2r+1) + (dx + r) is cos(f1[y, x], f2[y + dy, x + dx]) for |dy|, |dx| ≤ r (tokens; one token
    = patch_size pixels), 0 where that position is outside the grid. Vectorised as (2r+1)² shifted products of
    the zero-padded view-2 grid (slices, multiply, sum: plain ONNX ops, no custom kernel).
    """
    B, N, C = f1.shape
    a = F.normalize(f1, dim=-1).transpose(1, 2).reshape(B, C, rows, cols)
    b = F.pad(F.normalize(f2, dim=-1).transpose(1, 2).reshape(B, C, rows, cols), (radius,) * 4)
    side = 2 * radius + 1
    corr = [(a * b[:, :, dy:dy + rows, dx:dx + cols]).sum(1) for dy in range(side) for dx in range(side)]
    return torch.stack(corr, dim=-1).reshape(B, N, side * side)


def _init_weights(m: nn.Module) -> None:
    """CroCo's initialisation: xavier-uniform linear layers with zero bias, unit LayerNorm."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, PatchEmbed):
        nn.init.xavier_uniform_(m.proj.weight.view(m.proj.weight.shape[0], -1))


def build_model(preset: str, **overrides) -> DPMNet:
    """A freshly initialised network of a named preset (see ``config.PRESETS``); ``overrides`` replace config
    fields, e.g. ``build_model('dpm_small', height=128, width=160)``."""
    return DPMNet(preset_config(preset, **overrides))


def preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 RGB images (B, H, W, 3) or (H, W, 3) -> float32 (B, 3, H, W) in [-1, 1]: ``(x / 255 - 0.5) / 0.5``."""
    if not isinstance(images, np.ndarray):
        raise ValueError(f"expected a numpy uint8 array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB images, got dtype {images.dtype}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (B, H, W, 3) or (H, W, 3) RGB images, got shape {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return (x / 255.0 - 0.5) / 0.5
