"""The shipped model on ONNX Runtime without torch: ``engines/dpm_small.onnx`` run through ``load_engine`` (auto →
ONNX Runtime on a GPU-less machine) reproduces the torch reference outputs stored in
``test/data/dpm_small_reference.npz`` (points within 1e-4 relative, confidences and motion within 1e-3), and that
path never imports torch. This runs in every environment (Kilted, Jazzy on Python 3.12 without torch, Python 3.10
with the Humble/JetPack 6 minimum libraries); where torch is installed the stored reference is checked against torch
itself, so it cannot go stale. Regenerate after re-exporting the model: ``python test/test_engine_reference.py``."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ONNX = ROOT / "engines" / "dpm_small.onnx"
WEIGHTS = ROOT / "engines" / "dpm_small.safetensors"
REFERENCE = ROOT / "test" / "data" / "dpm_small_reference.npz"
KEPT_MAPS = ("p1_t1_pi1", "p1_t2_pi1", "p2_t2_pi2")   # stored in REFERENCE (with their confidences and motion)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| / max |b| over the map."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def assert_matches(ref: dict, got: dict) -> None:
    for name, want in ref.items():
        assert got[name].dtype == np.float32 and got[name].shape == want.shape, name
        tol = 1e-4 if name.startswith("p") else 1e-3     # point maps; confidences and motion probabilities
        assert rel_err(got[name], want) < tol, (name, rel_err(got[name], want))


@pytest.fixture(scope="module")
def reference():
    if not ONNX.is_file():
        pytest.skip(f"shipped model {ONNX} not present")
    data = np.load(REFERENCE, allow_pickle=False)
    stored = str(data["onnx_sha256"])
    assert stored == sha256(ONNX), (f"{ONNX} changed since {REFERENCE.name} was made: regenerate it with "
                                    "`python test/test_engine_reference.py` (in the torch venv)")
    outputs = {k[len("out_"):]: data[k] for k in data.files if k.startswith("out_")}
    return data["img1"], data["img2"], outputs, list(data["names"])


def test_shipped_onnx_on_onnxruntime_matches_the_torch_reference(reference):
    pytest.importorskip("onnxruntime")
    from dpm_ros.engine import load_engine

    img1, img2, ref, names = reference
    engine = load_engine(ONNX)                     # auto: ONNX Runtime here (no CUDA GPU)
    assert engine.info().backend == "onnxruntime"
    got = engine.infer(img1, img2)
    assert sorted(got) == names and all(v.shape[:2] == img1.shape[:2] for v in got.values())
    assert_matches(ref, got)
    # the pair swapped is a different input: the outputs must differ (the check above could not pass by accident)
    swapped = engine.infer(img2, img1)
    assert rel_err(swapped["p1_t1_pi1"], ref["p1_t1_pi1"]) > 1e-2


def test_reference_is_what_torch_computes(reference):
    pytest.importorskip("torch",
                        reason="torch not installed in this environment (the reference is checked where it is)")
    img1, img2, ref, names = reference
    got = torch_outputs(img1, img2)
    assert sorted(got) == names
    assert_matches(ref, got)


def test_onnx_engine_and_node_imports_never_import_torch(tmp_path):
    """The node's ONNX Runtime path (and the TensorRT backend's availability check) with torch made unimportable."""
    pytest.importorskip("onnxruntime")
    code = textwrap.dedent(f"""
        import importlib.util, sys
        sys.modules["torch"] = None            # any `import torch` now raises ImportError
        import numpy as np
        from dpm_ros.engine.loader import choose_backend
        from dpm_ros.engine.select import open_engine
        backend, why = choose_backend({str(ONNX)!r}, "auto")
        assert backend == "onnxruntime", (backend, why)
        engine = open_engine("")                   # the node's default: the shipped model
        out = engine.infer(np.zeros((48, 64, 3), np.uint8), np.full((48, 64, 3), 128, np.uint8))
        assert np.isfinite(out["p1_t1_pi1"]).any()
        if importlib.util.find_spec("rclpy") is not None:
            import dpm_ros.ros.node, dpm_ros.commands.replay, dpm_ros.commands.play, dpm_ros.commands.record
        print("ok", backend, "| torch modules loaded:", [m for m in sys.modules if m.split(".")[0] == "torch"
                                                         and sys.modules[m] is not None])
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("torch modules loaded: []"), res.stdout


def torch_outputs(img1: np.ndarray, img2: np.ndarray) -> dict:
    from dpm_ros.engine.torch_backend import TorchEngine
    from dpm_ros.model import load_model

    return TorchEngine(load_model(WEIGHTS).eval()).infer(img1, img2)


def regenerate() -> None:
    """Write REFERENCE: a synthetic 64×64 pair (the network's resolution, so no resize is involved), the torch
    outputs of the shipped weights on it (a same-time and a cross-time map per image, their confidences, both motion
    probabilities: ~0.25 MB), all output names, and the ONNX file's sha256."""
    from dpm_ros.synthetic import make_pair

    pair = make_pair(8, height=64, width=64, n_objects=2, renderer="numpy")
    out = torch_outputs(pair["img1"], pair["img2"])
    REFERENCE.parent.mkdir(exist_ok=True)
    keep = [k for k in out if k.split("conf_")[-1] in KEPT_MAPS or k.startswith("motion_prob")]
    np.savez_compressed(REFERENCE, img1=pair["img1"], img2=pair["img2"], onnx_sha256=np.array(sha256(ONNX)),
                        names=np.array(sorted(out)), **{f"out_{k}": out[k].astype(np.float32) for k in keep})
    print(f"wrote {REFERENCE} ({REFERENCE.stat().st_size} bytes): {sorted(out)}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    regenerate()
