"""Prediction heads with DUSt3R's parameter names: a linear head (token -> patch of pixels, pixel shuffle) and the
DPT head (four decoder layers fused coarse-to-fine). Both map decoder tokens to raw (B, C, H, W) channels; the
network turns channels into points, confidences and motion gates."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _bf16_cpu(t: torch.Tensor) -> bool:
    """True for the bf16 CPU training path: a bf16 tensor on a CPU, or a CPU tensor under bf16 autocast."""
    if t.device.type != "cpu":
        return False
    return t.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu")
                                         and torch.get_autocast_dtype("cpu") == torch.bfloat16)


class LinearHead(nn.Module):
    """``proj``: Linear(dim, C * P * P) applied to the last decoder layer, then pixel shuffle to full resolution.

    Output channel c of pixel (dy, dx) in a patch is row ``c * P * P + dy * P + dx`` of ``proj``.
    """

    def __init__(self, dec_dim: int, out_channels: int, patch_size: int):
        super().__init__()
        self.out_channels = out_channels
        self.patch_size = patch_size
        self.proj = nn.Linear(dec_dim, out_channels * patch_size ** 2)

    def forward(self, layers: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        P, C, (h, w) = self.patch_size, self.out_channels, grid
        t = layers[-1]
        if not _bf16_cpu(t):   # fp32 inference, ONNX export (the head's initializers keep DUSt3R's names), CUDA
            x = self.proj(t)                                         # (B, N, C*P*P)
            x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
            return F.pixel_shuffle(x, P)                             # (B, C, H, W)
        # bf16 CPU training: pixel shuffle as one copy into channels-last memory: the projection's rows are taken
        # in (dy, dx, c) order (an index on the small weight), so the copy moves contiguous runs of P·C values; the
        # (B, C, H, W) result is a view of (B, H, W, C) memory, which the network's (B, H, W, C) maps read without
        # another copy, and the backward is one copy too (not pixel_unshuffle). Same values as pixel_shuffle.
        order = self._row_order(self.proj.weight.device)
        x = F.linear(t, self.proj.weight[order], self.proj.bias[order])             # (B, N, P*P*C)
        B = x.shape[0]
        x = x.view(B, h, w, P, P, C).permute(0, 1, 3, 2, 4, 5).reshape(B, h * P, w * P, C)
        return x.permute(0, 3, 1, 2)                                 # (B, C, H, W)

    def _row_order(self, device: torch.device) -> torch.Tensor:
        """Row indices of ``proj`` in (dy, dx, c) order (row c·P² + dy·P + dx at position (dy·P + dx)·C + c)."""
        P, C = self.patch_size, self.out_channels
        cached = getattr(self, "_order", None)
        if cached is None or cached.device != device:
            cached = torch.arange(C * P * P, device=device).view(C, P, P).permute(1, 2, 0).flatten()
            self._order = cached
        return cached

    def output_layer(self) -> tuple[nn.Parameter, nn.Parameter, int]:
        """(weight, bias, rows per output channel) of the layer that produces the channels."""
        return self.proj.weight, self.proj.bias, self.patch_size ** 2


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FeatureFusionBlock(nn.Module):
    """DPT fusion: (optional skip through resConfUnit1) + resConfUnit2, 2x bilinear upsampling, 1x1 out_conv."""

    def __init__(self, features: int):
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Interpolate(nn.Module):
    def __init__(self, scale_factor: float):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale_factor == 1.0:
            return x
        return F.interpolate(x, scale_factor=self.scale_factor, mode="bilinear", align_corners=True)


class Scratch(nn.Module):
    """DPT 'scratch': layer{i}_rn projections to the fusion width (``layer_rn`` is an alias list of the same
    modules, as in DUSt3R, so both names are in the state dict) and the four refinenets."""

    def __init__(self, layer_dims: tuple[int, ...], features: int):
        super().__init__()
        for i, d in enumerate(layer_dims):
            setattr(self, f"layer{i + 1}_rn", nn.Conv2d(d, features, 3, padding=1, bias=False))
        self.layer_rn = nn.ModuleList([getattr(self, f"layer{i + 1}_rn") for i in range(len(layer_dims))])
        for i in range(4):
            setattr(self, f"refinenet{i + 1}", FeatureFusionBlock(features))


class DPTAdapter(nn.Module):
    """DUSt3R's DPT output adapter. Takes decoder layers at ``hooks`` (index 0 = encoder output), reassembles them
    at 4x, 2x, 1x and 1/2x the token grid, fuses coarse-to-fine and upsamples to the input resolution."""

    def __init__(self, dim_tokens: tuple[int, int, int, int], hooks: tuple[int, int, int, int], patch_size: int,
                 out_channels: int, layer_dims: tuple[int, int, int, int], features: int):
        super().__init__()
        self.hooks = hooks
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(dim_tokens[0], layer_dims[0], 1),
                          nn.ConvTranspose2d(layer_dims[0], layer_dims[0], 4, stride=4)),
            nn.Sequential(nn.Conv2d(dim_tokens[1], layer_dims[1], 1),
                          nn.ConvTranspose2d(layer_dims[1], layer_dims[1], 2, stride=2)),
            nn.Sequential(nn.Conv2d(dim_tokens[2], layer_dims[2], 1)),
            nn.Sequential(nn.Conv2d(dim_tokens[3], layer_dims[3], 1),
                          nn.Conv2d(layer_dims[3], layer_dims[3], 3, stride=2, padding=1)),
        ])
        self.scratch = Scratch(layer_dims, features)
        # refinenet4 has no skip input: its resConfUnit1 is never used (kept for DUSt3R's names; frozen for DDP)
        self.scratch.refinenet4.resConfUnit1.requires_grad_(False)
        # fused map is at 8x the token grid; the last upsampling brings it to P x the grid (2x for P = 16)
        self.head = nn.Sequential(
            nn.Conv2d(features, features // 2, 3, padding=1),
            Interpolate(patch_size / 8.0),
            nn.Conv2d(features // 2, features // 2, 3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(features // 2, out_channels, 1),
        )

    def forward(self, layers: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        h, w = grid
        feats = []
        for i, hook in enumerate(self.hooks):
            t = layers[hook]
            t = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)
            feats.append(self.scratch.layer_rn[i](self.act_postprocess[i](t)))
        s = self.scratch
        path = s.refinenet4(feats[3])[:, :, :feats[2].shape[2], :feats[2].shape[3]]
        path = s.refinenet3(path, feats[2])
        path = s.refinenet2(path, feats[1])
        path = s.refinenet1(path, feats[0])
        return self.head(path)


class DPTHead(nn.Module):
    """``dpt``: the adapter, under DUSt3R's name (``downstream_headN.dpt.*``)."""

    def __init__(self, enc_dim: int, dec_dim: int, dec_depth: int, out_channels: int, patch_size: int,
                 layer_dims: tuple[int, int, int, int], features: int):
        super().__init__()
        hooks = (0, dec_depth * 2 // 4, dec_depth * 3 // 4, dec_depth)
        self.dpt = DPTAdapter((enc_dim, dec_dim, dec_dim, dec_dim), hooks, patch_size, out_channels,
                              layer_dims, features)

    def forward(self, layers: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        return self.dpt(layers, grid)

    def output_layer(self) -> tuple[nn.Parameter, nn.Parameter, int]:
        conv = self.dpt.head[4]
        return conv.weight, conv.bias, 1
