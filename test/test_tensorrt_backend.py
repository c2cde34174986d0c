"""TensorRT backend: the plain-Python parts (version gating, CUDA reasons, binding checks, result copies, CUDA-graph
verification, fallback) run everywhere; building and running an engine needs an NVIDIA GPU and a supported tensorrt
runtime and is skipped, with the reason, elsewhere. Precision islands: test_tensorrt_precision.py."""
from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from dpm_ros.engine import cuda_device, tensorrt_build
from dpm_ros.engine.export import export_onnx
from dpm_ros.engine.onnx_model import read_onnx_info
from dpm_ros.engine.pair_io import prepare_pair, unbatch_outputs
from dpm_ros.engine.tensorrt_backend import TensorRTEngine, collect_outputs, graph_mismatches, plan_bindings
from dpm_ros.engine.tensorrt_build import tensorrt_unavailable_reason, tensorrt_version_problem
from dpm_ros.model import build_model

TRT_REASON = tensorrt_unavailable_reason()
needs_trt = pytest.mark.skipif(TRT_REASON is not None, reason=f"TensorRT cannot run here: {TRT_REASON}")

@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("engines") / "dpm_tiny.onnx"
    export_onnx(build_model("dpm_tiny"), path)
    return path


def test_plan_bindings_checks_names_directions_and_shapes():
    io = {"img1": ("input", (1, 3, 32, 48)), "img2": ("input", (1, 3, 32, 48)), "p1_t1_pi1": ("output", (1, 32, 48, 3))}
    inputs = {"img1": (1, 3, 32, 48), "img2": (1, 3, 32, 48)}
    plan_bindings(io, inputs, ("p1_t1_pi1",), "e.engine")
    with pytest.raises(ValueError, match="e.engine: engine input 'img2' has shape .* rebuild"):
        plan_bindings({**io, "img2": ("input", (1, 3, 64, 48))}, inputs, ("p1_t1_pi1",), "e.engine")
    with pytest.raises(ValueError, match="e.engine: engine has no output tensor 'conf_p1_t1_pi1'"):
        plan_bindings(io, inputs, ("p1_t1_pi1", "conf_p1_t1_pi1"), "e.engine")
    with pytest.raises(ValueError, match="e.engine: engine has no input tensor 'img2'"):
        plan_bindings({**io, "img2": ("output", (1, 3, 32, 48))}, inputs, (), "e.engine")


SHIPPED = Path(__file__).resolve().parents[1] / "engines" / "dpm_small.onnx"


@pytest.mark.parametrize("version,ok", [
    ("10.3.0.30", True), ("10.13.3.9", True), ("11.0.0.1", True), ("11.4.1", True),
    ("10.2.0.19", False), ("8.6.2.3", False), ("12.0.0", False), ("garbage", False),
])
def test_supported_tensorrt_versions(version, ok):
    problem = tensorrt_version_problem(version)
    assert (problem is None) == ok, problem
    if not ok:
        assert version in problem or "cannot read" in problem


def test_bf16_is_refused_before_ampere():
    from dpm_ros.engine.tensorrt_build import precision_problem

    assert precision_problem("bf16", (8, 7)) is None and precision_problem("bf16", (9, 0)) is None
    assert "sm_75: use fp16" in precision_problem("bf16", (7, 5))   # Turing (T4)
    assert precision_problem("fp16", (7, 5)) is None and precision_problem("fp32", (6, 1)) is None
    assert "must be fp32, fp16 or bf16" in precision_problem("int8", (9, 0))


def _fake_tensorrt(monkeypatch, version: str, **attrs):
    """Install a stand-in ``tensorrt`` module (this machine has only the stubs): the code under test is ours."""
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    module.Builder = object
    for k, v in attrs.items():
        setattr(module, k, v)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


def test_unavailable_reason_checks_the_major_version_before_the_gpu(monkeypatch):
    _fake_tensorrt(monkeypatch, "12.1.0")
    assert "newer than this backend knows" in tensorrt_unavailable_reason()
    _fake_tensorrt(monkeypatch, "10.0.1.6")
    assert "too old" in tensorrt_unavailable_reason()
    _fake_tensorrt(monkeypatch, "11.1.0")  # supported: now the GPU decides
    monkeypatch.setattr(tensorrt_build, "cuda_unavailable_reason", lambda: "no CUDA GPU (simulated)")
    assert tensorrt_unavailable_reason() == "no CUDA GPU (simulated)"
    with pytest.raises(RuntimeError, match="TensorRT backend unavailable: no CUDA GPU"):
        tensorrt_build.import_tensorrt()
    monkeypatch.setattr(tensorrt_build, "cuda_unavailable_reason", lambda: None)
    assert tensorrt_unavailable_reason() is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch has CUDA here: the no-CUDA reasons cannot be seen")
