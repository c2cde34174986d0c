"""The one interface every inference backend implements.

An engine maps a pair of RGB images to the DPM point maps of design.md:
``infer(img1, img2)`` takes two uint8 (H, W, 3) RGB images (any size: the engine resizes to its own resolution)
and returns float32 arrays at the engine's output resolution (h, w):
  - ``p1_t1_pi1, p1_t2_pi1, p2_t1_pi1, p2_t2_pi1``: (h, w, 3) points in camera 1's optical frame (model units);
  - when ``symmetric``: ``p2_t2_pi2, p2_t1_pi2, p1_t2_pi2, p1_t1_pi2`` in camera 2's frame;
  - ``conf_<name>`` for each map: (h, w) confidence > 0;
  - optionally ``motion_prob_1`` / ``motion_prob_2``: (h, w) learned motion probability in [0, 1].
Backends differ only in speed and numerics.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class EngineInfo:
    backend: str                 # "torch" | "onnxruntime" | "tensorrt" | "oracle"
    device: str                  # e.g. "cpu", "cuda:0 (NVIDIA H100)"
    precision: str               # "fp32" | "fp16" | "bf16"
    height: int                  # output resolution (pixels)
    width: int
    symmetric: bool = True
    extra: dict = field(default_factory=dict)


class Engine(abc.ABC):
    """A DPM network behind one call. Thread-compatible: one ``infer`` at a time per instance."""

    #: True when ``infer`` resizes every image with ``pair_io.resize_image`` to ``info()``'s height × width: a caller
    #: may then make that very resize once per frame, early (the node does on arrival), and ``infer`` does no more.
    resizes_input: bool = False

    @abc.abstractmethod
    def infer(self, img1: np.ndarray, img2: np.ndarray) -> dict[str, np.ndarray]:
        """Point maps for the pair (img1 at t1, img2 at t2); see the module docstring for names and shapes."""

    @abc.abstractmethod
    def info(self) -> EngineInfo:
        """Backend, device, precision and resolution."""


def check_image(img: np.ndarray, name: str) -> None:
    """Raise ValueError unless ``img`` is a uint8 (H, W, 3) RGB image."""
    if not isinstance(img, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(img).__name__}")
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"{name}: expected an (H, W, 3) RGB image, got shape {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8, got {img.dtype}")
