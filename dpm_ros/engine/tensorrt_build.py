"""Building TensorRT engines from exported ONNX files, cached under a key.

Supported: TensorRT **10.3 (JetPack 6) to 11.x**, through the API both share: a **strongly typed** network
(``NetworkDefinitionCreationFlag.STRONGLY_TYPED``: opt-in on 10.x, always on and the flag ignored on 11.x) built
from an ONNX file whose tensor types already say the precision. FP32 engines build from the exported file with TF32
switched off (an fp32 engine is the reference FP16 is checked against); FP16/BF16 engines build from a copy made by
``precision.convert_precision`` (FP32 islands where FP16 overflows, attention left free to fuse), cached beside
the engines. Nothing here uses what 11.x removed (``BuilderFlag.FP16/BF16/OBEY_PRECISION_CONSTRAINTS``,
``platform_has_fast_fp16``, ``layer.precision``, ``set_output_type``); test_tensorrt_api.py checks it.
Users with FP16 accuracy problems can compare layer by layer against ONNX Runtime with NVIDIA's polygraphy:
``polygraphy run CACHE/NAME.<digest>.fp16.onnx --trt --onnxrt --atol 1e-3 --rtol 1e-3 --trt-outputs mark all
--onnx-outputs mark all``.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Callable

from dpm_ros.engine import cache
from dpm_ros.engine.cuda_device import cuda_unavailable_reason, device_props
from dpm_ros.engine.onnx_model import OnnxModelInfo, read_onnx_info

log = logging.getLogger(__name__)

MIN_TENSORRT = (10, 3)      # JetPack 6.x ships 10.3; strongly typed networks and the 10.x API we use are there
MAX_TENSORRT_MAJOR = 11     # 11.x: strongly typed only; the next major is unknown API
SUPPORTED_TENSORRT = "TensorRT 10.3 or newer 10.x, or 11.x"
# Bump when the way engines are built changes (ONNX precision conversion, builder flags): engines cached by an
# older recipe are rebuilt instead of being reused.
BUILD_RECIPE = 2


def tensorrt_version_problem(version: str) -> str | None:
    """None when TensorRT ``version`` (e.g. "10.3.0.30") is in the supported range, else why not."""
    m = re.match(r"(\d+)\.(\d+)", str(version))
    if not m:
        return f"cannot read the TensorRT version {version!r}"
    major, minor = int(m.group(1)), int(m.group(2))
    if (major, minor) < MIN_TENSORRT:
        return (f"TensorRT {version} is too old: {SUPPORTED_TENSORRT} is supported (strongly typed networks; "
                "JetPack 6 ships 10.3)")
    if major > MAX_TENSORRT_MAJOR:
        return f"TensorRT {version} is newer than this backend knows: {SUPPORTED_TENSORRT} is supported"
    return None


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT can run here (a supported runtime installed and a CUDA GPU reachable through torch or
    cuda-python), else why not."""
    try:
        import tensorrt as trt
    except ImportError:
        return "the tensorrt package is not installed"
    except Exception as exc:  # a broken install (missing libnvinfer, CUDA mismatch) must not stop `auto`
        return f"the tensorrt package failed to import: {type(exc).__name__}: {exc}"
    if not hasattr(trt, "Builder"):
        return "only TensorRT type stubs are installed (tensorrt-stubs), not the TensorRT runtime"
    problem = tensorrt_version_problem(getattr(trt, "__version__", "?"))
    if problem:
        return problem
    return cuda_unavailable_reason()


def precision_problem(precision: str, capability: tuple[int, int]) -> str | None:
    """None when an engine of ``precision`` can be built for a GPU of compute ``capability``, else why not."""
    if precision not in ("fp32", "fp16", "bf16"):
        return f"precision must be fp32, fp16 or bf16, got {precision!r}"
    if precision == "bf16" and tuple(capability) < (8, 0):
        return (f"bf16 needs a GPU of compute capability 8.0 or newer (Ampere); this one is "
                f"sm_{capability[0]}{capability[1]}: use fp16")
    return None


def import_tensorrt():
    """The tensorrt module, or RuntimeError saying why it cannot run here."""
    reason = tensorrt_unavailable_reason()
    if reason:
        raise RuntimeError(f"TensorRT backend unavailable: {reason}")
    import tensorrt as trt
    return trt


@functools.lru_cache(maxsize=1)
def trt_logger():
    """The one TensorRT logger of this process (TensorRT keeps a single global logger: builder, parser and
    runtime all get this one)."""
    import tensorrt as trt
    return trt.Logger(trt.Logger.WARNING)


