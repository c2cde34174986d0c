"""Metrics of dpm_theory.md (Tables 7 and 8): shared per-pair normalisation, Lrel, 3D EPE, RPE, mask IoU/F1."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from dpm_ros import POINT_MAP_NAMES
from dpm_ros.geometry.metrics import epe, lrel, mask_f1, mask_iou, normalise_pair, rpe
from dpm_ros.synthetic import make_pair


@pytest.fixture(scope="module")
def pair():
    return make_pair(3, 48, 64, 3)


def _maps(p):
    return {n: p[n] for n in POINT_MAP_NAMES}


def _valid(p):
    return {n: p["valid1"] if n.startswith("p1") else p["valid2"] for n in POINT_MAP_NAMES}


def test_normalisation_is_one_shared_factor_and_removes_scale(pair):
    gt = _maps(pair)
    pred = {n: v * np.float32(3.7) for n, v in gt.items()}               # a perfect prediction up to scale
    ph, pg, (fp, fg) = normalise_pair(pred, gt, _valid(pair))
    assert fp == pytest.approx(3.7 * fg, rel=1e-6)
    norms = np.concatenate([np.linalg.norm(pg[n][_valid(pair)[n]], axis=-1) for n in POINT_MAP_NAMES])
    assert norms.mean() == pytest.approx(1.0, rel=1e-9)                 # mean distance to the origin over all maps
    for n in POINT_MAP_NAMES:
        assert lrel(ph[n], pg[n], _valid(pair)[n]) < 1e-6
        np.testing.assert_allclose(pg[n][_valid(pair)[n]], gt[n][_valid(pair)[n]] / fg, rtol=1e-6)


def test_lrel_and_epe_equal_their_definitions(pair):
    rng = np.random.default_rng(0)
    gt = pair["p1_t1_pi1"].astype(np.float64)
    noise = rng.normal(scale=0.05, size=gt.shape)
    v = pair["valid1"]
    want = np.mean(np.linalg.norm(noise[v], axis=-1) / np.linalg.norm(gt[v], axis=-1))
    assert lrel(gt + noise, gt, v) == pytest.approx(want, rel=1e-12)
    flow = rng.normal(size=gt.shape)
    assert epe(flow + noise, flow, v) == pytest.approx(np.mean(np.linalg.norm(noise[v], axis=-1)), rel=1e-12)
    bad = gt + noise
    bad[0, 0] = np.nan                                                   # NaN pixels are excluded
    assert np.isfinite(lrel(bad, gt, v))


def test_rpe_degrees_and_translation():
    rot = Rotation.from_rotvec([0.0, 0.0, np.radians(3.0)]).as_matrix()
    r_deg, t_err = rpe(rot, [1.0, 2.0, 3.0], np.eye(3), [1.0, 2.0, 3.5])
    assert r_deg == pytest.approx(3.0, abs=1e-9) and t_err == pytest.approx(0.5)
    tiny = Rotation.from_rotvec([1e-8, 0, 0]).as_matrix()              # stays accurate near zero
    assert rpe(tiny, np.zeros(3), np.eye(3), np.zeros(3))[0] == pytest.approx(np.degrees(1e-8), rel=1e-6)


def test_mask_iou_and_f1():
    gt = np.zeros((4, 5), bool)
    gt[:2] = True                                                        # 10 pixels
    pred = np.zeros_like(gt)
    pred[1:3] = True                                                     # 5 overlap, 5 false positives
    assert mask_iou(pred, gt) == pytest.approx(5 / 15)
    assert mask_f1(pred, gt) == pytest.approx(2 * 5 / (10 + 10))
    valid = np.ones_like(gt)
    valid[2] = False
    assert mask_iou(pred, gt, valid) == pytest.approx(5 / 10)
    with pytest.raises(ValueError, match="both masks are empty"):
        mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="shape"):
        mask_f1(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


def test_metric_errors():
    with pytest.raises(ValueError, match="same maps"):
        normalise_pair({"a": np.ones((2, 2, 3))}, {"b": np.ones((2, 2, 3))})
    with pytest.raises(ValueError, match="no valid pixels"):
        lrel(np.full((2, 2, 3), np.nan), np.ones((2, 2, 3)))
    with pytest.raises(ValueError, match="3x3"):
        rpe(np.eye(2), np.zeros(3), np.eye(3), np.zeros(3))
