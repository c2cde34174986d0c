"""CUDA for the TensorRT backend: device buffers, pinned host buffers, one stream, one blocking-sync event, CUDA
graphs and the driver's memory figures, through **torch** when it has CUDA (desktop wheels) or else through NVIDIA's
**cuda-python** runtime bindings (``cuda.bindings.runtime``, the way NVIDIA's TensorRT samples do it; on Jetson the
pip torch wheel has no CUDA but ``pip install 'cuda-bindings==12.*'`` matches JetPack 6's CUDA 12).

Both implement ``CudaDevice``. The wait after an inference is one event created with ``cudaEventBlockingSync``: the
CPU thread sleeps instead of spinning a core for the whole inference (``stream.synchronize()`` may spin).
Memory: ``used_bytes()`` is ``total − free`` from ``cudaMemGetInfo`` (the driver's view: it includes TensorRT's
own allocations, which torch's allocator statistics do not see).
"""
from __future__ import annotations

import ctypes
import logging
from typing import NamedTuple

import numpy as np

log = logging.getLogger(__name__)


class DeviceProps(NamedTuple):
    """What identifies the GPU an engine is built for (part of the engine cache key)."""
    name: str
    capability: tuple[int, int]
    sm_count: int
    total_memory_mb: int


def _cudart():
    """cuda-python's runtime module (cuda-bindings >= 12.6 layout, else the older ``cuda.cudart``), or None."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            return None
    return cudart


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def cuda_unavailable_reason() -> str | None:
    """None when a CUDA GPU can be driven from here (torch with CUDA, or cuda-python and a driver), else why not."""
    if _torch_cuda() is not None:
        return None
    cudart = _cudart()
    if cudart is None:
        return ("no CUDA through torch (CPU-only torch wheel, or no GPU) and cuda-python is not installed "
                "(on Jetson: pip install 'cuda-bindings==12.*')")
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess:
        return f"no CUDA through torch, and cuda-python's cudaGetDeviceCount says {err.name}"
    if count < 1:
        return "no CUDA GPU is visible (cuda-python sees 0 devices)"
    return None


def open_device(index: int = 0) -> "CudaDevice":
    """The CUDA device ``index`` through torch when it has CUDA, else through cuda-python; RuntimeError if neither."""
    reason = cuda_unavailable_reason()
    if reason:
        raise RuntimeError(f"CUDA unavailable: {reason}")
    return TorchDevice(index) if _torch_cuda() is not None else CudaPythonDevice(index)


def device_props(index: int = 0) -> DeviceProps:
    """Name, compute capability, SM count and memory of CUDA device ``index`` (torch or cuda-python)."""
    torch = _torch_cuda()
    if torch is not None:
        p = torch.cuda.get_device_properties(index)
        return DeviceProps(p.name, (p.major, p.minor), p.multi_processor_count, p.total_memory // 2**20)
    cudart = _cudart()
    if cudart is None:
        raise RuntimeError(f"CUDA unavailable: {cuda_unavailable_reason()}")
    p = _check(cudart, cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = p.name.split(b"\0", 1)[0].decode() if isinstance(p.name, bytes) else str(p.name)
    return DeviceProps(name, (p.major, p.minor), p.multiProcessorCount, p.totalGlobalMem // 2**20)


def _check(cudart, result, what: str):
    """Unpack a cuda-python ``(err, *values)`` tuple; RuntimeError naming the call unless cudaSuccess."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"{what} failed: {getattr(err, 'name', err)}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


