"""Inference engines: one ``Engine`` interface (``base.py``), backends torch, onnxruntime, tensorrt, and an oracle
that serves synthetic ground truth through the same interface (tests, demo)."""
from dpm_ros.engine.base import Engine, EngineInfo, check_image

__all__ = ["Engine", "EngineInfo", "check_image"]
