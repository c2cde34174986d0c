"""DPMPipeline end to end on synthetic ground truth served by the oracle engine: ego-motion, intrinsics, masks,
objects and flows equal the truth; fallbacks (non-symmetric engine, learned mask, confidence threshold); errors."""
import numpy as np
import pytest

from dpm_ros.config import Config, ConfigError
from dpm_ros.engine.oracle import OracleEngine
from dpm_ros.geometry import rotation_angle_deg, sampling_step
from dpm_ros.pipeline import DPMPipeline, DPMResult, Frame
from dpm_ros.synthetic import SyntheticSequence

EXACT = Config(eps_rel=1e-4, min_object_pixels=20)          # ground-truth maps: any motion above float noise counts


@pytest.fixture(scope="module")
def seq():
    return SyntheticSequence(seed=1, n_frames=4, height=96, width=128, fps=10.0)


@pytest.fixture(scope="module")
def frames(seq):
    return [Frame(image=seq.frame(i)["image"], stamp=seq.stamp(i)) for i in range(len(seq))]


def _truth(seq, i, j):
    gt = seq.pair(i, j)
    return gt, np.linalg.inv(gt["T_w_c1"]) @ gt["T_w_c2"]


def _assert_pose(T_est, T, rot_deg=1e-4, rel=1e-5):
    assert rotation_angle_deg(T_est[:3, :3].T @ T[:3, :3]) <= rot_deg
    assert np.linalg.norm(T_est[:3, 3] - T[:3, 3]) <= rel * np.linalg.norm(T[:3, 3])


def test_pipeline_recovers_ground_truth(seq, frames):
    res = DPMPipeline(OracleEngine(seq), EXACT).process(frames[3], frames[1])
    gt, T = _truth(seq, 3, 1)
    assert isinstance(res, DPMResult) and res.ego_method == "pixel_aligned"
    _assert_pose(res.T_c1_c2, T)
    assert res.pass2_scale == pytest.approx(1.0, rel=1e-5)
    assert res.dt == pytest.approx(seq.stamp(1) - seq.stamp(3))
    assert res.focal == pytest.approx(gt["K"][0, 0], rel=1e-5)
    np.testing.assert_allclose(res.K, gt["K"], rtol=1e-5)
    v1, v2 = gt["valid1"], gt["valid2"]
    np.testing.assert_array_equal(res.motion_mask1[v1], gt["moving1"][v1])
    np.testing.assert_array_equal(res.motion_mask2[v2], gt["moving2"][v2])
    assert res.labels1.dtype == np.uint16 and res.labels1.shape == (96, 128)
    assert len(res.objects) >= 2
    for o in res.objects:
        ids, counts = np.unique(gt["instances1"][res.labels1 == o.id], return_counts=True)
        k = ids[np.argmax(counts)]
        assert k > 0 and counts.max() == o.n_points                       # one object per label
        M = np.linalg.inv(gt["T_w_c1"]) @ gt["object_motions"][k] @ gt["T_w_c1"]
        _assert_pose(np.block([[o.R, o.t[:, None]], [0, 0, 0, 1]]), M)
        pts = gt["p1_t1_pi1"][res.labels1 == o.id]
        np.testing.assert_allclose(o.centroid, pts.mean(axis=0), rtol=1e-5)
        assert np.all(o.extent > 0) and o.confidence == pytest.approx(1.0)
    assert set(res.flows) == {"object_forward", "object_backward", "scene_forward", "scene_backward"}
    np.testing.assert_allclose(res.flows["object_forward"], gt["p1_t2_pi1"] - gt["p1_t1_pi1"], atol=1e-6)
    np.testing.assert_allclose(res.flows["scene_backward"], gt["p2_t1_pi1"] - gt["p2_t2_pi2"], atol=1e-5)
    assert {"inference", "intrinsics", "ego_motion", "flows_and_masks", "objects", "geometry", "total"} <= set(
        res.timings)


def test_subsampled_fits_equal_the_full_equations(seq, frames):
    """The pipeline's defaults (ego_stride, focal_stride, object_fit_points) give the same results as the full
    equations (stride 1, every object pixel) on consistent maps."""
    fast = DPMPipeline(OracleEngine(seq), EXACT).process(frames[3], frames[1])
    full = DPMPipeline(OracleEngine(seq), EXACT, ego_stride=1, focal_stride=1,
                       object_fit_points=0).process(frames[3], frames[1])
    np.testing.assert_allclose(fast.T_c1_c2, full.T_c1_c2, atol=1e-6)
    assert fast.focal == pytest.approx(full.focal, rel=1e-6)
    np.testing.assert_array_equal(fast.labels1, full.labels1)
    for a, b in zip(fast.objects, full.objects):
        np.testing.assert_allclose(a.R, b.R, atol=1e-6)
        np.testing.assert_allclose(a.t, b.t, atol=1e-6)
        np.testing.assert_allclose(a.extent, b.extent)