def test_cuda_reason_names_torch_and_cuda_python(monkeypatch):
    """Jetson: pip torch has no CUDA; cuda-python is the second way in, and the reason says which is missing."""
    if cuda_device._cudart() is not None:  # cuda-bindings installed (setup.sh) but no driver here: a real call
        reason = cuda_device.cuda_unavailable_reason()
        assert "cuda-python's cudaGetDeviceCount says cudaError" in reason
    monkeypatch.setattr(cuda_device, "_cudart", lambda: None)
    reason = cuda_device.cuda_unavailable_reason()
    assert "CPU-only torch" in reason and "pip install 'cuda-bindings==12.*'" in reason
    with pytest.raises(RuntimeError, match="CUDA unavailable"):
        cuda_device.open_device(0)


def test_results_are_copies_not_views_of_the_pinned_buffers():
    """Defect 5: the next inference overwrites the output buffers; an earlier result must not change."""
    info = read_onnx_info(SHIPPED)
    h, w = info.height, info.width
    buffers = {n: np.full((1, h, w, 3) if n.startswith("p") else (1, h, w), 1.0, np.float32) for n in info.outputs}
    first = unbatch_outputs(collect_outputs(buffers, info.outputs), info.outputs, h, w, "e")
    for name in info.outputs:
        assert not np.shares_memory(first[name], buffers[name]), name
        buffers[name][...] = 2.0  # "the next inference"
    assert all((first[n] == 1.0).all() for n in info.outputs)
    # the old code's result (unbatch of the buffers themselves) aliases them: the test above would catch it
    old = unbatch_outputs(buffers, info.outputs, h, w, "e")
    assert np.shares_memory(old["p1_t1_pi1"], buffers["p1_t1_pi1"])


def test_inputs_are_normalised_straight_into_given_buffers_bit_for_bit():
    rng = np.random.default_rng(0)
    img1, img2 = (rng.integers(0, 256, (50, 70, 3), dtype=np.uint8) for _ in range(2))
    ref = prepare_pair(img1, img2, 32, 48, "s")
    bufs = (np.empty((1, 3, 32, 48), np.float32), np.empty((1, 3, 32, 48), np.float32))
    got = prepare_pair(img1, img2, 32, 48, "s", out=bufs)
    assert got[0] is bufs[0] and got[1] is bufs[1]
    for a, b in zip(ref, bufs):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_graph_mismatches_is_bitwise():
    a = {"x": np.array([1.0, np.nan, 3.0], np.float32), "y": np.zeros(2, np.float32)}
    assert graph_mismatches(a, {k: v.copy() for k, v in a.items()}) == []
    b = {k: v.copy() for k, v in a.items()}
    b["x"][2] = np.nextafter(np.float32(3.0), np.float32(4.0))  # one ulp
    assert graph_mismatches(a, b) == ["x"]
    assert graph_mismatches(a, {"x": a["x"]}) == ["y"]
    assert graph_mismatches(a, {"x": a["x"], "y": -a["y"]}) == ["y"]  # -0.0 is another bit pattern


class _HostBuffer:
    def __init__(self, shape, dtype):
        self.array = np.zeros(shape, dtype)
        self.ptr = self.array.ctypes.data


class _HostDevice(cuda_device.CudaDevice):
    """A CPU stand-in for CudaDevice (simulation: no GPU here). ``empty_graph`` simulates a capture that recorded
    nothing, so replay leaves the device outputs stale."""
    backend = "host-simulation"

    def __init__(self, empty_graph=False):
        self.empty_graph, self.waits = empty_graph, 0

    def device_buffer(self, shape, dtype):
        return _HostBuffer(shape, dtype)

    def pinned(self, shape, dtype):
        return np.zeros(shape, dtype)

    def h2d(self, dev, host):
        dev.array[...] = host

    def d2h(self, host, dev):
        host[...] = dev.array

    def wait(self):
        self.waits += 1

    def capture(self, enqueue):
        return (lambda: None) if self.empty_graph else enqueue

    def launch(self, graph):
        graph()

    def used_bytes(self):
        return 0