class CudaDevice:
    """One GPU, one non-default stream. Buffers are numpy arrays on the host side (pinned) and opaque objects with
    an integer ``ptr`` on the device side."""
    backend = ""
    stream_handle: int = 0

    def device_buffer(self, shape: tuple[int, ...], dtype: np.dtype): ...
    def pinned(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray: ...
    def h2d(self, device_buffer, host: np.ndarray) -> None: ...
    def d2h(self, host: np.ndarray, device_buffer) -> None: ...
    def wait(self) -> None: ...
    def capture(self, enqueue) -> object: ...
    def launch(self, graph) -> None: ...
    def used_bytes(self) -> int: ...


class TorchDevice(CudaDevice):
    """Through torch.cuda (desktop/server wheels with CUDA)."""
    backend = "torch"

    def __init__(self, index: int = 0):
        import torch

        self._torch = torch
        self.device = torch.device("cuda", index)
        torch.cuda.set_device(self.device)
        self._stream = torch.cuda.Stream(self.device)
        self.stream_handle = self._stream.cuda_stream
        self._event = torch.cuda.Event(blocking=True)  # cudaEventBlockingSync: the waiting thread sleeps
        self._pinned = {}  # address -> the pinned torch tensor behind a numpy view handed out

    def device_buffer(self, shape, dtype):
        t = self._torch.empty(tuple(shape), dtype=self._torch.from_numpy(np.empty(0, dtype)).dtype, device=self.device)
        t.ptr = t.data_ptr()
        return t

    def pinned(self, shape, dtype):
        t = self._torch.empty(tuple(shape), dtype=self._torch.from_numpy(np.empty(0, dtype)).dtype, pin_memory=True)
        self._pinned[t.data_ptr()] = t
        return t.numpy()

    def _host_tensor(self, host: np.ndarray):
        """The pinned tensor behind ``host`` (so copies are asynchronous DMA), else a plain view of it."""
        t = self._pinned.get(host.ctypes.data)
        return t if t is not None and t.numel() == host.size else self._torch.from_numpy(host)

    def h2d(self, device_buffer, host):
        with self._torch.cuda.stream(self._stream):
            device_buffer.copy_(self._host_tensor(host), non_blocking=True)

    def d2h(self, host, device_buffer):
        with self._torch.cuda.stream(self._stream):
            self._host_tensor(host).copy_(device_buffer, non_blocking=True)

    def wait(self):
        self._event.record(self._stream)
        self._event.synchronize()

    def capture(self, enqueue):
        graph = self._torch.cuda.CUDAGraph()
        with self._torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
            enqueue()
        return graph

    def launch(self, graph):
        with self._torch.cuda.stream(self._stream):
            graph.replay()

    def used_bytes(self):
        free, total = self._torch.cuda.mem_get_info(self.device)
        return total - free


class _CudaPythonBuffer:
    def __init__(self, cudart, ptr: int, nbytes: int):
        self._cudart, self.ptr, self.nbytes = cudart, int(ptr), nbytes

    def __del__(self):
        try:
            self._cudart.cudaFree(self.ptr)
        except Exception:  # interpreter shutdown
            pass


class CudaPythonDevice(CudaDevice):
    """Through cuda-python's runtime bindings (Jetson, or any machine whose torch has no CUDA)."""
    backend = "cuda-python"

    def __init__(self, index: int = 0):
        cudart = _cudart()
        if cudart is None:
            raise RuntimeError(f"CUDA unavailable: {cuda_unavailable_reason()}")
        self._rt = cudart
        _check(cudart, cudart.cudaSetDevice(index), "cudaSetDevice")
        self._stream = _check(cudart, cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                              "cudaStreamCreateWithFlags")
        self.stream_handle = int(self._stream)
        flags = cudart.cudaEventBlockingSync | cudart.cudaEventDisableTiming
        self._event = _check(cudart, cudart.cudaEventCreateWithFlags(flags), "cudaEventCreateWithFlags")
        self._host_ptrs: list[int] = []

    def device_buffer(self, shape, dtype):
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return _CudaPythonBuffer(self._rt, _check(self._rt, self._rt.cudaMalloc(nbytes), "cudaMalloc"), nbytes)

    def pinned(self, shape, dtype):
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = int(_check(self._rt, self._rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        self._host_ptrs.append(ptr)
        raw = (ctypes.c_byte * nbytes).from_address(ptr)
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def _copy(self, dst: int, src: int, nbytes: int, kind) -> None:
        _check(self._rt, self._rt.cudaMemcpyAsync(dst, src, nbytes, kind, self._stream), "cudaMemcpyAsync")

    def h2d(self, device_buffer, host):
        self._copy(device_buffer.ptr, host.ctypes.data, host.nbytes, self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice)

    def d2h(self, host, device_buffer):
        self._copy(host.ctypes.data, device_buffer.ptr, host.nbytes, self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost)

    def wait(self):
        _check(self._rt, self._rt.cudaEventRecord(self._event, self._stream), "cudaEventRecord")
        _check(self._rt, self._rt.cudaEventSynchronize(self._event), "cudaEventSynchronize")

    def capture(self, enqueue):
        rt = self._rt
        _check(rt, rt.cudaStreamBeginCapture(self._stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
               "cudaStreamBeginCapture")
        try:
            enqueue()
        finally:
            graph = _check(rt, rt.cudaStreamEndCapture(self._stream), "cudaStreamEndCapture")
        return _check(rt, rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def launch(self, graph):
        _check(self._rt, self._rt.cudaGraphLaunch(graph, self._stream), "cudaGraphLaunch")

    def used_bytes(self):
        free, total = _check(self._rt, self._rt.cudaMemGetInfo(), "cudaMemGetInfo")
        return int(total) - int(free)

    def __del__(self):
        try:
            for ptr in self._host_ptrs:
                self._rt.cudaFreeHost(ptr)
        except Exception:  # interpreter shutdown
            pass
