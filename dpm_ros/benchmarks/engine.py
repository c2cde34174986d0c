"""``dpm bench engine``: per-stage latency of one pair through each available backend and resolution, as JSON.

Stages (milliseconds, p50/p95 over ``repeats`` runs after ``warmup``): ``decode_resize`` (two JPEG camera frames
decoded, area-resized to the network resolution and normalised), ``network`` (the backend's forward on the
normalised pair), ``geometry`` (DPMPipeline on the network's maps: intrinsics, masks, ego-motion, objects, flows),
``pointcloud`` (the /dpm/points cloud built and serialised), and ``pairs_per_s`` = 1000 / (sum of the p50s).
Networks with random weights are exported per resolution (shape-exact, numbers are speed, not accuracy).
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from dpm_ros.engine.base import Engine, EngineInfo
from dpm_ros.engine.pair_io import prepare_pair

STAGES = ("decode_resize", "network", "geometry", "pointcloud")


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """p50/p95/mean (ms, 3 decimals) of a list of latencies."""
    a = np.asarray(samples_ms, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "mean": round(float(a.mean()), 3), "n": int(a.size)}


def _timed(fn, repeats: int, warmup: int) -> tuple[list[float], object]:
    result = None
    for _ in range(warmup):
        result = fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        samples.append(1000.0 * (time.perf_counter() - start))
    return samples, result


class _FixedMaps(Engine):
    """Serves precomputed network outputs so the pipeline's geometry can be timed on its own."""

    def __init__(self, maps: dict[str, np.ndarray], info: EngineInfo):
        self.maps, self._info = maps, info

    def infer(self, img1, img2):
        return self.maps

    def info(self):
        return self._info