def reduced_precision_onnx(onnx_path: str | Path, precision: str, out_path: Path) -> Path:
    """Write the FP16/BF16-with-FP32-islands copy of ``onnx_path`` to ``out_path`` (atomically; external data
    beside it when above 2 GB) and return it."""
    import onnx

    from dpm_ros.engine.export import PROTOBUF_LIMIT_BYTES
    from dpm_ros.engine.precision import convert_precision

    model = convert_precision(onnx.load(str(onnx_path)), precision)
    if model.ByteSize() <= PROTOBUF_LIMIT_BYTES:
        cache.atomic_write_bytes(out_path, model.SerializeToString())
        return out_path
    out_path.parent.mkdir(parents=True, exist_ok=True)   # onnx writes the weights file beside it, then we rename
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=out_path.name + ".data", size_threshold=1024)
    tmp.replace(out_path)
    return out_path


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
                            report: Callable[[str], None] | None = None, typed_onnx: Path | None = None,
                            device_index: int = 0) -> bytes:
    """Parse ``onnx_path`` into a strongly typed network and build a serialized TensorRT engine (``precision``:
    fp32, fp16 or bf16). For fp16/bf16 the typed copy is written to ``typed_onnx`` (default: beside
    ``onnx_path``) and parsed instead.

    The timing cache at ``timing_cache_file`` is read when present and written back (atomically) after the build.
    Raises ValueError naming the file when TensorRT cannot parse it or for a precision this GPU lacks (BF16 before
    sm_80), RuntimeError when the build fails.
    """
    onnx_path = Path(onnx_path)
    if precision not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"{onnx_path}: {precision_problem(precision, (0, 0))}")
    trt = import_tensorrt()
    problem = precision_problem(precision, device_props(device_index).capability)
    if problem:
        raise ValueError(f"{onnx_path}: {problem}")
    source = onnx_path
    if precision != "fp32":
        source = reduced_precision_onnx(onnx_path, precision,
                                        typed_onnx or onnx_path.with_name(f"{onnx_path.stem}.{precision}.onnx"))
    logger = trt_logger()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"{source}: TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.clear_flag(trt.BuilderFlag.TF32)  # FP32 tensors compute in FP32: the fp32 engine is the reference
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # per-layer precision in the engine inspector
    if workspace_gb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
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
        raise RuntimeError(f"{source}: TensorRT engine build failed (see the TensorRT log above)")
    if timing_cache_file is not None:
        try:
            cache.atomic_write_bytes(timing_cache_file, memoryview(config.get_timing_cache().serialize()))
        except OSError as exc:   # a read-only or full cache must not throw the built engine away
            log.warning("cannot write the timing cache %s (%s); the next build starts without it",
                        timing_cache_file, exc)
    return bytes(memoryview(serialized))


def current_key(onnx_path: str | Path, precision: str, device_index: int = 0,
                cache_dir: str | Path | None = None, info: OnnxModelInfo | None = None) -> dict:
    """The cache key for building ``onnx_path`` at ``precision`` on this machine's GPU and TensorRT. The ONNX
    digest is remembered in ``cache_dir`` by file size and mtime (weights above 2 GB are not re-hashed on every
    start). ``info``: the file's ``read_onnx_info``, when the caller has parsed it already."""
    trt = import_tensorrt()
    info = info or read_onnx_info(onnx_path)
    props = device_props(device_index)
    shapes = {name: (1, 3, info.height, info.width) for name in info.inputs}
    onnx_sha = cache.remembered_sha256(onnx_path, info.external_files, cache_dir)
    return cache.engine_cache_key(onnx_sha, trt.__version__, props.name, props.capability, precision, shapes,
                                  recipe_version=BUILD_RECIPE, sm_count=props.sm_count,
                                  total_memory_mb=props.total_memory_mb)


def get_or_build_engine(onnx_path: str | Path, cache_dir: str | Path | None = None, precision: str = "fp16",
                        workspace_gb: float | None = None, force: bool = False, device_index: int = 0,
                        report: Callable[[str], None] | None = None,
                        info: OnnxModelInfo | None = None) -> tuple[Path, dict, bool]:
    """The engine for ``onnx_path`` from the cache, built (and cached atomically) when missing, stale or ``force``.

    ``cache_dir`` defaults to ``cache.default_cache_dir``; ``info``: the file's ``read_onnx_info`` when the caller
    has it (the ONNX file is parsed once). Returns (engine path, metadata, built now?).
    """
    onnx_path = Path(onnx_path)
    info = info or read_onnx_info(onnx_path)
    cache_dir = Path(cache_dir) if cache_dir is not None else cache.default_cache_dir(onnx_path)
    key = current_key(onnx_path, precision, device_index, cache_dir, info)
    engine_path, meta_path = cache.engine_paths(cache_dir, onnx_path, key)
    stale = cache.mismatched_fields(key, cache.read_metadata(meta_path))

    typed = engine_path.with_name(engine_path.name.removesuffix(".engine") + f".{precision}.onnx")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        writable = os.access(cache_dir, os.W_OK)
    except OSError:
        writable = False
    keep_typed = writable and precision != "fp32"   # a read-only cache: the typed copy lives only for the build

    def build() -> bytes:
        log.info("building TensorRT engine %s (%s)", engine_path, "forced" if force else f"cache miss: {stale}")
        timing = cache.timing_cache_path(cache_dir, key["tensorrt_version"], key["gpu_name"],
                                         tuple(key["compute_capability"]))
        with contextlib.ExitStack() as scratch:
            out = typed
            if precision != "fp32" and not writable:
                out = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="dpm_typed_onnx_"))) / typed.name
            return build_serialized_engine(onnx_path, precision, workspace_gb, timing, report,
                                           typed_onnx=out if precision != "fp32" else None, device_index=device_index)

    # one process builds (lock, re-checked after waiting); an unwritable cache keeps the built engine in memory
    return cache.get_or_build(cache_dir, onnx_path, key, build, force=force, warn=log.warning,
                              onnx_path=str(onnx_path), onnx_metadata=info.metadata_props(),
                              workspace_gb=workspace_gb, typed_onnx=str(typed) if keep_typed else None)
