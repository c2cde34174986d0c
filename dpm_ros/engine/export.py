"""Export a DPMNet to ONNX: fixed shape (1, 3, H, W) inputs ``img1``/``img2``, the symmetric pair as one batch
inside the graph, RoPE tables baked in as constants, outputs named after the maps (design.md), ``dpm.*`` metadata
(onnx_model.py) so the file is self-describing, and ONNX external data (one ``NAME.onnx.data``) above 2 GB."""
from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch

import dpm_ros
from dpm_ros.engine.onnx_model import INPUT_NAMES, OnnxModelInfo, metadata_props, output_names, read_onnx_info

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
PROTOBUF_LIMIT_BYTES = 2 * 1024**3 - 64 * 1024**2  # stay clear of protobuf's 2 GiB message limit


def _expm1_symbolic(g, x):
    """ONNX has no Expm1: exp(x) − 1 (relative error ~1e-7/|x|, negligible at the depth scales of point maps)."""
    return g.op("Sub", g.op("Exp", x), g.op("Constant", value_t=torch.tensor(1.0)))


class _ExportWrapper(torch.nn.Module):
    """Positional outputs in ``output_names(symmetric)`` order, RoPE tables as buffers (→ ONNX initializers)."""

    def __init__(self, model: torch.nn.Module, height: int, width: int, symmetric: bool):
        super().__init__()
        from dpm_ros.model.rope import rope_tables

        self.model, self.symmetric = model, symmetric
        self.names = output_names(symmetric)
        c = model.config
        rows, cols = height // c.patch_size, width // c.patch_size
        self._tables = {}
        for i, head_dim in enumerate(sorted({c.enc_embed_dim // c.enc_num_heads, c.dec_embed_dim // c.dec_num_heads})):
            cos, sin = rope_tables(rows, cols, head_dim, c.rope_base)
            self.register_buffer(f"rope_cos_{i}", cos, persistent=False)
            self.register_buffer(f"rope_sin_{i}", sin, persistent=False)
            self._tables[(rows, cols, head_dim)] = (f"rope_cos_{i}", f"rope_sin_{i}")

    def rope(self, rows: int, cols: int, head_dim: int, device=None):
        # under tracing rows/cols arrive as 0-d tensors; the export shape is fixed, so plain ints are exact
        cos_name, sin_name = self._tables[(int(rows), int(cols), int(head_dim))]
        return getattr(self, cos_name), getattr(self, sin_name)

    def forward(self, img1: torch.Tensor, img2: torch.Tensor):
        out = self.model(img1, img2, symmetric=self.symmetric)
        return tuple(out[name] for name in self.names)


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of all parameters and buffers (what ends up as ONNX initializers)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def export_onnx(model: torch.nn.Module, out: str | Path, height: int | None = None, width: int | None = None,
                symmetric: bool = True, opset: int = DEFAULT_OPSET, weights_sha256: str = "",
                external_data: bool | None = None) -> OnnxModelInfo:
    """Write ``model`` (a DPMNet) to ``out`` as ONNX at a fixed ``height`` x ``width`` (pixels; default: the
    model's config). ``external_data`` None = automatic (above ~2 GB of weights). The model is put in eval mode,
    float32, on the CPU (in place). Returns the written file's metadata."""
    import onnx

    if opset < 17:
        raise ValueError(f"opset {opset} < 17: LayerNormalization needs opset >= 17")
    c = model.config
    height, width = int(height or c.height), int(width or c.width)
    if height % c.patch_size or width % c.patch_size or height <= 0 or width <= 0:
        raise ValueError(f"export size {height}x{width} must be positive multiples of the patch size {c.patch_size}")
    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"{out}: the output file name must end in .onnx")
    if external_data is None:
        external_data = parameter_bytes(model) > PROTOBUF_LIMIT_BYTES
    model = model.eval().float().cpu()
    wrapper = _ExportWrapper(model, height, width, symmetric).eval()
    model._rope = wrapper.rope  # instance attribute: the tables come from the wrapper's buffers while tracing
    torch.onnx.register_custom_op_symbolic("aten::expm1", _expm1_symbolic, 17)
    example = (torch.zeros(1, 3, height, width), torch.zeros(1, 3, height, width))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export_") as tmp:
            raw = Path(tmp) / "raw.onnx"
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer/deprecation chatter: the export shape is fixed by design
                torch.onnx.export(wrapper, example, str(raw), input_names=list(INPUT_NAMES),
                                  output_names=list(wrapper.names), opset_version=opset, dynamo=False,
                                  do_constant_folding=True)
            proto = onnx.load(str(raw))  # loads external tensors too, if torch wrote any
            props = metadata_props(c.preset, height, width, symmetric, wrapper.names,
                                   dpm_ros_version=dpm_ros.__version__, weights_sha256=weights_sha256,
                                   model_config=_config_json(c))
            del proto.metadata_props[:]
            for k, v in props.items():
                proto.metadata_props.add(key=k, value=v)
            proto.producer_name, proto.producer_version = "dpm_ros", dpm_ros.__version__
            staged = Path(tmp) / out.name
            if external_data:
                onnx.save_model(proto, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                                location=out.name + ".data", size_threshold=1024)
            else:
                onnx.save_model(proto, str(staged))
            onnx.checker.check_model(str(staged))  # by path: works above 2 GB too
            if external_data:
                data = Path(tmp) / (out.name + ".data")
                data.chmod(staged.stat().st_mode & 0o777)  # onnx writes it owner-only; match the .onnx file
                os.replace(data, out.with_name(out.name + ".data"))
            os.replace(staged, out)
    finally:
        del model._rope
    info = read_onnx_info(out)
    log.info("exported %s (%s, %dx%d, symmetric=%s, opset %d)", out, c.preset, height, width, symmetric, info.opset)
    return info


def _config_json(config) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)

