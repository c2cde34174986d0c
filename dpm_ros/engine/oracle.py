"""Oracle engine: serves the ground truth of a synthetic sequence through the ``Engine`` interface.

It recognises each input image as a frame of the sequence by a hash of its bytes and returns the exact eight point
maps for that pair (metres, optical frames; NaN where a pixel sees no surface), ``conf_*`` = 1 on valid pixels
(1e-6 on invalid ones) and ``motion_prob_1/2`` = the ground-truth moving-pixel masks. Output resolution = input
resolution. Lets the pipeline, the node and the demo run end to end, and be checked exactly, without a network.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from dpm_ros import ALL_POINT_MAP_NAMES
from dpm_ros.engine.base import Engine, EngineInfo, check_image

INVALID_CONF = 1e-6


def image_key(img: np.ndarray) -> str:
    """Hash of an image's shape and bytes."""
    img = np.ascontiguousarray(img)
    return hashlib.blake2b(repr(img.shape).encode() + img.tobytes(), digest_size=16).hexdigest()


class OracleEngine(Engine):
    """Ground truth of ``sequence`` (a ``dpm_ros.synthetic.SyntheticSequence``) for pairs of its frames."""

    def __init__(self, sequence, images: list[np.ndarray] | None = None, symmetric: bool = True):
        """``images``: the frames as the caller will pass them (e.g. read from a bag); default: rendered by
        ``sequence``. Their hashes identify the frames."""
        self.sequence = sequence
        self.symmetric = symmetric
        if images is None:
            images = [sequence.frame(i)["image"] for i in range(len(sequence))]
        if len(images) != len(sequence):
            raise ValueError(f"oracle: {len(images)} images for a sequence of {len(sequence)} frames")
        self._index = {image_key(img): i for i, img in enumerate(images)}

    @classmethod
    def from_bag(cls, path: str | Path, symmetric: bool = True) -> "OracleEngine":
        """Oracle for a bag written by ``dpm synth``: regenerates the sequence from ``/dpm/synth_info`` and hashes the
        bag's own images. ValueError if the bag is not a synthetic sequence or was written by a generator that no
        longer renders the same scene."""
        from dpm_ros.bag import read_images, read_synth_info
        from dpm_ros.synthetic import SyntheticSequence, gl_available

        info = read_synth_info(path)
        # the renderer that wrote the bag (the other one agrees on geometry except on a few edge pixels)
        renderer = "gl" if info.get("renderer") == "gl" and gl_available() else "numpy"
        try:
            seq = SyntheticSequence(**info["params"], renderer=renderer)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bag '{path}': /dpm/synth_info parameters are not a SyntheticSequence's: {exc}") from None
        images = [img for _, img, _ in read_images(path, info.get("topics", {}).get("image"))]
        if len(images) != len(seq):
            raise ValueError(f"bag '{path}': {len(images)} images but synth_info describes {len(seq)} frames")
        for i in sorted({0, len(seq) // 2, len(seq) - 1}):
            diff = np.abs(seq.frame(i)["image"].astype(np.int16) - images[i]).mean()
            if diff > 3.0:  # GL and numpy renderers differ by < 1 grey level on average
                raise ValueError(f"bag '{path}': frame {i} regenerated from /dpm/synth_info differs from the bag "
                                 f"(mean |diff| {diff:.1f} grey levels); it was written by another generator "
                                 f"version ({info.get('dpm_ros_version')}); rewrite it with `dpm synth`")
        return cls(seq, images, symmetric)

    def frame_index(self, img: np.ndarray, name: str = "image") -> int:
        """Index of the sequence frame whose image is exactly ``img``; ValueError otherwise."""
        check_image(img, name)
        idx = self._index.get(image_key(img))
        if idx is None:
            raise ValueError(f"oracle: {name} ({img.shape[1]}×{img.shape[0]}) is not a frame of the synthetic "
                             f"sequence (seed {self.sequence.seed}, {len(self.sequence)} frames); the oracle only "
                             "answers for unmodified frames of its own sequence")
        return idx

    def infer(self, img1: np.ndarray, img2: np.ndarray) -> dict[str, np.ndarray]:
        """Ground-truth maps for img1 (frame i, t1) and img2 (frame j, t2); names and shapes as in ``base.py``."""
        i, j = self.frame_index(img1, "img1"), self.frame_index(img2, "img2")
        gt = self.sequence.pair(i, j)
        names = ALL_POINT_MAP_NAMES if self.symmetric else ALL_POINT_MAP_NAMES[:4]
        out = {name: gt[name] for name in names}
        for name in names:
            valid = gt["valid1"] if name[1] == "1" else gt["valid2"]
            out["conf_" + name] = np.where(valid, 1.0, INVALID_CONF).astype(np.float32)
        out["motion_prob_1"] = gt["moving1"].astype(np.float32)
        out["motion_prob_2"] = gt["moving2"].astype(np.float32)
        return out

    def ground_truth(self, img1: np.ndarray, img2: np.ndarray) -> dict:
        """The full make_pair-style dict (K, poses, instances, object motions...) for the pair."""
        return self.sequence.pair(self.frame_index(img1, "img1"), self.frame_index(img2, "img2"))

    def info(self) -> EngineInfo:
        seq = self.sequence
        return EngineInfo(backend="oracle", device="cpu", precision="fp32", height=seq.height, width=seq.width,
                          symmetric=self.symmetric, extra={"seed": seq.seed, "frames": len(seq)})