def network_flops(preset: str, height: int, width: int, symmetric: bool = True) -> float:
    """FLOPs (multiply-add = 2) of one forward of ``preset`` at height x width, counted on the meta device (no
    compute, no weights): the basis of GPU estimates (dust3r_vitl_512_dpt at 512x384: ≈ 3.41e12 per pair)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dpm_ros.model import build_model

    with torch.device("meta"):
        model = build_model(preset).eval()
        x = torch.zeros(1, 3, height, width)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, x, symmetric=symmetric)
    return float(counter.get_total_flops())


def camera_frames(seed: int = 0, height: int = 480, width: int = 640) -> tuple[bytes, bytes]:
    """Two JPEG-encoded synthetic camera frames (what a compressed image topic delivers)."""
    from dpm_ros.synthetic import make_pair

    pair = make_pair(seed, height=height // 4, width=width // 4, n_objects=3, renderer="numpy")
    frames = []
    for img in (pair["img1"], pair["img2"]):
        big = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        frames.append(buf.tobytes())
    return frames[0], frames[1]


def bench_engine(engine, frames: tuple[bytes, bytes], repeats: int = 20, warmup: int = 3) -> dict:
    """Stage latencies of one engine (any backend with ``run_network``) on a pair of JPEG frames."""
    from dpm_ros.pipeline import DPMPipeline, Frame
    from dpm_ros.pointcloud import build_cloud, cloud_bytes

    info = engine.info()
    h, w = info.height, info.width

    def decode_resize():
        imgs = [cv2.cvtColor(cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                for f in frames]
        return imgs, prepare_pair(imgs[0], imgs[1], h, w, "bench")

    import torch

    t_decode, (imgs, (x1, x2)) = _timed(decode_resize, repeats, warmup)
    on_gpu = torch.cuda.is_available() and "cuda" in info.device
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    t_network, _ = _timed(lambda: engine.run_network(x1, x2), repeats, warmup)
    if hasattr(engine, "gpu_peak_mb"):  # TensorRT: the CUDA driver's figure (includes TensorRT's own memory)
        gpu_peak_mb = engine.gpu_peak_mb()
    else:
        gpu_peak_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1) if on_gpu else None
    maps = engine.infer(*imgs)
    pipeline = DPMPipeline(_FixedMaps(maps, info))
    f1, f2 = Frame(imgs[0], 0.1), Frame(imgs[1], 0.0)
    t_geometry, result = _timed(lambda: pipeline.process(f1, f2), repeats, warmup)
    colours = cv2.resize(imgs[0], (w, h), interpolation=cv2.INTER_AREA)
    velocity = (maps["p1_t2_pi1"] - maps["p1_t1_pi1"]) / 0.1

    def pack():
        cloud = build_cloud(maps["p1_t1_pi1"], colours, maps["conf_p1_t1_pi1"], result.labels1, velocity)
        return cloud_bytes(cloud)

    t_cloud, data = _timed(pack, repeats, warmup)
    stages = {name: percentiles(t) for name, t in zip(STAGES, (t_decode, t_network, t_geometry, t_cloud))}
    total_p50 = sum(s["p50"] for s in stages.values())
    return {"backend": info.backend, "device": info.device, "precision": info.precision,
            "resolution": f"{w}x{h}", "symmetric": info.symmetric, "stages_ms": stages,
            "pairs_per_s": round(1000.0 / total_p50, 2), "network_pairs_per_s": round(
                1000.0 / stages["network"]["p50"], 2), "gpu_memory_peak_mib": gpu_peak_mb,
            "cloud_bytes": len(data), "extra": info.extra}


def available_backends() -> list[str]:
    """Backends that can run here: onnxruntime and torch always, tensorrt with a GPU and the runtime."""
    from dpm_ros.engine.tensorrt_build import tensorrt_unavailable_reason

    return ["onnxruntime", "torch"] + (["tensorrt"] if tensorrt_unavailable_reason() is None else [])


def make_engines(preset: str, height: int, width: int, backends: list[str], workdir: Path,
                 weights: str | None = None, threads: int | None = None):
    """(backend, engine) for each backend on one network (``weights`` or random ``preset``) at height x width."""
    import torch

    from dpm_ros.commands.export import load_network
    from dpm_ros.engine.export import export_onnx
    from dpm_ros.engine.torch_backend import TorchEngine

    model = load_network(weights, None if weights else preset)
    onnx_path = workdir / f"{model.config.preset}_{width}x{height}.onnx"
    if {"onnxruntime", "tensorrt"} & set(backends):
        export_onnx(model, onnx_path, height, width)
    for backend in backends:
        if backend == "onnxruntime":
            from dpm_ros.engine.onnxruntime_backend import OnnxRuntimeEngine
            yield backend, OnnxRuntimeEngine(onnx_path, threads=threads)
        elif backend == "tensorrt":
            from dpm_ros.engine.tensorrt_backend import TensorRTEngine
            yield backend, TensorRTEngine(onnx_path, precision="fp16", cache_dir=workdir)
        elif backend == "torch":
            cuda = torch.cuda.is_available()
            yield backend, TorchEngine(model, device="cuda" if cuda else "cpu", precision="fp16" if cuda else "fp32",
                                       height=height, width=width, source=weights or f"random {preset}")
        else:
            raise ValueError(f"unknown backend {backend!r} (use onnxruntime, torch, tensorrt)")


def environment() -> dict:
    """Device and library versions recorded with every benchmark."""
    import onnxruntime
    import torch

    env = {"python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor(),
           "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads":
           torch.get_num_threads(), "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__,
           "numpy": np.__version__, "load_average_1min": round(os.getloadavg()[0], 2),
           "cuda_gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    from dpm_ros.engine.tensorrt_build import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    env["tensorrt"] = __import__("tensorrt").__version__ if reason is None else f"unavailable: {reason}"
    return env


def run_engine_benchmark(preset: str = "dpm_small", resolutions: list[tuple[int, int]] | None = None,
                         backends: list[str] | None = None, weights: str | None = None, repeats: int = 20,
                         warmup: int = 3, threads: int | None = None) -> dict:
    """The full JSON-ready report: environment + one entry per (resolution, backend)."""
    from dpm_ros.model import preset_config

    import torch

    if threads:
        torch.set_num_threads(int(threads))
    cfg = preset_config(preset)
    resolutions = resolutions or [(cfg.height, cfg.width)]
    backends = backends or available_backends()
    frames = camera_frames()
    results = []
    with tempfile.TemporaryDirectory(prefix="dpm_bench_") as tmp:
        for height, width in resolutions:
            flops = network_flops(preset, height, width)
            for _, engine in make_engines(preset, height, width, backends, Path(tmp), weights, threads):
                results.append({**bench_engine(engine, frames, repeats, warmup),
                                "network_gflop_per_pair": round(flops / 1e9, 3)})
    return {"benchmark": "engine", "preset": preset, "weights": weights or "random",
            "camera_frames": "2 x JPEG 640x480", "repeats": repeats, "warmup": warmup,
            "threads": threads, "environment": environment(), "results": results}


def parse_resolution(text: str) -> tuple[int, int]:
    """'512x384' (width x height) -> (384, 512) as (height, width)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"resolution {text!r}: use WIDTHxHEIGHT, e.g. 512x384") from None
    return height, width


def add_engine_arguments(parser) -> None:
    """The engine target's options (added to ``dpm bench``'s parser; --repeats comes from there)."""
    parser.add_argument("--preset", default="dpm_small", help="engine: network preset (default dpm_small)")
    parser.add_argument("--weights", help="engine: weights (.safetensors) instead of random initialisation")
    parser.add_argument("--resolution", action="append", type=parse_resolution, metavar="WxH",
                        help="engine: network resolution, repeatable (default: the preset's, 96x96 for dpm_small)")
    parser.add_argument("--backend", action="append", choices=("onnxruntime", "torch", "tensorrt"),
                        help="engine: backend, repeatable (default: every backend available here)")
    parser.add_argument("--warmup", type=int, default=3, help="engine: untimed runs first (default 3)")
    parser.add_argument("--threads", type=int,
                        help="engine: CPU threads for onnxruntime (intra-op) and torch (default: their choice)")


def engine_target(args) -> dict:
    """``dpm bench engine``: the report of run_engine_benchmark from parsed ``dpm bench`` arguments."""
    return run_engine_benchmark(args.preset, args.resolution, args.backend, args.weights, args.repeats,
                                args.warmup, args.threads)


def main(argv: list[str] | None = None) -> int:
    """``python -m dpm_ros.benchmarks.engine [options]`` (same options as ``dpm bench engine``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dpm_ros.benchmarks.engine", description=__doc__)
    add_engine_arguments(parser)
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per stage (default 20)")
    parser.add_argument("--json", help="also write the JSON to this file")
    args = parser.parse_args(argv)
    text = json.dumps(engine_target(args), indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
