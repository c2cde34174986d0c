"""Transformer blocks with CroCo/DUSt3R parameter names: patch embedding, self-attention encoder block and the
decoder block (self-attention + cross-attention to the other view + MLP). RoPE tables are passed in, not computed."""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from dpm_ros.model.rope import apply_rope, split_heads_rope

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def _fast_cpu(t: torch.Tensor) -> bool:
    """The bf16 CPU training path (attention as two plain matmuls, RoPE fused with the head split)."""
    return t.dtype == torch.bfloat16 and t.device.type == "cpu"


def _scaled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ)·v for queries already scaled by 1/√d: the bf16 CPU training path (under autocast: two plain
    bf16 matmuls, softmax in fp32, bf16 out), ~2.5x faster forward+backward than PyTorch's CPU SDPA kernels at
    192 tokens, which compute bf16 in fp32 with casts and masking around them (math) or have slow backwards (flash)."""
    return (q @ k.transpose(-2, -1)).softmax(-1) @ v


def _scaled_attention_logits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_scaled_attention` that also returns the logits q·kᵀ (B, heads, N, M) of its first ``heads`` heads
    (any dtype and device: the supervised-matching loss needs them, so attention is computed explicitly)."""
    s = q @ k.transpose(-2, -1)
    return s.softmax(-1) @ v, s[:, :heads]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ/√d)·v over (B, heads, N, d) tensors, everywhere but the bf16 CPU training path (fp32 inference,
    ONNX export, CUDA): ``F.scaled_dot_product_attention``."""
    return F.scaled_dot_product_attention(q, k, v)


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: (B, 3, H, W) -> (B, H/P * W/P, dim), row-major token order."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous: a transposed view here would make the whole encoder residual stream (every add's output
        # keeps its input's layout) channels-first, and each LayerNorm copy it back (measured: ~5 % of a step)
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention with 2D RoPE on queries and keys."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        t = self.qkv(x)
        if _fast_cpu(t):
            q, k, v = split_heads_rope(t, self.num_heads, cos, sin, ((C // self.num_heads) ** -0.5, 1.0))
            return self.proj(_scaled_attention(q, k, v).transpose(1, 2).reshape(B, N, C))
        qkv = t.reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class CrossAttention(nn.Module):
    """Queries from this view, keys/values from the other view; RoPE with each side's own positions."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cos_mem: torch.Tensor, sin_mem: torch.Tensor, logits_heads: int = 0):
        """(B, N, C) output; with ``logits_heads`` h > 0 also the attention logits q·kᵀ/√d of heads 0..h−1,
        (B, h, N, M) (attention computed explicitly then, on every path: the supervised-matching loss)."""
        B, N, C = x.shape
        M = mem.shape[1]
        h, d = self.num_heads, C // self.num_heads
        q = self.projq(x)
        fast = _fast_cpu(q)
        if fast:   # k and v from one matmul; RoPE fused with the head split, 1/√d folded into q's tables
            kv = F.linear(mem, torch.cat([self.projk.weight, self.projv.weight]),
                          torch.cat([self.projk.bias, self.projv.bias]))
            q, = split_heads_rope(q, h, cos, sin, (d ** -0.5,))
            k, v = split_heads_rope(kv, h, cos_mem, sin_mem, (1.0,))
        else:
            q = q.reshape(B, N, h, d).transpose(1, 2)
            k = self.projk(mem).reshape(B, M, h, d).transpose(1, 2)
            v = self.projv(mem).reshape(B, M, h, d).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos_mem, sin_mem)
        if logits_heads:
            out, logits = _scaled_attention_logits(q if fast else q * d ** -0.5, k, v, logits_heads)
            return self.proj(out.transpose(1, 2).reshape(B, N, C)), logits
        out = _scaled_attention(q, k, v) if fast else attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm ViT encoder block: x + attn(norm1 x), then x + mlp(norm2 x)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """CroCo decoder block: self-attention, cross-attention to the other view's (normalised) tokens, MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = LayerNorm(dim)
        self.norm3 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = LayerNorm(dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, rope_x: tuple[torch.Tensor, torch.Tensor],
                rope_y: tuple[torch.Tensor, torch.Tensor], logits_heads: int = 0):
        """(B, N, C); with ``logits_heads`` > 0 the pair (tokens, cross-attention logits (B, h, N, M))."""
        x = x + self.attn(self.norm1(x), *rope_x)
        y = self.norm_y(y)
        if logits_heads:
            upd, logits = self.cross_attn(self.norm2(x), y, *rope_x, *rope_y, logits_heads=logits_heads)
            x = x + upd
            return x + self.mlp(self.norm3(x)), logits
        x = x + self.cross_attn(self.norm2(x), y, *rope_x, *rope_y)
        return x + self.mlp(self.norm3(x))
