"""2D rotary position embedding (CroCo's RoPE2D): the first half of each head's channels is rotated by the token's
row, the second half by its column; within each half, channel k is paired with channel k + D/2 (rotate-half form)."""
from __future__ import annotations

import torch


def rope_tables(rows: int, cols: int, head_dim: int, base: float = 100.0,
                device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for a ``rows`` x ``cols`` token grid (row-major token order), each (rows*cols, head_dim).

    Computed in float32. For a half of size D = head_dim/2 the frequencies are ``base^(-2j/D)``, j < D/2, repeated
    twice (rotate-half pairing); the first half uses the row index, the second the column index.
    """
    if head_dim % 4:
        raise ValueError(f"head_dim {head_dim} must be divisible by 4 for 2D RoPE")
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, dtype=torch.float32, device=device) / half))
    r = torch.arange(rows, dtype=torch.float32, device=device)
    c = torch.arange(cols, dtype=torch.float32, device=device)
    fr = torch.outer(r, inv_freq)  # (rows, half/2)
    fc = torch.outer(c, inv_freq)  # (cols, half/2)
    fr = torch.cat([fr, fr], dim=-1)[:, None, :].expand(rows, cols, half)
    fc = torch.cat([fc, fc], dim=-1)[None, :, :].expand(rows, cols, half)
    angles = torch.cat([fr, fc], dim=-1).reshape(rows * cols, head_dim)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, heads, N, head_dim) by the tables of :func:`rope_tables` (N, head_dim)."""
    hd = x.shape[-1]
    q = x.unflatten(-1, (2, 2, hd // 4))          # [row|col half][first|second quarter of that half]
    rotated = torch.cat([-q[..., 1:2, :], q[..., 0:1, :]], dim=-2).flatten(-3)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


# --- fast path for training (bf16 on a CPU): RoPE fused with the head split, one autograd node ---------------------
#
# rotate_half(x) = swap(x) * sign, where swap exchanges the two quarters of each half (channel k <-> k + D/2 within
# the row half and within the column half) and sign is -1 on the first quarter of each half, +1 on the second. So
# RoPE(x) = x * cos + swap(x) * sin_s with sin_s = sin * sign, and its gradient is g * cos + swap(g) * swap(sin_s)
# (swap is a permutation and its own inverse). A softmax scale folded into the tables of the queries costs nothing.

def _swap_quarters(x: torch.Tensor) -> torch.Tensor:
    """x (..., head_dim) with each half's two quarters exchanged (a contiguous copy; stack is ~40 % cheaper than
    flip here)."""
    q = x.unflatten(-1, (2, 2, x.shape[-1] // 4))
    return torch.stack([q[..., 1, :], q[..., 0, :]], dim=-2).flatten(-3)


_FAST_TABLES: dict = {}


def fast_rope_tables(cos: torch.Tensor, sin: torch.Tensor, scales: tuple[float, ...], dtype: torch.dtype
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tables of :class:`SplitHeadsRope` for the (N, head_dim) tables of :func:`rope_tables`: (cos·scale,
    sin_s·scale, swap(sin_s)·scale), each (len(scales), 1, 1, N, head_dim) in ``dtype``. Cached per table object."""
    key = (id(cos), id(sin), tuple(scales), dtype)
    hit = _FAST_TABLES.get(key)
    if hit is not None and hit[0] is cos and hit[1] is sin:
        return hit[2]
    hd = cos.shape[-1]
    sign = torch.ones(2, 2, hd // 4, dtype=cos.dtype, device=cos.device)
    sign[:, 0] = -1.0
    sin_s = sin * sign.flatten()
    s = torch.tensor(scales, dtype=cos.dtype, device=cos.device)[:, None, None, None, None]
    tables = tuple((s * t).to(dtype).contiguous() for t in (cos, sin_s, _swap_quarters(sin_s)))
    if len(_FAST_TABLES) > 64:
        _FAST_TABLES.clear()
    _FAST_TABLES[key] = (cos, sin, tables)
    return tables


class SplitHeadsRope(torch.autograd.Function):
    """A linear layer's output (B, N, P·h·d) -> P contiguous tensors (B, h, N, d) (e.g. q, k, v), the first R of them
    rotated by 2D RoPE (and scaled) with the tables of :func:`fast_rope_tables` (R, 1, 1, N, d).

    Equals ``t.reshape(B, N, P, h, d).permute(2, 0, 3, 1, 4)`` followed by :func:`apply_rope` (times the scale) on
    the first R parts, with one autograd node: one permuting copy of all parts, then three kernels (swap, mul,
    addcmul) on contiguous memory for the rotated parts; the backward the same on contiguous memory and one permuting
    copy into the (B, N, P·h·d) layout (no zero-filled select/slice gradients, no accumulation)."""

    @staticmethod
    def forward(ctx, t, heads: int, cos, sin_s, sin_sw):
        B, N, PC = t.shape
        R, d = cos.shape[0], cos.shape[-1]
        P = PC // (heads * d)
        # one permuting copy first: every op after it runs on contiguous memory (the quarter swap of the permuted
        # view measured 20x slower than of the copy, and RoPE was ~30 % of a step on an AVX-512 CPU without AMX)
        out = t.reshape(B, N, P, heads, d).permute(2, 0, 3, 1, 4).contiguous()
        rot = out[:R]
        sw = _swap_quarters(rot)
        rot.mul_(cos).addcmul_(sw, sin_s)
        ctx.save_for_backward(cos, sin_sw)
        ctx.dims = (B, N, P, heads, d)
        return tuple(out.unbind(0))

    @staticmethod
    def backward(ctx, *grads):
        cos, sin_sw = ctx.saved_tensors
        B, N, P, heads, d = ctx.dims
        R = cos.shape[0]
        gv = torch.empty((P, B, heads, N, d), dtype=cos.dtype, device=cos.device)
        for i, g in enumerate(grads):
            if g is None:
                gv[i].zero_()
            elif i < R:
                g = g.contiguous()          # a key's gradient arrives transposed from the score matmul
                torch.mul(g, cos[i], out=gv[i])
                gv[i].addcmul_(_swap_quarters(g), sin_sw[i])
            else:
                gv[i].copy_(g)
        # contiguous work above, one permuting copy into the projection's (B, N, P·h·d) layout here
        return gv.permute(1, 3, 0, 2, 4).reshape(B, N, P * heads * d), None, None, None, None


def split_heads_rope(t: torch.Tensor, heads: int, cos: torch.Tensor, sin: torch.Tensor, scales: tuple[float, ...]
                     ) -> tuple[torch.Tensor, ...]:
    """:class:`SplitHeadsRope` with the (N, head_dim) fp32 tables of :func:`rope_tables`; ``scales`` has one entry per
    rotated part (e.g. (1/√d, 1.0) for q, k of a fused qkv projection)."""
    return SplitHeadsRope.apply(t, heads, *fast_rope_tables(cos, sin, scales, t.dtype))
