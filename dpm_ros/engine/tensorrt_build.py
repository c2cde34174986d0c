"""Building TensorRT engines from exported ONNX files (TensorRT >= 10 Python API), cached under a key.

FP16/BF16 builds keep the numerically fragile layers in FP32 with precision constraints: softmax, normalisation
(LayerNorm), reductions, exp/log/sqrt/pow (the heads' depth and confidence activations) and the attention-logit
chain (Q·Kᵀ matmul and its scaling up to the softmax). Which layers those are is decided by a plain function over
layer descriptors (``fp32_layer_indices``), tested without a GPU; the rest follows the TensorRT API exactly.
Users with FP16 accuracy problems can compare layer by layer against ONNX Runtime with NVIDIA's polygraphy:
``polygraphy run engines/NAME.onnx --trt --fp16 --onnxrt --atol 1e-3 --rtol 1e-3 --trt-outputs mark all
--onnx-outputs mark all``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, NamedTuple

from dpm_ros.engine import cache
from dpm_ros.engine.onnx_model import read_onnx_info

log = logging.getLogger(__name__)

FP32_LAYER_TYPES = {"SOFTMAX", "NORMALIZATION", "REDUCE"}
FP32_UNARY_OPS = {"EXP", "LOG", "SQRT", "RECIP"}
FP32_ELEMENTWISE_OPS = {"POW", "DIV"}
# layers allowed between the Q·Kᵀ matmul and the softmax (scaling, bias, reshapes)
ATTENTION_PATH_TYPES = {"ELEMENTWISE", "SCALE", "SHUFFLE", "CAST", "IDENTITY"}


class LayerDesc(NamedTuple):
    """What precision selection needs to know about one network layer (TensorRT-independent)."""
    index: int
    type: str                 # LayerType name, e.g. "SOFTMAX", "MATRIX_MULTIPLY"
    op: str                   # UnaryOperation / ElementWiseOperation name, "" for other layers
    inputs: tuple[str, ...]   # input tensor names
    outputs: tuple[str, ...]  # output tensor names
    is_float: bool            # every output is a floating-point tensor (not shape/index arithmetic)


def fp32_layer_indices(layers: list[LayerDesc], max_attention_depth: int = 6) -> list[int]:
    """Indices of the layers to pin to FP32 in a reduced-precision build (see module docstring)."""
    producer = {name: desc for desc in layers for name in desc.outputs}
    keep = set()
    for desc in layers:
        if not desc.is_float:
            continue
        if (desc.type in FP32_LAYER_TYPES or (desc.type == "UNARY" and desc.op in FP32_UNARY_OPS)
                or (desc.type == "ELEMENTWISE" and desc.op in FP32_ELEMENTWISE_OPS)):
            keep.add(desc.index)
        if desc.type == "SOFTMAX":  # walk up to the matmul that makes the logits
            frontier = [producer[n] for n in desc.inputs if n in producer]
            for _ in range(max_attention_depth):
                nxt = []
                for up in frontier:
                    if up.type == "MATRIX_MULTIPLY":
                        keep.add(up.index)
                    elif up.type in ATTENTION_PATH_TYPES and up.is_float:
                        keep.add(up.index)
                        nxt += [producer[n] for n in up.inputs if n in producer and producer[n].type != "CONSTANT"]
                frontier = nxt
    return sorted(keep)


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT can run here (runtime installed and a CUDA GPU visible), else why not."""
    try:
        import tensorrt as trt
    except ImportError:
        return "the tensorrt package is not installed"
    if not hasattr(trt, "Builder"):
        return "only TensorRT type stubs are installed (tensorrt-stubs), not the TensorRT runtime"
    try:
        import torch
    except ImportError:
        return "torch (used for CUDA buffers and streams) is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def import_tensorrt():
    """The tensorrt module, or RuntimeError saying why it cannot run here."""
    reason = tensorrt_unavailable_reason()
    if reason:
        raise RuntimeError(f"TensorRT backend unavailable: {reason}")
    import tensorrt as trt
    return trt


def device_identity(device_index: int = 0) -> tuple[str, tuple[int, int]]:
    """(GPU name, compute capability) of the CUDA device an engine is built for."""
    import torch
    return torch.cuda.get_device_name(device_index), tuple(torch.cuda.get_device_capability(device_index))


def describe_layers(trt, network) -> list[LayerDesc]:
    """LayerDesc for every layer of a parsed TensorRT network."""
    floats = (trt.float32, trt.float16, trt.bfloat16)
    layers = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        op = ""
        if layer.type == trt.LayerType.UNARY:
            layer.__class__ = trt.IUnaryLayer  # the TensorRT Python idiom to reach a layer's subclass attributes
            op = layer.op.name
        elif layer.type == trt.LayerType.ELEMENTWISE:
            layer.__class__ = trt.IElementWiseLayer
            op = layer.op.name
        in_tensors = [layer.get_input(j) for j in range(layer.num_inputs)]
        out_tensors = [layer.get_output(j) for j in range(layer.num_outputs)]
        layers.append(LayerDesc(i, layer.type.name, op,
                                tuple(tensor.name for tensor in in_tensors if tensor is not None),
                                tuple(tensor.name for tensor in out_tensors),
                                all(tensor.dtype in floats for tensor in out_tensors)))
    return layers


