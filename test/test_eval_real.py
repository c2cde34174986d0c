"""Real-pair depth evaluation (../shared/data): ground-truth depth decoding, cropping/resizing and the
scale-aligned AbsRel / δ<1.25 definitions."""
from __future__ import annotations

import numpy as np
import pytest

from dpm_ros.training.real_depth import crop_to_aspect, depth_errors, load_real_pairs, read_pfm, resize_pair


def test_ground_truth_depth_of_both_real_pairs(shared_data):
    pairs = load_real_pairs(shared_data)
    assert set(pairs) == {"flyingthings3d", "middlebury"}
    mb = pairs["middlebury"]["depth1"]
    assert mb.shape == (500, 741)
    finite = mb[np.isfinite(mb)]
    assert 2.0 < finite.min() < 2.3 and 4.8 < finite.max() < 5.1          # README: 2.1–5.0 m
    ft = pairs["flyingthings3d"]
    assert ft["depth1"].shape == ft["img1"].shape[:2] == (540, 960)
    assert np.isfinite(ft["depth1"]).mean() > 0.99


def test_resize_keeps_aspect_and_samples_depth_at_pixel_centres(shared_data):
    pair = load_real_pairs(shared_data)["middlebury"]
    rows, cols = crop_to_aspect(pair["img1"].shape[:2], 64, 64)
    assert (rows.stop - rows.start) == (cols.stop - cols.start) == 500
    img1, img2, depth = resize_pair(pair, 64, 64)
    assert img1.shape == img2.shape == (64, 64, 3) and img1.dtype == np.uint8
    crop = pair["depth1"][rows, cols]
    assert depth[0, 0] == crop[3, 3] or (np.isnan(depth[0, 0]) and np.isnan(crop[3, 3]))  # (0.5·500/64) -> 3


def test_depth_errors_are_scale_invariant_and_can_fail(shared_data):
    _, _, gt = resize_pair(load_real_pairs(shared_data)["flyingthings3d"], 48, 64)
    exact = depth_errors(3.7 * gt, gt)
    assert exact["abs_rel"] < 1e-6 and exact["delta_1.25"] == 1.0
    assert exact["scale"] == pytest.approx(1 / 3.7)
    flat = depth_errors(np.full_like(gt, 2.0), gt)
    assert flat["abs_rel"] > 0.05 and flat["delta_1.25"] < 1.0
    with pytest.raises(ValueError, match="shapes"):
        depth_errors(gt[:-1], gt)


def test_truncated_pfm_is_reported(tmp_path):
    bad = tmp_path / "bad.pfm"
    bad.write_bytes(b"Pf\n4 3\n-1.0\n" + np.zeros(5, "<f4").tobytes())
    with pytest.raises(ValueError, match="truncated"):
        read_pfm(bad)
    good = tmp_path / "good.pfm"
    rows = np.arange(12, dtype="<f4").reshape(3, 4)
    good.write_bytes(b"Pf\n4 3\n-1.0\n" + rows[::-1].tobytes())      # PFM stores the bottom row first
    assert np.array_equal(read_pfm(good), rows)
