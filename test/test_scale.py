"""Metric scale (stream.scale): each source on a ground-truth sequence whose pairs are each in their own model units,
the way a network normalises every pair."""
from __future__ import annotations

import numpy as np
import pytest

from dpm_ros.engine.pair_io import resize_nearest
from dpm_ros.stream.scale import ScaleEstimator, frame_depths, median_ratio, shape_ratio

H, W = 24, 32
K = np.array([[30.0, 0, (W - 1) / 2], [0, 30.0, (H - 1) / 2], [0, 0, 1]])


def _backproject(z: np.ndarray) -> np.ndarray:
    """(H, W) depth (metres) -> (H, W, 3) points in the optical frame (z forward, x right, y down)."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    return rays * z[..., None]


def _rot(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    S = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * S + (1 - np.cos(angle)) * S @ S


class Sequence:
    """Metric depth per frame and camera poses T_w_c; pairs in model units = metric / lam (lam random per pair)."""

    def __init__(self, n_frames: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.depth = [rng.uniform(2.0, 8.0, (H, W)) for _ in range(n_frames)]
        self.T_w_c = []
        for i in range(n_frames):
            T = np.eye(4)
            T[:3, :3] = _rot([0.1, 1, 0.05], 0.02 * i)
            T[:3, 3] = [0.05 * i, 0.0, 0.1 * i]
            self.T_w_c.append(T)
        self.stamps = [100.0 + 0.1 * i for i in range(n_frames)]
        self.rng = rng

    def pair(self, i1: int, i2: int, lam: float):
        """Model-unit maps of the pair (I1 = frame i1, I2 = frame i2), T_c1_c2 in model units, true metres/unit."""
        T_c1_c2 = np.linalg.inv(self.T_w_c[i1]) @ self.T_w_c[i2]
        p2_in_c2 = _backproject(self.depth[i2])
        p2_in_c1 = p2_in_c2 @ T_c1_c2[:3, :3].T + T_c1_c2[:3, 3]
        maps = {"p1_t1_pi1": (_backproject(self.depth[i1]) / lam).astype(np.float32),
                "p2_t2_pi1": (p2_in_c1 / lam).astype(np.float32)}
        T = T_c1_c2.copy()
        T[:3, 3] /= lam
        return maps, T


def test_frame_depths_recovers_each_frames_own_z():
    seq = Sequence(3)
    maps, T = seq.pair(2, 0, lam=1.0)
    z1, z2 = frame_depths(maps, T)
    np.testing.assert_allclose(z1, seq.depth[2], rtol=1e-6)
    np.testing.assert_allclose(z2, seq.depth[0], rtol=1e-5)


def test_none_and_fixed():
    seq = Sequence(2)
    maps, T = seq.pair(1, 0, 3.0)
    assert ScaleEstimator("none").update(1.0, 0.9, maps, T).scale == 1.0
    assert ScaleEstimator("fixed", fixed_scale=2.5).update(1.0, 0.9, maps, T).scale == 2.5


def test_depth_source_is_the_median_ratio_against_metric_depth():
    seq = Sequence(2, seed=1)
    maps, T = seq.pair(1, 0, lam=0.37)
    depth = seq.depth[1].copy()
    depth[:3] = 0.0          # invalid rows (0 = no return) are ignored
    depth[5, 5] = np.nan
    est = ScaleEstimator("depth").update(seq.stamps[1], seq.stamps[0], maps, T, depth1=depth)
    assert est.source == "depth" and est.n_pixels == H * W - 3 * W - 1
    assert est.scale == pytest.approx(0.37, rel=1e-5)


def test_depth_at_input_resolution_is_sampled_at_output_pixel_centres():
    seq = Sequence(2, seed=2)
    maps, T = seq.pair(1, 0, lam=2.0)
    depth_in = np.repeat(np.repeat(seq.depth[1], 2, 0), 2, 1)     # input image twice the output size
    est = ScaleEstimator("depth").update(seq.stamps[1], seq.stamps[0], maps, T, depth1=depth_in)
    assert est.scale == pytest.approx(2.0, rel=1e-5)
    np.testing.assert_array_equal(resize_nearest(depth_in, H, W), seq.depth[1])


def test_depth_of_a_wider_camera_is_cut_to_the_engine_crop():
    """A depth image of a wider camera than the network's aspect: only its centre crop (what the engine saw) counts;
    garbage in the cropped-off sides changes nothing."""
    seq = Sequence(2, seed=2)
    maps, T = seq.pair(1, 0, lam=2.0)
    side = W // 2
    depth_in = np.concatenate([np.full((H, side), 1e3), seq.depth[1], np.full((H, side), 1e3)], axis=1)
    est = ScaleEstimator("depth").update(seq.stamps[1], seq.stamps[0], maps, T, depth1=depth_in)
    assert est.scale == pytest.approx(2.0, rel=1e-5)


def test_depth_with_noise_is_within_5_percent():
    seq = Sequence(2, seed=3)
    maps, T = seq.pair(1, 0, lam=0.8)
    noisy = seq.depth[1] * (1 + seq.rng.normal(0, 0.05, (H, W)))
    noisy[seq.rng.random((H, W)) < 0.1] = 50.0                      # 10% gross outliers
    est = ScaleEstimator("depth").update(seq.stamps[1], seq.stamps[0], maps, T, depth1=noisy)
    assert abs(est.scale / 0.8 - 1) < 0.05


def test_chain_gives_one_scale_along_the_sequence_without_drift():
    """Pairs (i, i-2) for every second frame (each new I2 is the previous I1), each pair in a random model scale:
    chained factors make every pair metric up to the first pair's factor (the chain's one unknown), so the scale
    relative to truth stays constant over 50 pairs."""
    seq = Sequence(102, seed=4)
    est = ScaleEstimator("chain")
    ratios, lams = [], []
    for i in range(2, 102, 2):
        lam = float(seq.rng.uniform(0.2, 5.0))
        maps, T = seq.pair(i, i - 2, lam)
        e = est.update(seq.stamps[i], seq.stamps[i - 2], maps, T)
        ratios.append(e.scale / lam)          # estimated / true metres per unit
        assert e.source == ("initial" if i == 2 else "chain")
        lams.append(lam)
    ratios = np.array(ratios)
    assert ratios[0] == pytest.approx(1 / lams[0], rel=1e-12)     # the first pair anchors the chain (initial 1.0)
    np.testing.assert_allclose(ratios / ratios[0], 1.0, rtol=1e-5)
    assert est.chain_breaks == 0


def test_chain_drift_with_noisy_maps_is_bounded():
    """2% per-pixel noise in every pair: the median keeps the 50-pair drift well under 5%."""
    seq = Sequence(52, seed=5)
    est = ScaleEstimator("chain")
    ratios = []
    for i in range(1, 51):
        lam = float(seq.rng.uniform(0.5, 2.0))
        maps, T = seq.pair(i, i - 1, lam)
        for name in maps:
            maps[name] = maps[name] * (1 + seq.rng.normal(0, 0.02, (H, W, 1))).astype(np.float32)
        ratios.append(est.update(seq.stamps[i], seq.stamps[i - 1], maps, T).scale / lam)
    drift = abs(ratios[-1] / ratios[0] - 1)
    print(f"chain scale drift over 50 noisy pairs: {drift:.4f}")
    assert drift < 0.05


def test_chain_anchored_by_initial_scale_and_held_across_a_gap():
    seq = Sequence(10, seed=6)
    est = ScaleEstimator("chain", initial_scale=0.5)
    maps, T = seq.pair(1, 0, lam=1.0)
    assert est.update(seq.stamps[1], seq.stamps[0], maps, T).scale == 0.5
    maps, T = seq.pair(2, 1, lam=4.0)                  # shares frame 1: 0.5 m/unit of the old scale * 4
    assert est.update(seq.stamps[2], seq.stamps[1], maps, T).scale == pytest.approx(2.0, rel=1e-6)
    maps, T = seq.pair(9, 8, lam=1.0)                  # no shared frame: hold, never jump
    e = est.update(seq.stamps[9], seq.stamps[8], maps, T)
    assert (e.source, e.scale, est.chain_breaks) == ("hold", pytest.approx(2.0, rel=1e-6), 1)
    est.reset()
    assert est.update(seq.stamps[9], seq.stamps[8], maps, T).source == "initial"


def test_depth_falls_back_to_chain_when_a_depth_image_is_missing():
    seq = Sequence(4, seed=7)
    est = ScaleEstimator("depth")
    maps, T = seq.pair(1, 0, lam=3.0)
    assert est.update(seq.stamps[1], seq.stamps[0], maps, T, depth1=seq.depth[1]).scale == pytest.approx(3.0)
    maps, T = seq.pair(2, 1, lam=0.5)
    e = est.update(seq.stamps[2], seq.stamps[1], maps, T, depth1=None)
    assert e.source == "chain" and e.scale == pytest.approx(0.5, rel=1e-5) and est.depth_misses == 1


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="scale_source 'metric' unknown"):
        ScaleEstimator("metric")
    with pytest.raises(ValueError, match="fixed_scale"):
        ScaleEstimator("fixed", fixed_scale=0.0)
    seq = Sequence(2)
    maps, T = seq.pair(1, 0, 1.0)
    with pytest.raises(ValueError, match="depth image must be"):
        ScaleEstimator("depth").update(1.0, 0.9, maps, T, depth1=np.ones((H, W, 3)))
    with pytest.raises(ValueError, match="lack 'p1_t1_pi1'"):
        ScaleEstimator("chain").update(1.0, 0.9, {}, T)
    assert np.isnan(median_ratio(np.zeros(3), np.ones(3))[0])


def _normalised(pair: dict) -> tuple[dict, np.ndarray, float]:
    """A synthetic pair the way a network gives it: all maps divided by one factor (the mean distance of the valid
    points of P1(t1,π1), the paper's per-pair normalisation); returns (maps, T_c1_c2 in those units, factor)."""
    valid = pair["valid1"]
    lam = float(np.linalg.norm(pair["p1_t1_pi1"][valid], axis=-1).mean())
    maps = {k: np.where(np.isfinite(pair[k]), pair[k] / lam, np.nan).astype(np.float32)
            for k in ("p1_t1_pi1", "p2_t2_pi1")}
    T = np.linalg.inv(pair["T_w_c1"]) @ pair["T_w_c2"]
    T[:3, 3] /= lam
    return maps, T, lam


@pytest.fixture(scope="module")
def synthetic_sequence():
    from dpm_ros import synthetic
    return synthetic.SyntheticSequence(seed=3, n_frames=21, fps=10.0, height=36, width=48, n_objects=3,
                                       renderer="numpy")


def test_depth_and_chain_on_a_synthetic_sequence_give_the_metric_trajectory(synthetic_sequence):
    """Pairs (i, i-1) of a dynamic synthetic sequence, each in its own model units. `depth` (ground-truth depth of
    I1) and `chain` (anchored by the first pair's true factor) both recover metres per unit for every pair, so the
    camera trajectory's length comes out in metres."""
    seq = synthetic_sequence
    depth, chain = ScaleEstimator("depth"), None
    true_len = depth_len = chain_len = 0.0
    for i in range(1, len(seq)):
        pair = seq.pair(i, i - 1)
        maps, T, lam = _normalised(pair)
        if chain is None:
            chain = ScaleEstimator("chain", initial_scale=lam)
        s_depth = depth.update(pair["t1"], pair["t2"], maps, T, depth1=seq.frame(i)["depth"])
        s_chain = chain.update(pair["t1"], pair["t2"], maps, T)
        assert s_depth.source == "depth" and s_depth.scale == pytest.approx(lam, rel=1e-4)
        assert s_chain.scale == pytest.approx(lam, rel=1e-4)
        step = np.linalg.norm(T[:3, 3])
        true_len += step * lam
        depth_len += step * s_depth.scale
        chain_len += step * s_chain.scale
    assert true_len > 0.05
    assert abs(depth_len / true_len - 1) < 1e-4 and abs(chain_len / true_len - 1) < 1e-4
    assert chain.chain_breaks == 0


def test_pipeline_with_depth_scale_gives_metric_ego_motion_and_objects(synthetic_sequence):
    """The node's integration path: an engine answering in per-pair model units (ground truth / λ), the pipeline,
    ScaleEstimator('depth') on the result with the ground-truth depth of I1, then scale_result: the ego translation
    and the object motions come out in metres (= the metric pipeline's), rotations untouched."""
    from dpm_ros import ALL_POINT_MAP_NAMES
    from dpm_ros.engine.oracle import OracleEngine
    from dpm_ros.pipeline import DPMPipeline, Frame
    from dpm_ros.stream.scale import scale_result

    seq = synthetic_sequence

    class ModelUnits(OracleEngine):
        def infer(self, img1, img2):
            out = super().infer(img1, img2)
            lam = 0.5 + 0.1 * self.frame_index(img1)          # a different unit for every pair
            return {k: (v / lam if k in ALL_POINT_MAP_NAMES else v) for k, v in out.items()}

    metric_pipe = DPMPipeline(OracleEngine(seq))
    unit_pipe = DPMPipeline(ModelUnits(seq))
    est = ScaleEstimator("depth")
    for i in (3, 6):
        f1, f2 = (Frame(image=seq.frame(k)["image"], stamp=seq.stamp(k), K=seq.K) for k in (i, i - 2))
        metric = metric_pipe.process(f1, f2)
        raw = unit_pipe.process(f1, f2)
        e = est.update(f1.stamp, f2.stamp, raw.maps, raw.T_c1_c2, depth1=seq.frame(i)["depth"])
        assert e.scale == pytest.approx(0.5 + 0.1 * i, rel=1e-5)
        scaled = scale_result(raw, e.scale)
        np.testing.assert_allclose(scaled.T_c1_c2, metric.T_c1_c2, atol=1e-5)
        np.testing.assert_allclose(scaled.maps["p1_t2_pi1"], metric.maps["p1_t2_pi1"], rtol=1e-5, equal_nan=True)
        assert len(scaled.objects) == len(metric.objects) > 0
        for a, b in zip(scaled.objects, metric.objects):
            np.testing.assert_allclose(a.t, b.t, atol=1e-5)
            np.testing.assert_allclose(a.R, b.R, atol=1e-6)
            np.testing.assert_allclose(a.extent, b.extent, rtol=1e-5)
    with pytest.raises(ValueError, match="scale must be"):
        scale_result(raw, float("nan"))


def test_shape_ratio_is_the_scale_between_two_rigidly_moved_copies():
    """‖X − c‖ ratios do not change under rotation and translation: the factor between a frame's shape in two
    frames of reference is exact; NaN / z ≤ 0 pixels are left out; no valid pixel gives NaN."""
    X = _backproject(np.random.default_rng(1).uniform(2.0, 8.0, (H, W)))
    moved = (X @ _rot([1, 2, 3], 0.7).T + [3.0, -1.0, 20.0]) / 2.5
    moved[0, :5] = np.nan
    ratio, n = shape_ratio(X, moved)
    assert ratio == pytest.approx(2.5, rel=1e-9) and 0.7 * H * W < n < H * W - 5
    assert np.isnan(shape_ratio(X, np.full_like(X, np.nan))[0])
    with pytest.raises(ValueError, match="point maps"):
        shape_ratio(X, X[..., :2])


def test_chain_does_not_depend_on_the_ego_motion_estimate():
    """The chain compares each shared frame's shape, never its pose: a pair whose T_c1_c2 translation is 70× off
    (a poor network's ego-motion) still gets the exact factor."""
    seq = Sequence(8, seed=7)
    est = ScaleEstimator("chain")
    for i in range(2, 8, 2):
        lam = float(seq.rng.uniform(0.3, 3.0))
        maps, T = seq.pair(i, i - 2, lam)
        T[:3, 3] *= 70.0
        e = est.update(seq.stamps[i], seq.stamps[i - 2], maps, T)
        if i == 2:
            first = lam
        else:
            assert e.source == "chain" and e.scale == pytest.approx(lam / first, rel=1e-5)


def test_chain_cancels_a_bias_between_first_and_second_image_roles():
    """A network that sizes the second image of a pair 6% larger than the first (in both passes): with the
    symmetric engine's second pass the chain compares frames in the same role and stays exact over 25 pairs;
    with pass 1 alone the bias compounds (1/1.06 per pair)."""
    seq = Sequence(52, seed=8)
    beta = 1.06
    sym, single = ScaleEstimator("chain"), ScaleEstimator("chain")
    r_sym, r_single = [], []
    for i in range(2, 52, 2):
        lam, lam2 = (float(v) for v in seq.rng.uniform(0.3, 3.0, 2))
        maps, T = seq.pair(i, i - 2, lam)
        maps["p2_t2_pi1"] = maps["p2_t2_pi1"] * np.float32(beta)
        back, _ = seq.pair(i - 2, i, lam2)            # the second pass: image 2 first
        pass2 = {"p2_t2_pi2": back["p1_t1_pi1"], "p1_t1_pi2": back["p2_t2_pi1"] * np.float32(beta)}
        r_sym.append(sym.update(seq.stamps[i], seq.stamps[i - 2], {**maps, **pass2}, T).scale / lam)
        r_single.append(single.update(seq.stamps[i], seq.stamps[i - 2], maps, T).scale / lam)
    np.testing.assert_allclose(np.array(r_sym) / r_sym[0], 1.0, rtol=1e-5)
    assert r_single[-1] / r_single[0] == pytest.approx(beta ** -24, rel=1e-4)
