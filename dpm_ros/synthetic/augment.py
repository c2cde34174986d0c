"""Photometric augmentation of an image pair: what real cameras do to pixels and nothing to geometry, so every
ground-truth map of the pair stays exact.

``photometric(img1, img2, seed)`` applies, deterministically in ``seed``: exposure (a gain per pair, log-uniform
×0.55–×1.8, with a small per-frame flicker as auto-exposure does), a gamma (0.8–1.25), white balance (per-channel
gains ×0.8–×1.2), blur (Gaussian σ 0.3–1.2 px, or a 2–5 px linear motion blur at a random angle), Gaussian sensor
noise (σ 0–6 grey levels, independent per frame) and JPEG compression (quality 30–95). Each effect is switched on
with its own probability (``PROBS``); all vectorised numpy/OpenCV.
"""
from __future__ import annotations

import cv2
import numpy as np

PROBS = {"exposure": 0.8, "gamma": 0.5, "white_balance": 0.7, "blur": 0.4, "noise": 0.6, "jpeg": 0.5}


def _blur_kernel(rng: np.random.Generator) -> np.ndarray:
    """A normalised 2D blur kernel: Gaussian (σ 0.3–1.2 px) or a linear motion blur (2–5 px, random angle)."""
    if rng.uniform() < 0.5:
        sigma = rng.uniform(0.3, 1.2)
        r = np.arange(-3, 4, dtype=np.float64)
        g = np.exp(-0.5 * (r / sigma) ** 2)
        k = np.outer(g, g)
    else:
        length, ang = rng.uniform(2.0, 5.0), rng.uniform(0, np.pi)
        y, x = np.mgrid[-3:4, -3:4].astype(np.float64)
        along = x * np.cos(ang) + y * np.sin(ang)
        across = -x * np.sin(ang) + y * np.cos(ang)
        k = np.clip(1.0 - np.abs(across), 0, 1) * (np.abs(along) <= length / 2)
        k[3, 3] = max(k[3, 3], 1.0)
    return (k / k.sum()).astype(np.float32)


def photometric(img1: np.ndarray, img2: np.ndarray, seed) -> tuple[np.ndarray, np.ndarray]:
    """Augmented copies of the uint8 (H, W, 3) RGB pair (see the module docstring); deterministic in ``seed``."""
    rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), 91])
    on = {k: rng.uniform() < p for k, p in PROBS.items()}
    gain = np.exp(rng.uniform(np.log(0.55), np.log(1.8))) if on["exposure"] else 1.0
    flicker = np.exp(rng.normal(0.0, 0.04, 2)) if on["exposure"] else np.ones(2)
    gamma = rng.uniform(0.8, 1.25) if on["gamma"] else 1.0
    wb = np.exp(rng.uniform(np.log(0.8), np.log(1.2), 3)) if on["white_balance"] else np.ones(3)
    kernel = _blur_kernel(rng) if on["blur"] else None
    noise = rng.uniform(0.0, 6.0) if on["noise"] else 0.0
    quality = int(rng.integers(30, 96)) if on["jpeg"] else None
    out = []
    for i, img in enumerate((img1, img2)):
        x = img.astype(np.float32) / 255.0
        x = np.clip(x * np.float32(gain * flicker[i]) * wb.astype(np.float32), 0.0, 1.0) ** np.float32(gamma)
        if kernel is not None:
            x = cv2.filter2D(x, -1, kernel, borderType=cv2.BORDER_REFLECT)
        x = x * 255.0
        if noise > 0:
            x = x + rng.normal(0.0, noise, x.shape).astype(np.float32)
        y = np.clip(x + 0.5, 0, 255).astype(np.uint8)
        if quality is not None:
            ok, buf = cv2.imencode(".jpg", y[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok:
                y = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
        out.append(np.ascontiguousarray(y))
    return out[0], out[1]
