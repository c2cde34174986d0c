"""PyTorch backend: a DPMNet in eager mode on CPU or CUDA. On CUDA, fp16/bf16 autocast runs the encoder and
decoder in reduced precision while the four heads (and the depth/confidence activations after them) stay FP32;
``compile=True`` wraps the network in ``torch.compile``."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dpm_ros.engine.base import Engine, EngineInfo
from dpm_ros.engine.onnx_model import DUST3R_NORMALISATION, output_names
from dpm_ros.engine.pair_io import prepare_pair, unbatch_outputs

HEAD_NAMES = ("downstream_head1", "downstream_head2", "downstream_head3", "downstream_head4")
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class _Fp32Head(nn.Module):
    """Runs a head with autocast off on float32 copies of its input token layers."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, layers, grid):
        with torch.autocast(device_type=layers[0].device.type, enabled=False):
            return self.head([x.float() for x in layers], grid)


class TorchEngine(Engine):
    """``model``: a DPMNet (moved to ``device`` and put in eval mode); ``precision``: fp32, fp16 or bf16 (autocast;
    fp16 needs CUDA); ``source`` names the weights in errors and info; ``height``/``width``: the resolution images
    are resized to (default: the model's configured one; multiples of the patch size)."""

    resizes_input = True   # prepare_pair → pair_io.resize_image to the network resolution

    def __init__(self, model: nn.Module, device: str = "cpu", precision: str = "fp32", compile: bool = False,
                 symmetric: bool = True, source: str = "<torch model>", height: int | None = None,
                 width: int | None = None):
        if precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but no CUDA GPU is visible to torch")
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device (use fp32 or bf16 on CPU)")
        self.precision, self.source, self.symmetric = precision, source, symmetric
        if precision == "fp32" and self.device.type == "cuda":
            # an fp32 reference computes in FP32: no TF32 in matmuls or cuDNN convolutions (process-wide switches)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.model = model.eval().to(self.device)
        self.height, self.width = int(height or model.config.height), int(width or model.config.width)
        if self.height % model.config.patch_size or self.width % model.config.patch_size:
            raise ValueError(f"{source}: resolution {self.width}x{self.height} must be a multiple of the patch size "
                             f"{model.config.patch_size}")
        if precision != "fp32":
            for name in HEAD_NAMES:
                head = getattr(self.model, name)
                if not isinstance(head, _Fp32Head):
                    setattr(self.model, name, _Fp32Head(head))
        self._forward = torch.compile(self.model) if compile else self.model
        self.compiled = compile
        self.outputs = output_names(symmetric)

    def run_network(self, x1: np.ndarray, x2: np.ndarray) -> dict[str, np.ndarray]:
        """The raw network call on normalised float32 (1, 3, h, w) inputs → batched float32 outputs by name."""
        t1 = torch.from_numpy(x1).to(self.device, non_blocking=True)
        t2 = torch.from_numpy(x2).to(self.device, non_blocking=True)
        autocast = (torch.autocast(device_type=self.device.type, dtype=AUTOCAST_DTYPES[self.precision])
                    if self.precision != "fp32" else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            out = self._forward(t1, t2, symmetric=self.symmetric)
        return {name: out[name].float().cpu().numpy() for name in self.outputs}

    def infer(self, img1: np.ndarray, img2: np.ndarray) -> dict[str, np.ndarray]:
        """Point maps for the pair (uint8 (H, W, 3) RGB, any size) at the model's configured resolution."""
        x1, x2 = prepare_pair(img1, img2, self.height, self.width, self.source, DUST3R_NORMALISATION)
        return unbatch_outputs(self.run_network(x1, x2), self.outputs, self.height, self.width, self.source)

    def info(self) -> EngineInfo:
        device = str(self.device)
        if self.device.type == "cuda":
            device += f" ({torch.cuda.get_device_name(self.device)})"
        return EngineInfo(backend="torch", device=device, precision=self.precision, height=self.height,
                          width=self.width, symmetric=self.symmetric,
                          extra={"weights": self.source, "preset": self.model.config.preset,
                                 "compiled": self.compiled, "torch_version": torch.__version__})


def load_torch_engine(weights: str | Path, device: str = "cpu", precision: str = "fp32", compile: bool = False,
                      symmetric: bool = True) -> TorchEngine:
    """A TorchEngine from a ``.safetensors`` file written by ``dpm_ros.model.save_model`` (config JSON beside it)."""
    from dpm_ros.model import load_model

    from dpm_ros.engine.onnx_model import check_model_file

    weights = check_model_file(weights, "weights")
    try:
        model = load_model(weights, map_location="cpu")
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors/json raise their own types; report the file and the problem
        message = str(exc) if str(weights) in str(exc) else f"{weights}: could not load the weights: {exc}"
        raise ValueError(message) from None
    return TorchEngine(model, device, precision, compile, symmetric, source=str(weights))
