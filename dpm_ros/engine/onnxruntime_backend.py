"""ONNX Runtime backend: an exported DPM ONNX file on the CPU execution provider (the default where there is no
GPU), or the CUDA / TensorRT execution providers when the installed onnxruntime has them."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from dpm_ros.engine.base import Engine, EngineInfo
from dpm_ros.engine.onnx_model import read_onnx_info
from dpm_ros.engine.pair_io import prepare_pair, unbatch_outputs

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def available_providers() -> list[str]:
    import onnxruntime as ort
    return list(ort.get_available_providers())


def choose_providers(device: str = "cpu") -> list[str]:
    """Execution providers for ``device``: "cpu" → CPU only; "cuda" → TensorRT/CUDA EPs that this onnxruntime has
    (ValueError when it has neither), always with the CPU EP last as fallback."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        gpu = [p for p in GPU_PROVIDERS if p in available_providers()]
        if not gpu:
            raise ValueError(f"device {device!r}: this onnxruntime has no CUDA/TensorRT execution provider "
                             f"(available: {available_providers()}; install onnxruntime-gpu)")
        return gpu + ["CPUExecutionProvider"]
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def session_options(threads: int | None = None, spinning: bool = False):
    """ONNX Runtime SessionOptions for a DPM network: all graph optimisations, one operator at a time (sequential),
    ``threads`` intra-op threads (None/0: ONNX Runtime's choice, one per physical core) and, unless ``spinning``,
    pool threads that sleep between operators and between calls instead of busy-waiting: a spinning pool burns the
    CPU time the rest of the node (frame conversion, geometry, publishing) needs on a 2-core machine (measured in
    docs/performance.md, issue 14)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        options.intra_op_num_threads = int(threads)
    for pool in ("intra_op", "inter_op"):
        options.add_session_config_entry(f"session.{pool}.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3  # errors only; we raise our own messages
    return options


class OnnxRuntimeEngine(Engine):
    """A DPM ONNX file run by ONNX Runtime. ``threads``: intra-op threads (default: ONNX Runtime's choice);
    ``spinning``: let idle pool threads busy-wait (ONNX Runtime's default; off here, see ``session_options``)."""

    resizes_input = True   # prepare_pair → pair_io.resize_image to the network resolution

    def __init__(self, onnx_path: str | Path, device: str = "cpu", threads: int | None = None,
                 spinning: bool = False):
        import onnxruntime as ort

        self.onnx = read_onnx_info(onnx_path)
        self.providers = choose_providers(device)
        options = session_options(threads, spinning)
        providers = [(p, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(self.onnx.path.parent)})
                     if p == "TensorrtExecutionProvider" else p for p in self.providers]
        try:
            self.session = ort.InferenceSession(os.fspath(self.onnx.path), sess_options=options,
                                                providers=providers)
        except Exception as exc:  # onnxruntime raises its own pybind exception types (InvalidProtobuf, Fail, ...)
            raise ValueError(f"{self.onnx.path}: ONNX Runtime could not load the model: {exc}") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        for name in self.onnx.inputs:
            if inputs[name].type != "tensor(float)":
                raise ValueError(f"{self.onnx.path}: input {name} is {inputs[name].type}, expected tensor(float)")
        self.outputs = self.onnx.outputs

    def run_network(self, x1: np.ndarray, x2: np.ndarray) -> dict[str, np.ndarray]:
        """The raw network call on normalised float32 (1, 3, h, w) inputs → batched outputs by name."""
        return dict(zip(self.outputs, self.session.run(list(self.outputs), {"img1": x1, "img2": x2})))

    def infer(self, img1: np.ndarray, img2: np.ndarray) -> dict[str, np.ndarray]:
        """Point maps for the pair (uint8 (H, W, 3) RGB, any size) at the network resolution; see base.py."""
        src = str(self.onnx.path)
        x1, x2 = prepare_pair(img1, img2, self.onnx.height, self.onnx.width, src, self.onnx.normalisation)
        return unbatch_outputs(self.run_network(x1, x2), self.outputs, self.onnx.height, self.onnx.width, src)

    def info(self) -> EngineInfo:
        used = self.session.get_providers()
        device = "cpu" if used[0] == "CPUExecutionProvider" else f"cuda ({used[0]})"
        return EngineInfo(backend="onnxruntime", device=device, precision="fp32", height=self.onnx.height,
                          width=self.onnx.width, symmetric=self.onnx.symmetric,
                          extra={"onnx": str(self.onnx.path), "providers": used, "preset": self.onnx.preset})
