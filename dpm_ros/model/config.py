"""Network configuration: one dataclass and the named presets (DUSt3R-shaped large models, small CPU models)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

HEAD_TYPES = ("linear", "dpt")
# Bounds checked before a network is built from a config (a JSON file beside the weights decides it): DUSt3R ViT-L
# (~570 M parameters, 1024-wide, 24 deep, 512 px) is well inside them.
MAX_SIDE, MAX_PATCH, MAX_DIM, MAX_DEPTH, MAX_HEADS, MAX_TOKENS = 4096, 64, 4096, 64, 64, 65536
MAX_PARAMETERS = 2_000_000_000
MAX_CORR_RADIUS = 16
INT_FIELDS = ("height", "width", "patch_size", "enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim",
              "dec_depth", "dec_num_heads", "dpt_feature_dim", "corr_radius")


@dataclass(frozen=True)
class DPMConfig:
    """Everything that fixes the network's shapes. Sizes in pixels (input image) and channels.

    ``height``/``width`` is the resolution the model is built and exported for (multiples of ``patch_size``);
    the torch module also accepts other multiples of the patch size. ``motion_init_bias`` is the initial logit of
    the gated residual heads' motion probability m (sigmoid(-6) ≈ 0.0025, so a fresh model is ~static).
    ``corr_radius`` r > 0 adds an explicit local correlation between the two views' encoder tokens (a
    (2r+1)×(2r+1) token window, r tokens = r·patch_size pixels each way) to the decoder input
    (:func:`dpm_ros.model.network.local_correlation`); 0 (default, every preset) leaves the network DUSt3R's.
    """

    preset: str = "custom"
    height: int = 64
    width: int = 64
    patch_size: int = 8
    enc_embed_dim: int = 192
    enc_depth: int = 6
    enc_num_heads: int = 3
    dec_embed_dim: int = 128
    dec_depth: int = 4
    dec_num_heads: int = 2
    mlp_ratio: float = 4.0
    head_type: str = "linear"
    rope_base: float = 100.0
    dpt_feature_dim: int = 256
    dpt_layer_dims: tuple[int, int, int, int] = (96, 192, 384, 768)
    motion_init_bias: float = -6.0
    corr_radius: int = 0

    def __post_init__(self) -> None:
        import math
        for name in INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        for name in ("mlp_ratio", "rope_base", "motion_init_bias"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 0 < self.mlp_ratio <= 16 or not self.rope_base > 0:
            raise ValueError(f"mlp_ratio must be in (0, 16] and rope_base > 0, got {self.mlp_ratio}, {self.rope_base}")
        limits = dict(height=MAX_SIDE, width=MAX_SIDE, patch_size=MAX_PATCH, enc_embed_dim=MAX_DIM,
                      dec_embed_dim=MAX_DIM, dpt_feature_dim=MAX_DIM, enc_depth=MAX_DEPTH, dec_depth=MAX_DEPTH,
                      enc_num_heads=MAX_HEADS, dec_num_heads=MAX_HEADS)
        for name, limit in limits.items():
            if getattr(self, name) > limit:
                raise ValueError(f"{name} {getattr(self, name)} is above the supported {limit}")
        if not isinstance(self.dpt_layer_dims, (tuple, list)) or not all(
                isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_DIM for d in self.dpt_layer_dims):
            raise ValueError(f"dpt_layer_dims must be integers in [1, {MAX_DIM}], got {self.dpt_layer_dims!r}")
        if self.head_type not in HEAD_TYPES:
            raise ValueError(f"head_type {self.head_type!r} not supported (use one of {HEAD_TYPES})")
        for name in ("height", "width", "patch_size", "enc_embed_dim", "enc_depth", "enc_num_heads",
                     "dec_embed_dim", "dec_depth", "dec_num_heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.height % self.patch_size or self.width % self.patch_size:
            raise ValueError(f"height {self.height} and width {self.width} must be multiples of the patch size "
                             f"{self.patch_size}")
        for which in ("enc", "dec"):
            dim, heads = getattr(self, f"{which}_embed_dim"), getattr(self, f"{which}_num_heads")
            if dim % heads or (dim // heads) % 4:
                raise ValueError(f"{which}_embed_dim {dim} / {which}_num_heads {heads} must give a head dimension "
                                 f"divisible by 4 (2D RoPE rotates two halves in pairs)")
        if not 0 <= self.corr_radius <= MAX_CORR_RADIUS:
            raise ValueError(f"corr_radius must be in [0, {MAX_CORR_RADIUS}] tokens, got {self.corr_radius}")
        if len(self.dpt_layer_dims) != 4:
            raise ValueError(f"dpt_layer_dims needs 4 entries, got {self.dpt_layer_dims}")
        tokens = (self.height // self.patch_size) * (self.width // self.patch_size)
        if tokens > MAX_TOKENS:
            raise ValueError(f"{tokens} tokens per image ({self.height}x{self.width} px, patch {self.patch_size}) is "
                             f"above the supported {MAX_TOKENS}")
        if self.approx_parameters() > MAX_PARAMETERS:
            raise ValueError(f"this config makes a network of about {self.approx_parameters() / 1e9:.1f} G "
                             f"parameters, above the supported {MAX_PARAMETERS / 1e9:.0f} G; refusing to build it")

    def approx_parameters(self) -> int:
        """Rough parameter count (transformer blocks: ~12·d² per encoder and ~16·d² per decoder layer, plus the
        mlp ratio's share): checked before anything is allocated."""
        r = self.mlp_ratio / 4.0
        enc = (4 + 8 * r) * self.enc_embed_dim ** 2 * self.enc_depth
        dec = (8 + 8 * r) * self.dec_embed_dim ** 2 * self.dec_depth
        dpt = 8 * self.dpt_feature_dim * sum(self.dpt_layer_dims) * 9 if self.head_type == "dpt" else 0
        return int(enc + dec + dpt)

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (rows, columns) at the configured resolution."""
        return self.height // self.patch_size, self.width // self.patch_size

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict (tuples become lists). ``corr_radius`` only when on, so the saved configs
        and ONNX metadata of every network without it stay what they were before the switch existed."""
        d = asdict(self)
        d["dpt_layer_dims"] = list(self.dpt_layer_dims)
        if not self.corr_radius:
            del d["corr_radius"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DPMConfig":
        """Inverse of :meth:`to_dict`; unknown keys, wrong types and out-of-bounds sizes raise ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown} (known: {sorted(known)})")
        d = dict(d)
        if "dpt_layer_dims" in d:
            if not isinstance(d["dpt_layer_dims"], (list, tuple)):
                raise ValueError(f"dpt_layer_dims must be a list of 4 integers, got {d['dpt_layer_dims']!r}")
            d["dpt_layer_dims"] = tuple(d["dpt_layer_dims"])
        return cls(**d)


_DUST3R_VITL = dict(patch_size=16, enc_embed_dim=1024, enc_depth=24, enc_num_heads=16,
                    dec_embed_dim=768, dec_depth=12, dec_num_heads=12)

PRESETS: dict[str, DPMConfig] = {
    # DUSt3R_ViTLarge_BaseDecoder_512_dpt (also MonST3R): 2 x 4 DPT heads, landscape 512 x 384 by default.
    "dust3r_vitl_512_dpt": DPMConfig(preset="dust3r_vitl_512_dpt", height=384, width=512, head_type="dpt",
                                     **_DUST3R_VITL),
    # DUSt3R_ViTLarge_BaseDecoder_224_linear.
    "dust3r_vitl_224_linear": DPMConfig(preset="dust3r_vitl_224_linear", height=224, width=224,
                                        head_type="linear", **_DUST3R_VITL),
    # The CPU model we ship: ~4 M parameters, 96 x 96 input, 12 x 12 tokens of 8 x 8 pixels, linear heads.
    "dpm_small": DPMConfig(preset="dpm_small", height=96, width=96, patch_size=8, enc_embed_dim=192, enc_depth=6,
                           enc_num_heads=3, dec_embed_dim=128, dec_depth=4, dec_num_heads=2, head_type="linear"),
    # Unit tests: builds and runs in milliseconds.
    "dpm_tiny": DPMConfig(preset="dpm_tiny", height=32, width=48, patch_size=8, enc_embed_dim=32, enc_depth=2,
                          enc_num_heads=2, dec_embed_dim=32, dec_depth=2, dec_num_heads=2, head_type="linear"),
}


def preset_config(preset: str, **overrides) -> DPMConfig:
    """The config of a named preset with fields replaced by ``overrides`` (e.g. ``height=128``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r} (use one of {sorted(PRESETS)})")
    known = {f.name for f in fields(DPMConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown model config overrides {unknown} (known: {sorted(known)})")
    if "dpt_layer_dims" in overrides:
        overrides["dpt_layer_dims"] = tuple(overrides["dpt_layer_dims"])
    return replace(PRESETS[preset], **overrides)