def test_given_K_is_used_and_focal_still_reported(seq, frames):
    K = seq.K.copy()
    K[0, 0] *= 1.01                                                        # a slightly different calibration
    res = DPMPipeline(OracleEngine(seq)).process(Frame(frames[2].image, frames[2].stamp, K), frames[0])
    np.testing.assert_allclose(res.K, K)
    assert res.focal == pytest.approx(seq.K[0, 0], rel=1e-5)


def test_single_pass_engine_falls_back_to_pnp(seq, frames):
    res = DPMPipeline(OracleEngine(seq, symmetric=False), EXACT).process(frames[3], frames[0])
    _, T = _truth(seq, 3, 0)
    assert res.ego_method == "pnp" and res.pass2_scale == 1.0
    _assert_pose(res.T_c1_c2, T)
    assert set(res.flows) == {"object_forward", "object_backward"}


def test_seed_form_through_the_pipeline(seq, frames):
    res = DPMPipeline(OracleEngine(seq), Config(ego_method="seed")).process(frames[3], frames[1])
    _, T = _truth(seq, 3, 1)
    assert res.ego_method == "matched"                                   # nearest-neighbour matches: approximate,
    step = sampling_step(res.maps["p1_t1_pi1"])                          # within a fraction of the sampling step
    assert rotation_angle_deg(res.T_c1_c2[:3, :3].T @ T[:3, :3]) < 0.3
    assert np.linalg.norm(res.T_c1_c2[:3, 3] - T[:3, 3]) < 0.5 * step


def test_learned_mask_and_confidence_threshold(seq, frames):
    gt, _ = _truth(seq, 3, 1)
    res = DPMPipeline(OracleEngine(seq), Config(use_learned_mask=True)).process(frames[3], frames[1])
    np.testing.assert_array_equal(res.motion_mask1, gt["moving1"])      # the engine's motion_prob_1 > 0.5

    class LowConf(OracleEngine):
        def infer(self, img1, img2):
            out = super().infer(img1, img2)
            out["conf_p1_t1_pi1"] = out["conf_p1_t1_pi1"].copy()
            out["conf_p1_t1_pi1"][:, :64] = 0.01                          # left half: below the threshold
            return out

    res = DPMPipeline(LowConf(seq), EXACT.replace(conf_threshold=0.5)).process(frames[3], frames[1])
    assert not res.motion_mask1[:, :64].any() and not res.labels1[:, :64].any()
    assert np.isnan(res.maps["p1_t1_pi1"][:, :64]).all()


def test_a_pairs_absolute_threshold_is_an_argument_not_a_mutation(seq, frames):
    """eps_abs (model units) comes per pair through process(): the node converts its metres with the pair's expected
    scale; the pipeline's configuration stays as built."""
    pipe = DPMPipeline(OracleEngine(seq), EXACT)
    moving = pipe.process(frames[3], frames[1]).motion_mask1.sum()
    still = pipe.process(frames[3], frames[1], eps_abs=1e6).motion_mask1.sum()     # nothing moves 10⁶ units
    assert moving > 100 and still == 0
    assert pipe.config == EXACT and pipe.process(frames[3], frames[1]).motion_mask1.sum() == moving
    with pytest.raises(ValueError, match="eps_abs"):
        pipe.process(frames[3], frames[1], eps_abs=-1.0)


def test_bad_parameters_and_frames():
    """The pipeline takes only a Config (checked when built, so no second check here) and its cost knobs."""
    with pytest.raises(ConfigError, match="ego_method"):
        Config(ego_method="icp")
    with pytest.raises(ConfigError, match="eps_abs"):
        Config(eps_abs=-1.0)
    with pytest.raises(TypeError, match="Config"):
        DPMPipeline(None, {"eps_rel": 0.5})
    with pytest.raises(ValueError, match="ego_stride"):
        DPMPipeline(None, ego_stride=0)
    pipe = DPMPipeline(None)
    assert pipe.config == Config()                                         # the table's defaults, nothing else
    with pytest.raises(ValueError, match="uint8"):
        pipe.process(Frame(np.zeros((8, 8, 3), np.float32), 0.0), Frame(np.zeros((8, 8, 3), np.uint8), 0.1))
