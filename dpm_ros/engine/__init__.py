"""Inference engines: one ``Engine`` interface (``base.py``), backends torch, onnxruntime, tensorrt, and an oracle
that serves synthetic ground truth through the same interface (tests, demo). ``load_engine(path, backend="auto")``
picks the backend (loader.py); ``export.py`` writes the ONNX files; ``tensorrt_build.py`` + ``cache.py`` build and
cache TensorRT engines from strongly typed ONNX (``precision.py``: FP16/BF16 with FP32 islands); ``cuda_device.py``
drives CUDA through torch or cuda-python; ``gpu_validate.py`` is scripts/gpu_validate.sh's report."""
from dpm_ros.engine.base import Engine, EngineInfo, check_image
from dpm_ros.engine.loader import load_engine

__all__ = ["Engine", "EngineInfo", "check_image", "load_engine"]
