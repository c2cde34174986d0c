"""TensorRT backend: a cached engine (tensorrt_build.py) run on device buffers with one CUDA stream
(``IExecutionContext.set_tensor_address`` + ``execute_async_v3``), optionally replayed as a CUDA graph.

Buffers and the stream come from torch.cuda. Inputs/outputs are bound by name and checked against the ONNX file's
declared names and shapes (``plan_bindings``, plain Python, tested without a GPU).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dpm_ros.engine.base import Engine, EngineInfo
from dpm_ros.engine.onnx_model import read_onnx_info
from dpm_ros.engine.pair_io import prepare_pair, unbatch_outputs
from dpm_ros.engine.tensorrt_build import device_identity, get_or_build_engine, import_tensorrt

log = logging.getLogger(__name__)


def plan_bindings(io_tensors: dict[str, tuple[str, tuple[int, ...]]], inputs: dict[str, tuple[int, ...]],
                  outputs: tuple[str, ...], source: str) -> None:
    """Check an engine's I/O tensors ``{name: ("input"|"output", shape)}`` against what the ONNX file declares.

    Raises ValueError naming ``source`` for a missing tensor, a tensor of the wrong direction or a wrong shape.
    """
    for name, shape in inputs.items():
        mode, got = io_tensors.get(name, (None, None))
        if mode != "input":
            raise ValueError(f"{source}: engine has no input tensor {name!r} (inputs: "
                             f"{[n for n, (m, _) in io_tensors.items() if m == 'input']})")
        if tuple(got) != tuple(shape):
            raise ValueError(f"{source}: engine input {name!r} has shape {tuple(got)}, expected {tuple(shape)}; "
                             "rebuild the engine from the ONNX file")
    for name in outputs:
        if io_tensors.get(name, (None,))[0] != "output":
            raise ValueError(f"{source}: engine has no output tensor {name!r}; rebuild it from the ONNX file")


class TensorRTEngine(Engine):
    """A DPM network compiled by TensorRT. ``onnx_path``: an exported file; the engine is built on first use and
    cached under ``cache_dir`` (default: ``cache.default_cache_dir``) keyed to this GPU and TensorRT version."""

    def __init__(self, onnx_path: str | Path, precision: str = "fp16", cache_dir: str | Path | None = None,
                 device_index: int = 0, cuda_graph: bool = False, workspace_gb: float | None = None):
        import torch

        trt = import_tensorrt()
        self._torch, self._trt = torch, trt
        self.onnx = read_onnx_info(onnx_path)
        self.precision = precision
        self.device = torch.device("cuda", device_index)
        self.outputs = self.onnx.outputs
        torch.cuda.set_device(self.device)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine_path, self.meta, built = get_or_build_engine(onnx_path, cache_dir, precision, workspace_gb,
                                                                 device_index=device_index)
        self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None and not built:  # stale or damaged cache entry: rebuild once
            log.warning("%s: cached engine failed to deserialise; rebuilding", self.engine_path)
            self.engine_path, self.meta, _ = get_or_build_engine(onnx_path, cache_dir, precision, workspace_gb,
                                                                 force=True, device_index=device_index)
            self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            raise RuntimeError(f"{self.engine_path}: TensorRT could not deserialise the engine it just built")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream(self.device)
        self._bind()
        self._graph = None
        if cuda_graph:
            self._capture_graph()

    def _bind(self) -> None:
        torch, trt, engine = self._torch, self._trt, self._engine
        io = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
            io[name] = (mode, tuple(engine.get_tensor_shape(name)))
        shape = (1, 3, self.onnx.height, self.onnx.width)
        plan_bindings(io, {n: shape for n in self.onnx.inputs}, self.outputs, str(self.engine_path))
        self._device_buffers, self._host_buffers = {}, {}
        for name, (_, dims) in io.items():
            np_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            dtype = torch.from_numpy(np.empty(0, np_dtype)).dtype
            self._device_buffers[name] = torch.empty(dims, dtype=dtype, device=self.device)
            self._host_buffers[name] = torch.empty(dims, dtype=dtype, pin_memory=True)
            self._context.set_tensor_address(name, self._device_buffers[name].data_ptr())

    def _enqueue(self) -> None:
        if self._graph is not None:
            with self._torch.cuda.stream(self._stream):
                self._graph.replay()
        elif not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"{self.engine_path}: TensorRT execution failed")

    def _capture_graph(self) -> None:
        torch = self._torch
        self._enqueue()  # one plain run first: TensorRT finishes lazy set-up outside the capture
        self._stream.synchronize()
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                self._context.execute_async_v3(self._stream.cuda_stream)
            self._graph = graph
        except RuntimeError as exc:
            log.warning("%s: CUDA graph capture failed (%s); running without", self.engine_path, exc)

    def run_network(self, x1: np.ndarray, x2: np.ndarray) -> dict[str, np.ndarray]:
        """The raw network call on normalised float32 (1, 3, h, w) inputs → batched outputs by name (host copies
        into pinned buffers, one stream: H2D, execute, D2H, synchronise)."""
        torch = self._torch
        with torch.cuda.stream(self._stream):
            for name, x in zip(self.onnx.inputs, (x1, x2)):
                host = self._host_buffers[name]
                host.copy_(torch.from_numpy(x))
                self._device_buffers[name].copy_(host, non_blocking=True)
            self._enqueue()
            for name in self.outputs:
                self._host_buffers[name].copy_(self._device_buffers[name], non_blocking=True)
        self._stream.synchronize()
        return {name: self._host_buffers[name].numpy() for name in self.outputs}

    def infer(self, img1: np.ndarray, img2: np.ndarray) -> dict[str, np.ndarray]:
        """Point maps for the pair (uint8 (H, W, 3) RGB, any size) at the engine resolution; see base.py."""
        src = str(self.onnx.path)
        x1, x2 = prepare_pair(img1, img2, self.onnx.height, self.onnx.width, src, self.onnx.normalisation)
        return unbatch_outputs(self.run_network(x1, x2), self.outputs, self.onnx.height, self.onnx.width, src)

    def info(self) -> EngineInfo:
        gpu_name, capability = device_identity(self.device.index or 0)
        return EngineInfo(backend="tensorrt", device=f"{self.device} ({gpu_name}, sm_{capability[0]}{capability[1]})",
                          precision=self.precision, height=self.onnx.height, width=self.onnx.width,
                          symmetric=self.onnx.symmetric,
                          extra={"onnx": str(self.onnx.path), "engine": str(self.engine_path),
                                 "tensorrt_version": self.meta["key"]["tensorrt_version"],
                                 "cuda_graph": self._graph is not None, "preset": self.onnx.preset})
