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
