"""TensorRT backend: a cached engine (tensorrt_build.py) run on device buffers with one CUDA stream
(``IExecutionContext.set_tensor_address`` + ``execute_async_v3``, both return values checked), optionally replayed
as a CUDA graph that is kept only when its outputs are bit-identical to a plain run.

CUDA (buffers, stream, the one blocking-sync event, graphs, memory figures) comes from ``cuda_device``: torch when
it has CUDA, else cuda-python (Jetson). Inputs are normalised straight into the pinned input buffers; results are
copied out of the pinned output buffers, so a result never changes when the next inference runs. Inputs/outputs
are bound by name and checked against the ONNX file's declared names and shapes (``plan_bindings``, plain Python).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dpm_ros.engine.base import Engine, EngineInfo
from dpm_ros.engine.cache import read_engine_bytes
from dpm_ros.engine.cuda_device import device_props, open_device
from dpm_ros.engine.onnx_model import read_onnx_info
from dpm_ros.engine.pair_io import prepare_pair, unbatch_outputs
from dpm_ros.engine.tensorrt_build import get_or_build_engine, import_tensorrt, trt_logger

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


def collect_outputs(host_buffers: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Fresh copies of the named host (pinned) output buffers: the next inference overwrites the buffers, never
    a result already handed out."""
    return {name: np.array(host_buffers[name], copy=True) for name in names}


def graph_mismatches(plain: dict[str, np.ndarray], replayed: dict[str, np.ndarray]) -> list[str]:
    """Outputs whose CUDA-graph replay differs from the plain run in any bit (NaN equal to NaN): a failed or
    partial capture replays stale or empty work, so any difference means the graph is not used."""
    bad = []
    for name, ref in plain.items():
        got = replayed.get(name)
        if got is None or got.shape != ref.shape or got.dtype != ref.dtype or \
                not np.array_equal(got.view(np.uint8), ref.view(np.uint8)):
            bad.append(name)
    return bad