class _Context:
    """execute_async_v3 stand-in: every output = mean of img1 + 2·mean of img2 (deterministic, like a kernel);
    ``fail`` makes it return False as TensorRT does on an execution error."""

    def __init__(self, engine, fail=False):
        self.engine, self.fail = engine, fail

    def execute_async_v3(self, stream):
        if self.fail:
            return False
        d = self.engine._device
        value = d["img1"].array.mean() + 2 * d["img2"].array.mean()
        for name in self.engine.outputs:
            d[name].array[...] = value
        return True


def _simulated_engine(empty_graph=False, fail=False, tiny=None):
    eng = TensorRTEngine.__new__(TensorRTEngine)
    eng.onnx = read_onnx_info(tiny or SHIPPED)
    eng.outputs, eng.engine_path, eng.cuda = eng.onnx.outputs, Path("sim.engine"), _HostDevice(empty_graph)
    eng._graph, eng.graph_status, eng.gpu_peak_bytes = None, "off", 0
    eng._context = _Context(eng, fail)
    h, w = eng.onnx.height, eng.onnx.width
    shapes = {n: (1, 3, h, w) for n in eng.onnx.inputs}
    shapes.update({n: (1, h, w, 3) if n.startswith("p") else (1, h, w) for n in eng.outputs})
    eng._device = {n: eng.cuda.device_buffer(s, np.float32) for n, s in shapes.items()}
    eng._host = {n: eng.cuda.pinned(s, np.float32) for n, s in shapes.items()}
    return eng


def test_simulated_backend_results_survive_the_next_inference():
    eng = _simulated_engine()
    rng = np.random.default_rng(0)
    pair = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for _ in range(2)]
    first = eng.infer(*pair)
    kept = {k: v.copy() for k, v in first.items()}
    eng.infer(pair[1], pair[0])
    assert all(np.array_equal(first[k], kept[k]) for k in first)
    assert eng.cuda.waits == 2  # one event wait per inference


def test_simulated_backend_raises_when_execute_returns_false():
    eng = _simulated_engine(fail=True)
    img = np.zeros((40, 60, 3), np.uint8)
    with pytest.raises(RuntimeError, match="execute_async_v3 returned False"):
        eng.infer(img, img)


def test_simulated_empty_capture_is_detected_and_the_graph_dropped(caplog):
    """Defect 4: a capture that recorded nothing replays stale outputs; the replay is compared with a plain run."""
    eng = _simulated_engine(empty_graph=True)
    with caplog.at_level(logging.WARNING):
        eng._capture_graph()
    assert eng._graph is None and "differs from a plain run" in eng.graph_status
    assert "running without" in caplog.text
    good = _simulated_engine()
    good._capture_graph()
    assert good._graph is not None and good.graph_status.startswith("on")
    img = np.full((40, 60, 3), 200, np.uint8)
    assert np.isfinite(good.infer(img, img)["p1_t1_pi1"]).all()  # replay after the poisoned check is real work


def test_auto_falls_back_to_onnxruntime_on_any_tensorrt_load_failure(monkeypatch, caplog):
    """Defect 1's consequence: TensorRT 11 raised AttributeError inside the backend and the node died at start.
    Simulated: a TensorRT that passes the availability check but lacks ``Runtime``; ``auto`` must log the reason
    and run ONNX Runtime; an explicit ``tensorrt`` must raise."""
    from dpm_ros.engine import load_engine, tensorrt_backend
    from dpm_ros.engine.onnxruntime_backend import OnnxRuntimeEngine

    _fake_tensorrt(monkeypatch, "11.0.0")
    monkeypatch.setattr(tensorrt_build, "cuda_unavailable_reason", lambda: None)
    monkeypatch.setattr(tensorrt_backend, "open_device", lambda index: _HostDevice())
    assert tensorrt_unavailable_reason() is None
    with caplog.at_level(logging.WARNING, logger="dpm_ros.engine.loader"):
        engine = load_engine(SHIPPED)
    assert isinstance(engine, OnnxRuntimeEngine)
    assert "TensorRT failed at load (AttributeError" in caplog.text and "falling back to onnxruntime" in caplog.text
    img = np.zeros((48, 64, 3), np.uint8)
    assert np.isfinite(engine.infer(img, img)["p1_t1_pi1"]).all()
    with pytest.raises(AttributeError):
        load_engine(SHIPPED, backend="tensorrt")


