"""Scale-aligned depth evaluation on the real pairs of ../shared/data: metrics on constructed cases, the PFM reader,
the loaders against the documented ranges and the images themselves, and the evaluation end to end."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from dpm_ros.model import build_model, save_model
from dpm_ros.training import real_eval
from dpm_ros.training.real_eval import (aligned_depth_errors, centre_crop_box, constant_baseline_errors,
                                        crop_to_network, depth_errors, evaluate_real_depth, load_flyingthings,
                                        load_middlebury, median_align, rank_correlation, read_pfm)

GT = np.array([[1.0, 2.0, 4.0]])


# ------------------------------------------------------------------------------------------------ metrics
def test_perfect_prediction_scores_zero_abs_rel_and_full_delta():
    gt = np.linspace(0.5, 9.0, 60).reshape(6, 10)
    assert depth_errors(gt, gt) == {"abs_rel": 0.0, "delta1": 1.0, "n_pixels": 60}


def test_depth_errors_hand_computed():
    # |1.1-1|/1 = 0.1, 0, |3-4|/4 = 0.25; ratios 1.1, 1, 4/3 -> two of three under 1.25
    r = depth_errors(np.array([[1.1, 2.0, 3.0]]), GT)
    assert r["abs_rel"] == pytest.approx(0.35 / 3)
    assert r["delta1"] == pytest.approx(2 / 3)


def test_scaled_prediction_is_exact_after_median_alignment():
    rng = np.random.default_rng(0)
    gt = rng.uniform(2.1, 5.0, (20, 30))
    aligned, scale = median_align(0.37 * gt, gt)
    assert scale == pytest.approx(1 / 0.37)
    np.testing.assert_allclose(aligned, gt, rtol=1e-12)
    r = aligned_depth_errors(0.37 * gt, gt)
    assert r["abs_rel"] == pytest.approx(0.0, abs=1e-12) and r["delta1"] == 1.0 and r["nonpositive_share"] == 0.0


def test_constant_prediction_known_value():
    # any constant is aligned to median(gt) = 2: AbsRel = (1/1 + 0 + 2/4) / 3 = 0.5; ratios 2, 1, 2 -> δ = 1/3
    for c in (0.01, 7.0):
        r = aligned_depth_errors(np.full_like(GT, c), GT)
        assert r["abs_rel"] == pytest.approx(0.5) and r["delta1"] == pytest.approx(1 / 3)
    base = constant_baseline_errors(GT)
    assert base["abs_rel"] == pytest.approx(0.5) and base["delta1"] == pytest.approx(1 / 3)


def test_rank_correlation_is_scale_free():
    gt = np.linspace(1.0, 5.0, 50).reshape(5, 10)
    assert rank_correlation(3.0 * gt**2, gt) == pytest.approx(1.0)
    assert rank_correlation(1.0 / gt, gt) == pytest.approx(-1.0)
    assert rank_correlation(np.ones_like(gt), gt) == 0.0


def test_valid_mask_and_invalid_ground_truth_are_excluded():
    gt = np.array([[1.0, 2.0, np.nan, 0.0, 4.0]])
    pred = np.array([[1.0, 2.0, 5.0, 5.0, 100.0]])
    valid = np.array([[True, True, True, True, False]])
    r = depth_errors(pred, gt, valid)
    assert r == {"abs_rel": 0.0, "delta1": 1.0, "n_pixels": 2}


def test_points_behind_the_camera_are_floored_and_counted():
    gt = np.array([[1.0, 2.0, 3.0, 4.0]])
    r = aligned_depth_errors(np.array([[1.0, 2.0, 3.0, -4.0]]), gt)
    assert r["nonpositive_share"] == 0.25
    assert np.isfinite(r["abs_rel"]) and r["delta1"] <= 0.75


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="shape"):
        depth_errors(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="no valid pixels"):
        depth_errors(np.ones((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="median_align"):
        depth_errors(-np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="data_root"):
        load_middlebury("/nonexistent")


# ------------------------------------------------------------------------------------------------ PFM, crop
@pytest.mark.parametrize("scale, dtype", [(-1.0, "<f4"), (1.0, ">f4")])
def test_read_pfm_round_trip_bottom_to_top_rows(tmp_path, scale, dtype):
    img = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "x.pfm"
    path.write_bytes(f"Pf \n4 3 \n{scale}\n".encode() + np.flipud(img).astype(dtype).tobytes())
    np.testing.assert_array_equal(read_pfm(path), img)
    path.write_bytes(b"P6\n4 3\n255\n")
    with pytest.raises(ValueError, match="not a PFM"):
        read_pfm(path)


def test_centre_crop_box():
    assert centre_crop_box(540, 960, 1.0) == (0, 210, 540, 540)
    assert centre_crop_box(500, 741, 1.5) == (3, 0, 494, 741)
    with pytest.raises(ValueError):
        centre_crop_box(0, 10, 1.0)


# ------------------------------------------------------------------------------------------------ loaders
def _edges(a: np.ndarray) -> np.ndarray:
    return np.hypot(cv2.Sobel(a, cv2.CV_64F, 1, 0), cv2.Sobel(a, cv2.CV_64F, 0, 1)).ravel()


def test_flyingthings_depth_positive_finite_and_aligned_with_the_image(shared_data):
    pair = load_flyingthings(shared_data)
    assert pair.img1.shape == pair.img2.shape == (540, 960, 3) and pair.depth1.shape == (540, 960)
    disp = read_pfm(shared_data / "raft3d_flyingthings" / "disp1.pfm")
    np.testing.assert_array_equal(pair.valid1, np.isfinite(disp) & (disp > 0))
    d = pair.depth1[pair.valid1]
    assert pair.valid1.mean() > 0.99 and np.isfinite(d).all() and (d > 0).all()
    np.testing.assert_allclose(pair.depth1[pair.valid1] * disp[pair.valid1], 1050.0, rtol=1e-6)
    # rows bottom-to-top handled: depth edges coincide with image edges (flipped, they do not)
    inv = 1.0 / np.where(pair.valid1, pair.depth1, np.inf)
    gray = cv2.cvtColor(pair.img1, cv2.COLOR_RGB2GRAY).astype(np.float64)
    right = np.corrcoef(_edges(gray), _edges(inv))[0, 1]
    flipped = np.corrcoef(_edges(gray), _edges(np.flipud(inv)))[0, 1]
    assert right > 0.15 and right > 5 * abs(flipped)


def test_middlebury_depth_range_and_stereo_consistency(shared_data):
    pair = load_middlebury(shared_data)
    d = pair.depth1[pair.valid1]
    assert pair.img1.shape == (500, 741, 3) and 0.9 < pair.valid1.mean() < 0.95
    assert 2.1 <= d.min() < 2.2 and 4.9 < d.max() <= 5.02
    # back to disparity: warping the right image to the left cuts the colour error several-fold
    disp = real_eval.MIDDLEBURY_F * real_eval.MIDDLEBURY_BASELINE_M / np.where(pair.valid1, pair.depth1, 1.0) \
        - real_eval.MIDDLEBURY_DOFFS
    h, w = disp.shape
    xs = (np.arange(w)[None, :] - disp).astype(np.float32)
    ys = np.repeat(np.arange(h, dtype=np.float32)[:, None], w, 1)
    warped = cv2.remap(pair.img2.astype(np.float32), xs, ys, cv2.INTER_LINEAR)
    err_warped = np.abs(warped - pair.img1).mean(-1)[pair.valid1].mean()
    err_raw = np.abs(pair.img2.astype(np.float32) - pair.img1).mean(-1)[pair.valid1].mean()
    assert err_raw > 30 and err_warped < 0.35 * err_raw


def test_crop_to_network_nearest_keeps_ground_truth_values(shared_data):
    pair = load_middlebury(shared_data)
    img1, img2, depth, valid = crop_to_network(pair, 32, 48)
    assert img1.shape == img2.shape == (494, 741, 3) and depth.shape == valid.shape == (32, 48)
    assert np.isin(depth[valid], pair.depth1[pair.valid1]).all()  # nearest: no interpolated depths


# ------------------------------------------------------------------------------------------------ end to end
def _check_result(result: dict, height: int, width: int) -> None:
    assert set(result["datasets"]) == {"flyingthings", "middlebury"}
    for r in result["datasets"].values():
        assert r["network_hw"] == [height, width]
        for method in ("model", "constant"):
            m = r[method]
            assert np.isfinite(m["abs_rel"]) and m["abs_rel"] >= 0 and 0 <= m["delta1"] <= 1
            assert 0.9 * height * width < m["n_pixels"] <= height * width


def test_evaluation_end_to_end_on_a_random_tiny_model(shared_data):
    torch.manual_seed(0)
    result = evaluate_real_depth(build_model("dpm_tiny"), shared_data)
    _check_result(result, 32, 48)
    ft, mb = result["datasets"]["flyingthings"], result["datasets"]["middlebury"]
    assert ft["crop_hw"] == [540, 810] and mb["crop_hw"] == [494, 741]
    # the constant baseline on this data (what a depth-blind model scores at 48 x 32)
    assert 0.1 < mb["constant"]["abs_rel"] < 0.3 and 0.4 < mb["constant"]["delta1"] < 0.8
    # an untrained network does not order depth: measured 0.023 (FlyingThings) and 0.080 (Middlebury); a rank
    # correlation computed against the ground truth itself (1.0) or a reversed one would fail here
    assert abs(ft["model"]["rank_corr"]) < 0.3 and abs(mb["model"]["rank_corr"]) < 0.3
    assert ft["model"]["rank_corr"] != mb["model"]["rank_corr"]
    assert -1 <= mb["model"]["rank_corr_row_rule"] <= 1 and 0.3 < mb["row_rule"]["rank_corr"] < 0.8
    for k in ("left_right", "right_left"):
        assert 0 <= result["ego_motion"][k]["direction_error_deg"] <= 180
    assert 2.1 <= mb["gt_depth_range"][0] and mb["gt_depth_range"][1] <= 5.02


def test_row_rule_and_direction_error():
    rows = real_eval.row_rule_depth(4, 3)
    assert rows[0].tolist() == [4, 4, 4] and rows[-1].tolist() == [1, 1, 1]      # lower rows nearer
    v = np.repeat(np.arange(10.0)[:, None], 5, 1)
    assert rank_correlation(rows := real_eval.row_rule_depth(10, 5), 10.0 - v) == pytest.approx(1.0)
    assert rank_correlation(rows, v) == pytest.approx(-1.0)
    err = real_eval.translation_direction_error_deg
    assert err([0.2, 0, 0], [1, 0, 0]) == pytest.approx(0.0)
    assert err([-0.2, 0, 0], [1, 0, 0]) == pytest.approx(180.0)
    assert err([0.1, 0.1, 0], [1, 0, 0]) == pytest.approx(45.0)
    assert err([0, 0, 0], [1, 0, 0]) == 180.0


def test_ego_motion_of_the_ground_truth_middlebury_maps_is_exact(shared_data):
    """The Middlebury ego-motion protocol on ground-truth point maps (an engine that returns them): the direction
    error is ~0 in both pair orders, so the model's number measures the model, not the protocol."""
    from dpm_ros.engine.base import Engine, EngineInfo
    pair = load_middlebury(shared_data)
    f, cx, cy = real_eval.MIDDLEBURY_F, real_eval.MIDDLEBURY_CX, real_eval.MIDDLEBURY_CY
    b = real_eval.MIDDLEBURY_BASELINE_M
    H, W = 96, 128
    top, left, ch, cw = 0, 0, 0, 0
    from dpm_ros.engine.pair_io import crop_box, crop_intrinsics
    K = crop_intrinsics(np.array([[f, 0, cx], [0, f, cy], [0, 0, 1.0]]), pair.depth1.shape, (H, W))
    top, left, ch, cw = crop_box(*pair.depth1.shape, H, W)
    d = cv2.resize(np.where(pair.valid1, pair.depth1, np.nan)[top:top + ch, left:left + cw], (W, H),
                   interpolation=cv2.INTER_NEAREST)
    d = np.where(np.isfinite(d), d, np.nanmedian(d))
    v, u = np.mgrid[0:H, 0:W]
    P = np.stack([(u - K[0, 2]) * d / K[0, 0], (v - K[1, 2]) * d / K[1, 1], d], -1).astype(np.float32)
    left_img = pair.img1

    class GroundTruth(Engine):
        """P1 in camera 1; camera 2 at +x·b (left→right) or −x·b (right→left), static scene."""
        def infer(self, img1, img2):
            s = 1.0 if img1 is left_img else -1.0
            Q = P - np.float32([s * b, 0, 0])          # the same points in camera 2
            maps = {"p1_t1_pi1": P, "p1_t2_pi1": P, "p2_t2_pi1": P, "p2_t1_pi1": P,
                    "p2_t2_pi2": Q, "p2_t1_pi2": Q, "p1_t1_pi2": Q, "p1_t2_pi2": Q}
            return {**maps, **{"conf_" + k: np.ones((H, W), np.float32) for k in maps}}

        def info(self):
            return EngineInfo(backend="gt", device="cpu", precision="fp32", height=H, width=W, symmetric=True)

    ego = real_eval.middlebury_ego_motion(GroundTruth(), pair)
    for k in ("left_right", "right_left"):
        assert ego[k]["direction_error_deg"] < 1.0 and ego[k]["rotation_deg"] < 0.1


def test_cli_writes_json(shared_data, tmp_path, capsys):
    torch.manual_seed(1)
    weights = tmp_path / "tiny.safetensors"
    save_model(build_model("dpm_tiny"), weights)
    out = tmp_path / "real.json"
    assert real_eval.main(["--weights", str(weights), "--data", str(shared_data), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    _check_result(result, 32, 48)
    assert result["engine"]["backend"] == "torch" and result["engine"]["preset"] == "dpm_tiny"
    assert "| middlebury | constant |" in capsys.readouterr().out
    assert real_eval.main(["--weights", str(tmp_path / "missing.safetensors"), "--data", str(shared_data)]) == 2