class TensorRTEngine(Engine):
    """A DPM network compiled by TensorRT. ``onnx_path``: an exported file; the engine is built on first use and
    cached under ``cache_dir`` (default: ``cache.default_cache_dir``) keyed to this GPU and TensorRT version."""

    resizes_input = True   # prepare_pair → pair_io.resize_image to the network resolution

    def __init__(self, onnx_path: str | Path, precision: str = "fp16", cache_dir: str | Path | None = None,
                 device_index: int = 0, cuda_graph: bool = False, workspace_gb: float | None = None):
        trt = import_tensorrt()
        self._trt = trt
        self.onnx = read_onnx_info(onnx_path)
        self.precision = precision
        self.device_index = device_index
        self.outputs = self.onnx.outputs
        self.cuda = open_device(device_index)
        self._runtime = trt.Runtime(trt_logger())
        self.engine_path, self.meta, built = get_or_build_engine(onnx_path, cache_dir, precision, workspace_gb,
                                                                 device_index=device_index, info=self.onnx)
        self._engine = self._runtime.deserialize_cuda_engine(read_engine_bytes(self.engine_path))
        if self._engine is None and not built:  # stale or damaged cache entry: rebuild once
            log.warning("%s: cached engine failed to deserialise; rebuilding", self.engine_path)
            self.engine_path, self.meta, _ = get_or_build_engine(onnx_path, cache_dir, precision, workspace_gb,
                                                                 force=True, device_index=device_index, info=self.onnx)
            self._engine = self._runtime.deserialize_cuda_engine(read_engine_bytes(self.engine_path))
        if self._engine is None:
            raise RuntimeError(f"{self.engine_path}: TensorRT could not deserialise the engine it just built")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise RuntimeError(f"{self.engine_path}: TensorRT could not create an execution context (GPU memory?)")
        self._bind()
        self._graph = None
        self.graph_status = "off"
        self.gpu_peak_bytes = self.cuda.used_bytes()
        if cuda_graph:
            self._capture_graph()

    def _bind(self) -> None:
        trt, engine = self._trt, self._engine
        io, dtypes = {}, {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
            io[name] = (mode, tuple(engine.get_tensor_shape(name)))
            dtypes[name] = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        shape = (1, 3, self.onnx.height, self.onnx.width)
        plan_bindings(io, {n: shape for n in self.onnx.inputs}, self.outputs, str(self.engine_path))
        self._device, self._host = {}, {}
        for name, (_, dims) in io.items():
            self._device[name] = self.cuda.device_buffer(dims, dtypes[name])
            self._host[name] = self.cuda.pinned(dims, dtypes[name])
            if not self._context.set_tensor_address(name, self._device[name].ptr):
                raise RuntimeError(f"{self.engine_path}: TensorRT refused the device address of tensor {name!r}")

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self.cuda.stream_handle):
            raise RuntimeError(f"{self.engine_path}: TensorRT execution failed (execute_async_v3 returned False)")

    def _run(self, use_graph: bool = True) -> dict[str, np.ndarray]:
        """Inputs already in the pinned buffers → H2D, execute (or replay), D2H, one event wait → output copies."""
        for name in self.onnx.inputs:
            self.cuda.h2d(self._device[name], self._host[name])
        if use_graph and self._graph is not None:
            self.cuda.launch(self._graph)
        else:
            self._execute()
        for name in self.outputs:
            self.cuda.d2h(self._host[name], self._device[name])
        self.cuda.wait()
        self.gpu_peak_bytes = max(self.gpu_peak_bytes, self.cuda.used_bytes())
        return collect_outputs(self._host, self.outputs)

    def _capture_graph(self) -> None:
        rng = np.random.default_rng(0)
        for name in self.onnx.inputs:
            self._host[name][...] = rng.uniform(-1, 1, self._host[name].shape)
        plain = self._run(use_graph=False)  # also finishes TensorRT's lazy set-up outside the capture
        try:
            graph = self.cuda.capture(self._execute)
        except RuntimeError as exc:
            self.graph_status = f"capture failed: {exc}"
            log.warning("%s: CUDA graph capture failed (%s); running without", self.engine_path, exc)
            return
        self._graph = graph
        for name in self.outputs:  # poison the device outputs: an empty replay would otherwise return the plain run's
            self._host[name].fill(np.nan)
            self.cuda.h2d(self._device[name], self._host[name])
        bad = graph_mismatches(plain, self._run(use_graph=True))
        if bad:
            self._graph = None
            self.graph_status = f"replay differs from a plain run in {bad}"
            log.warning("%s: CUDA graph replay differs from a plain run in %s; running without", self.engine_path, bad)
        else:
            self.graph_status = "on (replay bit-identical to a plain run)"

    def run_network(self, x1: np.ndarray, x2: np.ndarray) -> dict[str, np.ndarray]:
        """The raw network call on normalised float32 (1, 3, h, w) inputs → batched outputs by name (fresh arrays)."""
        for name, x in zip(self.onnx.inputs, (x1, x2)):
            np.copyto(self._host[name], x)
        return self._run()

    def infer(self, img1: np.ndarray, img2: np.ndarray) -> dict[str, np.ndarray]:
        """Point maps for the pair (uint8 (H, W, 3) RGB, any size) at the engine resolution; see base.py."""
        src = str(self.onnx.path)
        prepare_pair(img1, img2, self.onnx.height, self.onnx.width, src, self.onnx.normalisation,
                     out=tuple(self._host[n] for n in self.onnx.inputs))
        return unbatch_outputs(self._run(), self.outputs, self.onnx.height, self.onnx.width, src)

    def gpu_peak_mb(self) -> float:
        """Peak GPU memory in use (MiB) seen by the CUDA driver (``cudaMemGetInfo``: total − free) since this engine
        was created, sampled after each inference: TensorRT's own allocations included, other processes too."""
        return round(self.gpu_peak_bytes / 2**20, 1)

    def info(self) -> EngineInfo:
        props = device_props(self.device_index)
        return EngineInfo(backend="tensorrt", device=f"cuda:{self.device_index} ({props.name}, "
                          f"sm_{props.capability[0]}{props.capability[1]}, {props.sm_count} SMs)",
                          precision=self.precision, height=self.onnx.height, width=self.onnx.width,
                          symmetric=self.onnx.symmetric,
                          extra={"onnx": str(self.onnx.path), "engine": str(self.engine_path),
                                 "tensorrt_version": self.meta["key"]["tensorrt_version"],
                                 "cuda_via": self.cuda.backend, "cuda_graph": self._graph is not None,
                                 "cuda_graph_status": self.graph_status, "preset": self.onnx.preset})
