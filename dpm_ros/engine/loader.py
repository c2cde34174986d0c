"""``load_engine``: one call from a model file to an ``Engine``, choosing the backend.

``auto`` picks TensorRT when a CUDA GPU and a supported tensorrt runtime are present, else ONNX Runtime on the CPU,
and logs which and why; when TensorRT then fails to load (build, deserialise, bind, CUDA: any exception) ``auto``
falls back to ONNX Runtime on the CPU and logs the reason as a warning. An explicit ``tensorrt`` raises instead.
``.onnx`` files run on onnxruntime or tensorrt; ``.safetensors`` weights run on torch.
"""
from __future__ import annotations

import logging
from pathlib import Path

from dpm_ros.engine.base import Engine
from dpm_ros.engine.onnx_model import check_model_file

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")


def choose_backend(path: str | Path, backend: str = "auto") -> tuple[str, str]:
    """(backend, reason) for running ``path``; ``backend`` other than auto is checked against the file type."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    suffix = Path(path).suffix
    if suffix == ".engine":
        raise ValueError(f"{path}: pass the .onnx file instead; its TensorRT engine is found in (or built into) "
                         "the engine cache, keyed to this GPU and TensorRT version")
    if suffix not in (".onnx", ".safetensors"):
        raise ValueError(f"{path}: unknown model file type {suffix!r} (use .onnx from `dpm export`, or .safetensors "
                         "weights for the torch backend)")
    if suffix == ".safetensors":
        if backend not in ("auto", "torch"):
            raise ValueError(f"{path}: .safetensors weights run on the torch backend; export them with "
                             f"`dpm export` to use {backend}")
        return "torch", "weights file"
    if backend == "torch":
        raise ValueError(f"{path}: the torch backend needs .safetensors weights, not an ONNX file")
    if backend != "auto":
        return backend, "requested"
    from dpm_ros.engine.tensorrt_build import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is None:
        return "tensorrt", "CUDA GPU and TensorRT present"
    return "onnxruntime", f"TensorRT not used: {reason}"


def load_engine(path: str | Path, backend: str = "auto", precision: str | None = None, device: str | None = None,
                cache_dir: str | Path | None = None, cuda_graph: bool = False, compile: bool = False,
                threads: int | None = None, symmetric: bool = True) -> Engine:
    """An Engine for ``path`` (``engines/NAME.onnx`` or ``NAME.safetensors``).

    precision: tensorrt fp16 (default) / bf16 / fp32; torch fp32 (default on CPU) / fp16 (default on CUDA) / bf16;
    onnxruntime runs the exported fp32 graph. device: "cpu" or "cuda" (onnxruntime, torch; default cpu for
    onnxruntime, cuda when available for torch). cache_dir: where TensorRT engines are cached (default: beside the
    ONNX file when writable, see cache.default_cache_dir). cuda_graph (tensorrt), compile (torch.compile),
    threads (onnxruntime intra-op threads).
    """
    path = check_model_file(path, "model")
    chosen, why = choose_backend(path, backend)
    log.info("engine %s: backend %s (%s)", path, chosen, why)
    if chosen == "onnxruntime":
        if precision not in (None, "fp32"):
            raise ValueError(f"{path}: onnxruntime runs the exported fp32 graph; precision {precision} is available "
                             "on the tensorrt and torch backends")
        from dpm_ros.engine.onnxruntime_backend import OnnxRuntimeEngine
        return OnnxRuntimeEngine(path, device=device or "cpu", threads=threads)
    if chosen == "tensorrt":
        from dpm_ros.engine.tensorrt_backend import TensorRTEngine
        try:
            return TensorRTEngine(path, precision=precision or "fp16", cache_dir=cache_dir, cuda_graph=cuda_graph)
        except Exception as exc:  # noqa: BLE001 - auto must reach a working backend whatever TensorRT raised
            if backend != "auto":
                raise
            log.warning("engine %s: TensorRT failed at load (%s: %s); falling back to onnxruntime on the CPU "
                        "(fp32)", path, type(exc).__name__, exc)
            from dpm_ros.engine.onnxruntime_backend import OnnxRuntimeEngine
            return OnnxRuntimeEngine(path, device="cpu", threads=threads)
    import torch

    from dpm_ros.engine.torch_backend import load_torch_engine
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = precision or ("fp16" if device.startswith("cuda") else "fp32")
    return load_torch_engine(path, device=device, precision=precision, compile=compile, symmetric=symmetric)