@needs_trt
def test_tensorrt_engine_builds_caches_and_matches_onnxruntime(tiny_onnx, tmp_path):
    from dpm_ros.engine import load_engine

    rng = np.random.default_rng(0)
    img1, img2 = (rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(2))
    ref = load_engine(tiny_onnx, backend="onnxruntime").infer(img1, img2)
    first = TensorRTEngine(tiny_onnx, precision="fp32", cache_dir=tmp_path)
    out = first.infer(img1, img2)
    for name in ref:  # TF32 off: the fp32 engine is a reference
        assert np.abs(out[name] - ref[name]).max() / np.abs(ref[name]).max() < 1e-4, name
    again = first.infer(img2, img1)
    assert not np.array_equal(again["p1_t1_pi1"], out["p1_t1_pi1"])
    assert np.array_equal(first.infer(img1, img2)["p1_t1_pi1"], out["p1_t1_pi1"])  # out was not overwritten
    engines = list(tmp_path.glob("dpm_tiny.*.engine"))
    assert len(engines) == 1 and engines[0].with_name(engines[0].name + ".json").is_file()
    mtime = engines[0].stat().st_mtime_ns
    second = TensorRTEngine(tiny_onnx, precision="fp32", cache_dir=tmp_path, cuda_graph=True)  # cache hit
    assert engines[0].stat().st_mtime_ns == mtime
    assert second.info().extra["cuda_graph"], second.graph_status
    np.testing.assert_array_equal(second.infer(img1, img2)["p1_t1_pi1"], out["p1_t1_pi1"])
    engines[0].write_bytes(b"garbage")   # damaged cache entry: rebuilt, never used
    third = TensorRTEngine(tiny_onnx, precision="fp32", cache_dir=tmp_path)
    assert engines[0].stat().st_size > 1000
    np.testing.assert_allclose(third.infer(img1, img2)["p1_t1_pi1"], out["p1_t1_pi1"], rtol=1e-5, atol=1e-6)
    assert third.gpu_peak_mb() > 0
    fp16 = TensorRTEngine(tiny_onnx, precision="fp16", cache_dir=tmp_path)
    assert list(tmp_path.glob("dpm_tiny.*.fp16.onnx"))
    got = fp16.infer(img1, img2)
    for name in ref:  # the FP16 accuracy gate against ONNX Runtime
        assert np.isfinite(got[name]).all(), name
        assert np.abs(got[name] - ref[name]).max() / np.abs(ref[name]).max() < 2e-2, name


def test_opening_an_engine_parses_the_onnx_once_and_a_read_only_cache_hit_leaves_no_folder(monkeypatch, tmp_path):
    """TensorRT simulated up to the execution context (the code under test is ours): a cache hit in a read-only
    cache folder reads the ONNX file once (not once more for the key and once for the metadata) and creates no
    temporary folder for a typed copy that no build will write."""
    from dpm_ros.engine import cache, onnx_model, tensorrt_backend
    from dpm_ros.engine.cuda_device import DeviceProps

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            assert blob == b"\x05" * 32
            return types.SimpleNamespace(create_execution_context=lambda: None)

    trt = _fake_tensorrt(monkeypatch, "10.13.0", Runtime=Runtime, Logger=lambda level: object())
    trt.Logger.WARNING = 2
    monkeypatch.setattr(tensorrt_build, "cuda_unavailable_reason", lambda: None)
    monkeypatch.setattr(tensorrt_build, "device_props", lambda index: DeviceProps("Sim GPU", (8, 7), 16, 8192))
    monkeypatch.setattr(tensorrt_backend, "open_device", lambda index: _HostDevice())
    tensorrt_build.trt_logger.cache_clear()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tensorrt_build.tempfile, "tempdir", str(scratch))
    cache_dir = tmp_path / "cache"
    key = tensorrt_build.current_key(SHIPPED, "fp16", 0, cache_dir)
    engine, meta = cache.engine_paths(cache_dir, SHIPPED, key)
    cache.atomic_write_bytes(engine, b"\x05" * 32)
    cache.write_metadata(meta, key)
    parses = []
    real = onnx_model.read_onnx_info
    for module in (tensorrt_backend, tensorrt_build):
        monkeypatch.setattr(module, "read_onnx_info", lambda path: parses.append(path) or real(path))
    real_access = tensorrt_build.os.access
    monkeypatch.setattr(tensorrt_build.os, "access",
                        lambda p, mode: False if Path(p) == cache_dir else real_access(p, mode))
    try:
        with pytest.raises(RuntimeError, match="could not create an execution context"):
            TensorRTEngine(SHIPPED, precision="fp16", cache_dir=cache_dir)
    finally:
        tensorrt_build.trt_logger.cache_clear()
    assert len(parses) == 1
    assert list(scratch.iterdir()) == []
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted([engine.name, meta.name, "dpm_small.sha256.json"])
