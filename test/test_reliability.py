"""Issue #12: no code runs from data, no output is destroyed before its replacement exists, nothing fails silently.
Each test plants the fault the issue found and checks the outcome (see README "Reliability")."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dpm_ros.training import evaluate as ev

N, H, W = 2, 32, 48


class _Exploit:
    """Unpickling this runs ``touch MARKER`` (what a planted cache file could do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_eval_cache_never_unpickles_a_planted_file(tmp_path, monkeypatch):
    """(1) A pickle planted under every name the eval cache uses (old .pkl, new .npz) must not run; the set is
    regenerated, written as .npz + verified JSON, and read back equal without pickle."""
    marker = tmp_path / "pwned"
    cache = tmp_path / "cache"
    cache.mkdir()
    stem = f"eval_{N}_{H}x{W}_seed{ev.EVAL_SEED_BASE}_{ev.generator_version()}"
    for name in (stem + ".pkl", stem + ".npz"):
        (cache / name).write_bytes(pickle.dumps(_Exploit(marker)))
    samples = ev.load_eval_set(N, H, W, cache, progress=False)
    assert not marker.exists(), "loading the eval cache ran code from a planted pickle"
    assert len(samples) == N and samples[0]["img1"].shape == (H, W, 3)
    meta = json.loads((cache / (stem + ".npz.json")).read_text())
    assert meta["n"] == N and len(meta["sha256"]) == 64
    again = ev.load_eval_set(N, H, W, cache, progress=False)             # from the verified cache
    fresh = ev.load_eval_set(N, H, W, None, progress=False)
    for a, b in zip(again, fresh):
        assert np.array_equal(a["p1_t2_pi1"], b["p1_t2_pi1"], equal_nan=True)
        assert a["object_motions"].keys() == b["object_motions"].keys()
        assert all(np.allclose(a["object_motions"][k], b["object_motions"][k]) for k in a["object_motions"])
        assert a["kind"] == b["kind"]
    # a tampered cache (bytes changed after the JSON was written) is not trusted
    data = bytearray((cache / (stem + ".npz")).read_bytes())
    data[-100] ^= 0xFF
    (cache / (stem + ".npz")).write_bytes(bytes(data))
    assert np.array_equal(ev.load_eval_set(N, H, W, cache, progress=False)[1]["img2"], fresh[1]["img2"])


def test_eval_cache_default_is_per_user(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ev.default_eval_cache_dir() == tmp_path / "xdg" / "dpm_ros" / "eval"
    ev.load_eval_set(1, H, W, progress=False)
    assert list((tmp_path / "xdg" / "dpm_ros" / "eval").glob("*.npz"))
