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


# ---------------------------------------------------------------------------------------------------------- (2)
def _dpm(*args, cwd=None, timeout=120):
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "dpm_ros.cli", *map(str, args)], cwd=cwd or root,
                          env=os.environ.copy(), capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stderr


def _tiny_sequence(frames=4, **kw):
    from dpm_ros.synthetic import SyntheticSequence
    return SyntheticSequence(seed=1, n_frames=frames, height=24, width=32, n_objects=1, renderer="numpy", **kw)


def _tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory):
    from dpm_ros.bag import write_sequence
    return write_sequence(_tiny_sequence(6), tmp_path_factory.mktemp("bags") / "seq.mcap")


def test_overwrite_never_deletes_an_unrelated_folder_the_working_folder_or_the_input(tmp_path, small_bag):
    """(2) `--overwrite` pointed at a folder of unrelated files, at '.', or at the input leaves all of them."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    rc, err = _dpm("synth", "--out", victim, "--frames", 2, "--height", 24, "--width", 32, "--renderer", "numpy",
                   "--overwrite")
    assert rc == 1 and "is not one" in err and "Traceback" not in err, err
    assert (victim / "thesis.tex").read_text() == "years of work"
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("keep")
    rc, err = _dpm("replay", small_bag, "--out", ".", "--engine", f"oracle:{small_bag}", "--overwrite",
                   "--no-progress", cwd=work)
    assert rc == 1 and (work / "notes.txt").read_text() == "keep", err
    before = small_bag.read_bytes()
    rc, err = _dpm("replay", small_bag, "--out", small_bag, "--engine", f"oracle:{small_bag}", "--overwrite",
                   "--no-progress")
    assert rc == 1 and "input" in err and small_bag.read_bytes() == before, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim", "work"]


def test_overwrite_keeps_the_old_output_until_the_new_one_is_complete(tmp_path, monkeypatch):
    """(2) A write that fails half-way (here: frame 2 raises, as Ctrl-C would) leaves the old bag byte for byte
    and no partial or hidden files; a complete one replaces it (file and rosbag2 folder alike)."""
    from dpm_ros.bag import read_images, write_sequence
    from dpm_ros.synthetic import SyntheticSequence
    for name in ("out.mcap", "out_folder"):
        out = tmp_path / name
        write_sequence(_tiny_sequence(3), out)
        old = _tree(out) if out.is_dir() else out.read_bytes()
        real_frame = SyntheticSequence.frame

        def failing(self, i):
            if i == 2:
                raise KeyboardInterrupt
            return real_frame(self, i)

        monkeypatch.setattr(SyntheticSequence, "frame", failing)
        with pytest.raises(KeyboardInterrupt):
            write_sequence(_tiny_sequence(5), out, overwrite=True)
        monkeypatch.setattr(SyntheticSequence, "frame", real_frame)
        assert (_tree(out) if out.is_dir() else out.read_bytes()) == old
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
        write_sequence(_tiny_sequence(5), out, overwrite=True)
        assert len(list(read_images(out))) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mcap", "out_folder"]
