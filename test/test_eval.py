"""`dpm eval`: all keys of the JSON, oracle ≈ 0, and the static baseline's numbers checked against a direct
computation of the definitions on the held-out pairs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dpm_ros.training import evaluate as ev

N_PAIRS = 6
ERROR_KEYS = [k for k in ev.METRIC_KEYS if not k.startswith("mask_iou")]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from dpm_ros.model import build_model
    from dpm_ros.model.checkpoint import save_model
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    weights = save_model(build_model("dpm_tiny"), root / "tiny.safetensors")
    return root, weights


@pytest.fixture(scope="module")
def eval_json(tiny_run):
    from dpm_ros.cli import main
    root, weights = tiny_run
    out = root / "eval.json"
    rc = main(["eval", "--weights", str(weights), "--pairs", str(N_PAIRS), "--json", str(out), "--cache-dir",
               str(root / "cache"), "--no-progress"])
    assert rc == 0
    return json.loads(out.read_text())["methods"]


def test_json_has_every_method_and_key(eval_json):
    assert sorted(eval_json) == ["model", "oracle", "static"]
    for method, metrics in eval_json.items():
        for key in ev.METRIC_KEYS + ("n_pairs",):
            assert key in metrics, (method, key)
        assert metrics["n_pairs"] == N_PAIRS
        assert np.isfinite([metrics[k] for k in ERROR_KEYS]).all(), method


def test_oracle_is_exact(eval_json):
    oracle = eval_json["oracle"]
    for key in ERROR_KEYS:
        assert oracle[key] < 1e-4, key
    assert oracle["mask_iou_learned"] == 1.0 and oracle["mask_iou_learned_view2"] == 1.0
    # the ε-threshold mask misses only the slowest moving pixels (displacement < 2 % of depth)
    assert oracle["mask_iou"] > 0.8 and oracle["mask_iou_view2"] > 0.8


def test_static_object_flow_error_is_the_mean_true_flow(tiny_run, eval_json):
    """A static model predicts zero object flow, so its OF-F EPE is the mean normalised ‖P1(t2,π1) − P1(t1,π1)‖."""
    root, _ = tiny_run
    samples = ev.load_eval_set(N_PAIRS, 32, 48, root / "cache", progress=False)
    per_pair = []
    for s in samples:
        v = s["valid1"]
        norms = [np.linalg.norm(s[n][s["valid" + n[1]]], axis=-1) for n in ("p1_t1_pi1", "p1_t2_pi1",
                                                                              "p2_t1_pi1", "p2_t2_pi1")]
        scale = np.concatenate(norms).mean()
        per_pair.append(np.linalg.norm(s["p1_t2_pi1"][v] - s["p1_t1_pi1"][v], axis=-1).mean() / scale)
    assert eval_json["static"]["of_epe_fwd"] == pytest.approx(np.mean(per_pair), rel=1e-5)
    assert eval_json["static"]["of_epe_fwd"] > 1e-4
    assert eval_json["static"]["mask_iou"] == 0.0


def test_static_keeps_the_same_time_maps_of_the_model(eval_json):
    m, s = eval_json["model"], eval_json["static"]
    for key in ("lrel_p1_t1_pi1", "lrel_p2_t2_pi1", "ego_rpe_rot_deg", "ego_rpe_trans"):
        assert s[key] == pytest.approx(m[key], rel=1e-6), key


def test_held_out_set_is_cached_and_reloaded_identically(tiny_run):
    root, _ = tiny_run
    a = ev.load_eval_set(N_PAIRS, 32, 48, root / "cache", progress=False)
    b = ev.load_eval_set(N_PAIRS, 32, 48, None, progress=False)  # regenerated
    assert np.array_equal(a[3]["img1"], b[3]["img1"])
    assert np.array_equal(a[3]["p1_t2_pi1"], b[3]["p1_t2_pi1"], equal_nan=True)


def test_bad_arguments_are_reported(tiny_run, capsys):
    from dpm_ros.cli import main
    root, weights = tiny_run
    assert main(["eval", "--weights", str(root / "missing.safetensors"), "--no-progress"]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["eval", "--methods", "model,best", "--weights", str(weights)]) == 1


def test_real_data_depth_table_goes_into_the_json(tiny_run, shared_data, capsys):
    from dpm_ros.cli import main
    root, weights = tiny_run
    out = root / "real.json"
    assert main(["eval", "--weights", str(weights), "--pairs", "2", "--methods", "model", "--cache-dir",
                 str(root / "cache2"), "--real-data", str(shared_data), "--json", str(out), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["real_depth"]["datasets"]) == {"flyingthings", "middlebury"}
    assert np.isfinite(doc["real_depth"]["datasets"]["middlebury"]["model"]["abs_rel"])  # random weights: any value
    assert "AbsRel" in capsys.readouterr().out
    assert set(doc["real_depth"]["ego_motion"]) == {"left_right", "right_left"}


def test_flying_held_out_set_at_another_resolution(tiny_run, capsys):
    """--family flying: flying scenes (seeds 0..N-1, disjoint from training), cached apart from the rooms; --height /
    --width run the model at that resolution."""
    from dpm_ros.cli import main
    root, weights = tiny_run
    out = root / "fly.json"
    assert main(["eval", "--weights", str(weights), "--pairs", "3", "--family", "flying", "--height", "24",
                 "--width", "32", "--cache-dir", str(root / "cache3"), "--json", str(out), "--no-progress"]) == 0
    doc = json.loads(out.read_text())["methods"]
    assert doc["oracle"]["lrel_p1_t1_pi1"] == pytest.approx(0.0, abs=1e-6)
    cached = sorted(p.name for p in (root / "cache3").iterdir() if p.suffix == ".npz")
    assert len(cached) == 1 and "_24x32_flying_" in cached[0]
    fly = ev.load_eval_set(3, 24, 32, root / "cache3", progress=False, family="flying")
    room = ev.load_eval_set(3, 24, 32, None, progress=False)
    assert all(s["family"] == "flying" for s in fly) and all(s["family"] == "room" for s in room)
    assert fly[0]["img1"].shape == (24, 32, 3) and not np.array_equal(fly[0]["img1"], room[0]["img1"])