def _progress_monitor(trt, report: Callable[[str], None]):
    """An IProgressMonitor that reports each top-level build phase through ``report``."""

    class Progress(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                report(f"{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # never cancel

        def phase_finish(self, phase_name):
            pass

    return Progress()


def build_serialized_engine(onnx_path: str | Path, precision: str = "fp16", workspace_gb: float | None = None,
                            timing_cache_file: Path | None = None,
                            report: Callable[[str], None] | None = None) -> bytes:
    """Parse ``onnx_path`` and build a serialized TensorRT engine (``precision``: fp32, fp16 or bf16).

    The timing cache at ``timing_cache_file`` is read when present and written back (atomically) after the build.
    Raises ValueError naming the file when TensorRT cannot parse it, RuntimeError when the build fails.
    """
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"{onnx_path}: TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    if workspace_gb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    for i in range(network.num_outputs):
        network.get_output(i).dtype = trt.float32
    if precision in ("fp16", "bf16"):
        if precision == "fp16" and not builder.platform_has_fast_fp16:
            log.warning("this GPU has no fast FP16; building FP16 anyway")
        config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = fp32_layer_indices(describe_layers(trt, network))
        for i in pinned:
            layer = network.get_layer(i)
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
        log.info("%d of %d layers pinned to FP32", len(pinned), network.num_layers)
    elif precision != "fp32":
        raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
    blob = timing_cache_file.read_bytes() if timing_cache_file and timing_cache_file.is_file() else b""
    timing_cache = config.create_timing_cache(blob)
    if not config.set_timing_cache(timing_cache, False):
        log.warning("timing cache %s does not match this GPU/TensorRT; starting a new one", timing_cache_file)
        timing_cache = config.create_timing_cache(b"")
        config.set_timing_cache(timing_cache, True)
    if report is not None:
        config.progress_monitor = _progress_monitor(trt, report)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
    if timing_cache_file is not None:
        cache.atomic_write_bytes(timing_cache_file, memoryview(config.get_timing_cache().serialize()))
    return bytes(memoryview(serialized))


def current_key(onnx_path: str | Path, precision: str, device_index: int = 0) -> dict:
    """The cache key for building ``onnx_path`` at ``precision`` on this machine's GPU and TensorRT."""
    trt = import_tensorrt()
    info = read_onnx_info(onnx_path)
    gpu_name, capability = device_identity(device_index)
    shapes = {name: (1, 3, info.height, info.width) for name in info.inputs}
    onnx_sha = cache.file_sha256(onnx_path, extra_files=info.external_files)
    return cache.engine_cache_key(onnx_sha, trt.__version__, gpu_name, capability, precision,
                                  shapes)


def get_or_build_engine(onnx_path: str | Path, cache_dir: str | Path | None = None, precision: str = "fp16",
                        workspace_gb: float | None = None, force: bool = False, device_index: int = 0,
                        report: Callable[[str], None] | None = None) -> tuple[Path, dict, bool]:
    """The engine for ``onnx_path`` from the cache, built (and cached atomically) when missing, stale or ``force``.

    ``cache_dir`` defaults to ``cache.default_cache_dir``. Returns (engine path, metadata, built now?).
    """
    onnx_path = Path(onnx_path)
    cache_dir = Path(cache_dir) if cache_dir is not None else cache.default_cache_dir(onnx_path)
    key = current_key(onnx_path, precision, device_index)
    engine_path, meta_path = cache.engine_paths(cache_dir, onnx_path, key)
    if not force and cache.cached_engine(cache_dir, onnx_path, key) is not None:
        return engine_path, cache.read_metadata(meta_path), False
    stale = cache.mismatched_fields(key, cache.read_metadata(meta_path))
    log.info("building TensorRT engine %s (%s)", engine_path, "forced" if force else f"cache miss: {stale}")
    info = read_onnx_info(onnx_path)
    start = time.perf_counter()
    blob = build_serialized_engine(onnx_path, precision, workspace_gb,
                                   cache.timing_cache_path(cache_dir, key["tensorrt_version"], key["gpu_name"],
                                                           tuple(key["compute_capability"])), report)
    seconds = time.perf_counter() - start
    cache.atomic_write_bytes(engine_path, blob)
    meta = cache.write_metadata(meta_path, key, onnx_path=str(onnx_path), build_seconds=round(seconds, 3),
                                engine_bytes=len(blob), onnx_metadata=info.metadata_props(),
                                workspace_gb=workspace_gb)
    return engine_path, meta, True
