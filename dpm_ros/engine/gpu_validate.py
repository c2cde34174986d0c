"""One prepared validation run of the TensorRT path on a GPU machine (no network needed), writing one JSON report:
versions; the TensorRT tests; the FP16-with-FP32-islands ONNX checked on the CPU; fp32 and fp16 engines built twice
(built, then cached); the engine inspector's per-layer precision (fused attention visible by layer name); TensorRT
vs ONNX Runtime max relative error and NaN/Inf counts per output on three pairs; CUDA-graph output bit-identical to a
plain run; the driver's peak memory; ``dpm bench engine`` for the shipped model and, time allowing,
``dust3r_vitl_224_linear``. Steps that need a GPU are recorded as skipped, with the reason, where there is none.

Run through ``scripts/gpu_validate.sh`` (``--budget-s`` 540 by default: every step gets what is left, the report is
rewritten after each step so a killed run still leaves one). Usage: ``python -m dpm_ros.engine.gpu_validate --out
bench_out/gpu_validate.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from dpm_ros.engine.cache import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "engines" / "dpm_small.onnx"
TEST_FILES = ["test/test_tensorrt_api.py", "test/test_tensorrt_backend.py", "test/test_tensorrt_precision.py",
              "test/test_engine_cache.py"]
ATTENTION_MARKERS = ("mha", "attention", "fmha", "flash")


class Report:
    """The JSON report, written after every step."""

    def __init__(self, out: Path, budget_s: float):
        self.out, self.budget_s, self.t0 = out, budget_s, time.monotonic()
        self.data = {"report": "dpm_ros TensorRT GPU validation", "started_unix": time.time(), "budget_s": budget_s,
                     "steps": {}}

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def step(self, name: str, fn, *, needs_s: float = 0.0, skip: str | None = None):
        """Run ``fn()`` as step ``name``: its result, or the error, or why it was skipped, and its seconds."""
        start = time.monotonic()
        if skip is None and self.left() < needs_s:
            skip = f"time budget: {self.left():.0f} s left, step needs ~{needs_s:.0f} s"
        if skip is not None:
            entry = {"status": "skipped", "reason": skip}
            result = None
        else:
            try:
                result = fn()
                entry = {"status": "ok", "result": result}
            except Exception as exc:  # noqa: BLE001 - a failed step is recorded, the run goes on
                result = None
                entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        entry["seconds"] = round(time.monotonic() - start, 2)
        self.data["steps"][name] = entry
        print(f"[gpu_validate] {name}: {entry['status']} ({entry['seconds']} s)"
              + (f" - {entry.get('reason') or entry.get('error')}" if entry["status"] != "ok" else ""), flush=True)
        self.write()
        return result

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.t0, 2)
        atomic_write_bytes(self.out, (json.dumps(self.data, indent=2, sort_keys=False, default=str) + "\n").encode())


def versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    from dpm_ros.engine.cuda_device import _cudart, cuda_unavailable_reason, device_props
    from dpm_ros.engine.tensorrt_build import BUILD_RECIPE, tensorrt_unavailable_reason

    out = {"python": platform.python_version(), "machine": platform.machine(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "torch_cuda_available": torch.cuda.is_available(),
           "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
           "build_recipe": BUILD_RECIPE, "cuda_python": None, "tensorrt": None,
           "tensorrt_unavailable_reason": tensorrt_unavailable_reason(),
           "cuda_unavailable_reason": cuda_unavailable_reason()}
    cudart = _cudart()
    if cudart is not None:
        from importlib.metadata import PackageNotFoundError, version
        try:
            out["cuda_python"] = version("cuda-bindings")
        except PackageNotFoundError:
            out["cuda_python"] = "installed (version unknown)"
    try:
        import tensorrt
        out["tensorrt"] = getattr(tensorrt, "__version__", "stubs only")
    except ImportError:
        pass
    if out["cuda_unavailable_reason"] is None:
        out["gpu"] = device_props(0)._asdict()
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        out["nvidia_smi"] = f"unavailable: {exc}"
    return out


def run_tests(timeout_s: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        proc = subprocess.run([str(ROOT / "scripts" / "test.sh"), *TEST_FILES, "-q", "-p", "no:cacheprovider",
                               f"--junitxml={xml}"], cwd=ROOT, capture_output=True, text=True,
                              timeout=max(30.0, timeout_s))
        result = {"returncode": proc.returncode, "tail": proc.stdout[-1500:]}
        if xml.is_file():
            cases = ET.parse(xml).getroot().iter("testcase")
            passed, skipped, failed = [], {}, []
            for case in cases:
                name = f"{case.get('classname')}::{case.get('name')}"
                if case.find("skipped") is not None:
                    skipped[name] = case.find("skipped").get("message", "")
                elif case.find("failure") is not None or case.find("error") is not None:
                    failed.append(name)
                else:
                    passed.append(name)
            result.update(passed=len(passed), failed=failed, skipped=skipped)
    return result


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-12))


def _nonfinite(a: np.ndarray) -> dict:
    return {"nan": int(np.isnan(a).sum()), "inf": int(np.isinf(a).sum())}


def islands_cpu(onnx_path: Path) -> dict:
    """The FP16 ONNX a strongly typed engine is built from, run by ONNX Runtime on the CPU against the FP32 file."""
    import onnx
    import onnxruntime as ort

    from dpm_ros.engine.precision import convert_precision, fp32_island_nodes, precision_summary

    model = onnx.load(str(onnx_path))
    islands = fp32_island_nodes(model.graph)
    low = convert_precision(model, "fp16")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    ref_s = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    low_s = ort.InferenceSession(low.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    h, w = (d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[2:])
    rng = np.random.default_rng(0)
    feeds = {n: rng.uniform(-1, 1, (1, 3, h, w)).astype(np.float32) for n in ("img1", "img2")}
    names = [o.name for o in model.graph.output]
    ref, got = ref_s.run(None, feeds), low_s.run(None, feeds)
    ops: dict[str, int] = {}
    for i in islands:
        ops[model.graph.node[i].op_type] = ops.get(model.graph.node[i].op_type, 0) + 1
    return {"island_nodes": len(islands), "island_ops": ops, "nodes": len(model.graph.node),
            "fp16_summary": precision_summary(low),
            "ort_cpu_fp16_vs_fp32": {n: {"max_rel_err": _rel_err(g, r), **_nonfinite(g)}
                                     for n, r, g in zip(names, ref, got)}}


def validation_pairs(height: int, width: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    import cv2

    from dpm_ros.benchmarks.engine import camera_frames

    frames = [cv2.cvtColor(cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
              for f in camera_frames()]
    rng = np.random.default_rng(7)
    noise = [rng.integers(0, 256, (height * 2, width * 2, 3), dtype=np.uint8) for _ in range(2)]
    return [("camera", frames[0], frames[1]), ("camera_swapped", frames[1], frames[0]),
            ("noise", noise[0], noise[1])]


def build_twice(onnx_path: Path, cache_dir: Path, precision: str) -> dict:
    from dpm_ros.engine.tensorrt_build import get_or_build_engine

    runs = []
    for _ in range(2):
        start = time.perf_counter()
        path, meta, built = get_or_build_engine(onnx_path, cache_dir, precision)
        runs.append({"built": built, "seconds": round(time.perf_counter() - start, 2)})
    return {"engine": str(path), "engine_mb": round(path.stat().st_size / 1e6, 2), "key": meta["key"],
            "build_seconds": meta.get("build_seconds"), "runs": runs,
            "second_was_cached": runs[0]["built"] and not runs[1]["built"]}


def inspect_engine(engine) -> dict:
    """Per-layer information from the engine inspector (built with DETAILED profiling verbosity)."""
    trt = engine._trt
    inspector = engine._engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    layers = info.get("Layers", [])
    layers = [layer if isinstance(layer, dict) else {"Name": str(layer)} for layer in layers]
    attention = [lay.get("Name", "") for lay in layers
                 if any(m in json.dumps(lay).lower() for m in ATTENTION_MARKERS)]
    types: dict[str, int] = {}
    for lay in layers:
        for out in lay.get("Outputs", []):
            t = str(out.get("Format/Datatype") or out.get("DataType") or "?")
            t = "fp16" if "half" in t.lower() or "fp16" in t.lower() else "fp32" if "float" in t.lower() or \
                "fp32" in t.lower() else t
            types[t] = types.get(t, 0) + 1
    return {"layers": len(layers), "fused_attention_layers": attention, "output_types": types,
            "layer_info": layers}


def accuracy(engine, reference, pairs) -> dict:
    out = {}
    for label, a, b in pairs:
        ref, got = reference.infer(a, b), engine.infer(a, b)
        out[label] = {n: {"max_rel_err": _rel_err(got[n], ref[n]), **_nonfinite(got[n])} for n in ref}
    worst = max(v["max_rel_err"] for per in out.values() for v in per.values())
    bad = sum(v["nan"] + v["inf"] for per in out.values() for v in per.values())
    return {"worst_max_rel_err": worst, "nonfinite_total": bad, "pairs": out}


def cuda_graph_check(onnx_path: Path, cache_dir: Path, pairs) -> dict:
    from dpm_ros.engine.tensorrt_backend import TensorRTEngine

    plain = TensorRTEngine(onnx_path, "fp16", cache_dir)
    graph = TensorRTEngine(onnx_path, "fp16", cache_dir, cuda_graph=True)
    identical = {}
    for label, a, b in pairs:
        p, g = plain.infer(a, b), graph.infer(a, b)
        identical[label] = all(np.array_equal(p[n].view(np.uint32), g[n].view(np.uint32)) for n in p)
    return {"graph_status": graph.graph_status, "graph_used": graph._graph is not None,
            "bit_identical_to_plain": identical, "gpu_peak_mb": graph.gpu_peak_mb()}


def bench(preset: str, timeout_s: float, backends: list[str], repeats: int = 20) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        proc = subprocess.run([sys.executable, "-m", "dpm_ros.benchmarks.engine", "--preset", preset,
                               *[a for b in backends for a in ("--backend", b)], "--repeats", str(repeats),
                               "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                              timeout=max(30.0, timeout_s))
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"dpm bench engine exited {proc.returncode}: {proc.stderr[-800:]}")
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpm_ros.engine.gpu_validate", description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "bench_out" / "gpu_validate.json"), help="the JSON report")
    parser.add_argument("--onnx", default=str(SHIPPED), help="model to validate (default the shipped one)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="time for the whole run (default 540 s)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the TensorRT tests")
    args = parser.parse_args(argv)
    onnx_path = Path(args.onnx)
    report = Report(Path(args.out), args.budget_s)
    info = report.step("versions", versions)
    report.step("tests", lambda: run_tests(min(200.0, report.left() - 240)), needs_s=60,
                skip="--skip-tests" if args.skip_tests else None)
    report.step("fp16_islands_onnxruntime_cpu", lambda: islands_cpu(onnx_path), needs_s=20)
    reason = (info or {}).get("tensorrt_unavailable_reason", "versions step failed")
    gpu_skip = f"TensorRT cannot run here: {reason}" if reason else None
    with tempfile.TemporaryDirectory(prefix="dpm_gpu_validate_") as tmp:
        cache_dir = Path(tmp)
        for precision in ("fp32", "fp16"):
            report.step(f"build_{precision}_twice", lambda p=precision: build_twice(onnx_path, cache_dir, p),
                        needs_s=60, skip=gpu_skip)
        engines = {}

        def load(precision):
            from dpm_ros.engine.tensorrt_backend import TensorRTEngine
            engines[precision] = TensorRTEngine(onnx_path, precision, cache_dir)
            return {"info": dataclasses.asdict(engines[precision].info())}

        for precision in ("fp32", "fp16"):
            report.step(f"load_{precision}", lambda p=precision: load(p), needs_s=10, skip=gpu_skip)
        have = lambda p: None if p in engines else (gpu_skip or f"no {p} engine")  # noqa: E731
        report.step("inspector_fp16", lambda: inspect_engine(engines["fp16"]), skip=have("fp16"))
        if gpu_skip is None and engines:
            from dpm_ros.engine.onnx_model import read_onnx_info
            from dpm_ros.engine.onnxruntime_backend import OnnxRuntimeEngine

            onnx_info = read_onnx_info(onnx_path)
            pairs = validation_pairs(onnx_info.height, onnx_info.width)
            ort_ref = OnnxRuntimeEngine(onnx_path, device="cpu")
        for precision in ("fp32", "fp16"):
            report.step(f"accuracy_{precision}_vs_onnxruntime",
                        lambda p=precision: accuracy(engines[p], ort_ref, pairs), needs_s=10, skip=have(precision))
        report.step("cuda_graph_vs_plain", lambda: cuda_graph_check(onnx_path, cache_dir, pairs), needs_s=20,
                    skip=have("fp16"))
        engines.clear()
    report.step("bench_dpm_small", lambda: bench("dpm_small", report.left() - 200, ["tensorrt", "onnxruntime"]),
                needs_s=90, skip=gpu_skip)
    # ViT-L: CPU export + FP16 build take minutes; TensorRT only (ONNX Runtime on the CPU would take minutes more)
    report.step("bench_dust3r_vitl_224_linear",
                lambda: bench("dust3r_vitl_224_linear", report.left() - 15, ["tensorrt"], repeats=10),
                needs_s=200, skip=gpu_skip)
    steps = report.data["steps"]
    report.data["summary"] = {name: s["status"] for name, s in steps.items()}
    report.write()
    print(f"[gpu_validate] report: {report.out} ({report.data['elapsed_s']} s)")
    return 1 if any(s["status"] == "failed" for s in steps.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
