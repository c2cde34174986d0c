"""Motions, objects and flow against make_pair ground truth with ~30% dynamic pixels (dpm_theory.md §4–6)."""
import numpy as np
import pytest

from dpm_ros.geometry import (ego_motion, ego_motion_matched, ego_motion_pixel_aligned, ego_motion_pnp,
                              motion_in_world, object_flow, object_motion, rotation_angle_deg, sampling_step,
                              scene_flow, split_objects)
from dpm_ros.synthetic import make_pair

from dynamic_pairs import dynamic_pair  # test/dynamic_pairs.py

REL, ROT_DEG = 1e-5, 1e-4                                        # the ground-truth tolerances


@pytest.fixture(scope="module")
def pair():
    return dynamic_pair()


@pytest.fixture(scope="module")
def truth(pair):
    """Camera 2 → camera 1 (4×4) from the ground-truth camera-to-world poses."""
    return np.linalg.inv(pair["T_w_c1"]) @ pair["T_w_c2"]


def _assert_motion(rot, t, T, rel=REL, rot_deg=ROT_DEG):
    assert rotation_angle_deg(rot.T @ T[:3, :3]) <= rot_deg
    assert np.linalg.norm(t - T[:3, 3]) <= rel * np.linalg.norm(T[:3, 3])


def _scaled(pair, s2):
    """The pair as a network would give it: pass 2 (…_pi2 maps) in a scale of its own."""
    return {k: (v * np.float32(s2) if k.endswith("_pi2") else v) for k, v in pair.items() if k.startswith("p")}


# --- §4 ego-motion ------------------------------------------------------------------------------------------------
def test_pixel_aligned_recovers_ego_motion_with_moving_pixels(pair, truth):
    assert np.linalg.norm(truth[:3, 3]) > 0.05
    rot, t, s = ego_motion_pixel_aligned(pair)
    _assert_motion(rot, t, truth)
    assert s == pytest.approx(1.0, rel=REL)
    rot4, t4, _ = ego_motion_pixel_aligned(pair, stride=4)        # the pipeline's subsampled fit: same motion
    _assert_motion(rot4, t4, truth)


def test_pixel_aligned_is_sim3_across_passes(pair, truth):
    rot, t, s = ego_motion_pixel_aligned(_scaled(pair, 1 / 2.7))   # pass 1 = 2.7 × pass 2
    assert s == pytest.approx(2.7, rel=REL)
    _assert_motion(rot, t, truth)                                   # SE(3) reported in pass-1 units
    rot, t, s = ego_motion_pixel_aligned({k: v * np.float32(0.5) for k, v in _scaled(pair, 1 / 2.7).items()})
    assert s == pytest.approx(2.7, rel=REL) and np.allclose(t, 0.5 * truth[:3, 3], rtol=0, atol=REL)


def test_pnp_single_pass_recovers_ego_motion(pair, truth):
    single = {k: v for k, v in pair.items() if k.startswith("p") and k.endswith("pi1")}   # pass 1 only
    rot, t, s = ego_motion_pnp(single, pair["K"])
    _assert_motion(rot, t, truth)
    assert s == 1.0


def test_seed_form_agrees_with_pixel_aligned(pair, truth):
    """The seed form matches image 2 to image 1 by nearest neighbours in 3D, which are neighbouring surface samples
    (not the same point): it agrees to a fraction of the sampling step, and exactly where matches are exact."""
    rot_pa, t_pa, _ = ego_motion_pixel_aligned(pair)
    rot, t, s = ego_motion_matched(_scaled(pair, 1 / 2.7))
    step = sampling_step(pair["p1_t1_pi1"])
    assert rotation_angle_deg(rot.T @ rot_pa) < 0.2
    assert np.linalg.norm(t - t_pa) < 0.5 * step
    assert s == pytest.approx(2.7, rel=5e-3)
    # exact correspondences (image 1's points include image 2's, all at t1 in camera 1): exact recovery
    exact = dict(pair)
    exact["p1_t1_pi1"] = np.concatenate([pair["p1_t1_pi1"], pair["p2_t1_pi1"]], axis=0)
    rot, t, _ = ego_motion_matched(exact, max_dist=None)
    _assert_motion(rot, t, truth)


def test_ego_motion_dispatch_and_ransac_with_20_percent_outliers(pair, truth):
    rng = np.random.default_rng(0)
    bad = dict(pair)
    for name in ("p2_t2_pi1", "p1_t1_pi1"):
        m = pair[name].copy()
        out = rng.random(m.shape[:2]) < 0.2
        m[out] += rng.normal(scale=1.0, size=(out.sum(), 3)).astype(np.float32)
        bad[name] = m
    rot, _, _ = ego_motion(bad, method="pixel_aligned")
    assert rotation_angle_deg(rot.T @ truth[:3, :3]) > 1e-2        # least squares is pulled off ...
    rot, t, _ = ego_motion(bad, method="pixel_aligned", ransac_threshold=1e-3)
    _assert_motion(rot, t, truth)                                   # ... its RANSAC form is exact again
    rot, t, _ = ego_motion(bad, method="pnp", K=pair["K"])          # solvePnPRansac: image-2 outliers
    _assert_motion(rot, t, truth)
    with pytest.raises(ValueError, match="needs K"):
        ego_motion(pair, method="pnp")
    with pytest.raises(ValueError, match="unknown method"):
        ego_motion(pair, method="icp")
    with pytest.raises(ValueError, match="symmetric pass"):
        ego_motion({k: v for k, v in pair.items() if not k.endswith("pi2")}, method="pixel_aligned")


# --- §5 object motion and masks -------------------------------------------------------------------------------------
def test_object_motion_recovers_every_object(pair):
    checked = 0
    for k, M_w in pair["object_motions"].items():
        mask = pair["instances1"] == k
        if mask.sum() < 20:
            continue
        rot, t = object_motion(pair["p1_t1_pi1"], pair["p1_t2_pi1"], mask)
        M_c = np.linalg.inv(pair["T_w_c1"]) @ M_w @ pair["T_w_c1"]          # the same motion in camera 1
        _assert_motion(rot, t, M_c)
        np.testing.assert_allclose(motion_in_world(rot, t, pair["T_w_c1"]), M_w, atol=1e-5)
        checked += 1
    assert checked >= 2
    with pytest.raises(ValueError, match="mask is empty"):
        object_motion(pair["p1_t1_pi1"], pair["p1_t2_pi1"], np.zeros((96, 128), bool))
    with pytest.raises(ValueError, match="expected a mask of shape"):
        object_motion(pair["p1_t1_pi1"], pair["p1_t2_pi1"], np.ones((96, 127), bool))


def test_split_objects_recovers_instances_of_separate_objects():
    for seed in (1, 2, 3):                                            # scenes whose objects do not touch
        p = make_pair(seed, 96, 128, 3)
        labels = split_objects(p["moving1"], p["p1_t1_pi1"], min_size=20)
        inst = p["instances1"]
        big = [k for k in np.unique(inst[inst > 0]) if (inst == k).sum() >= 100]
        for lab in range(1, labels.max() + 1):
            ids = np.unique(inst[labels == lab])
            assert len(ids) == 1 and ids[0] > 0                       # every label is one object ...
        for k in big:                                                 # ... and each sizeable object is labelled
            ids, counts = np.unique(labels[inst == k], return_counts=True)
            assert ids[np.argmax(counts)] > 0 and counts.max() >= 0.9 * (inst == k).sum(), (seed, k)


def test_split_objects_splits_by_depth_and_drops_small():
    h, w = 20, 30
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    z = np.where(u < 15, 2.0, 5.0)                                   # two planes, touching in the image
    pts = np.stack([(u - 14.5) / 20 * z, (v - 9.5) / 20 * z, z], -1)
    mask = np.zeros((h, w), bool)
    mask[2:18, 5:25] = True
    mask[0, 0] = True                                                # a 1-pixel blob: dropped
    labels = split_objects(mask, pts, min_size=5, max_gap=0.05)
    assert labels.max() == 2 and labels[0, 0] == 0
    assert set(np.unique(labels[2:18, 5:15])) == {1} or set(np.unique(labels[2:18, 5:15])) == {2}
    assert len(set(np.unique(labels[2:18, 15:25])) | set(np.unique(labels[2:18, 5:15]))) == 2
    assert (labels > 0).sum() == 16 * 20                              # every pixel of both planes is labelled
    one = split_objects(mask, pts, min_size=5, max_gap=10.0)          # a generous gap keeps one component
    assert one.max() == 1
    with pytest.raises(ValueError, match="max_gap"):
        split_objects(mask, pts, max_gap=0)
    for shape in ((1, 6), (6, 1), (1, 1)):                            # single rows/columns have pairs one way only
        flat = np.dstack([np.zeros(shape), np.zeros(shape), np.ones(shape)])
        assert split_objects(np.ones(shape, bool), flat, min_size=1).max() == 1
    assert split_objects(np.zeros((h, w), bool), pts).max() == 0


# --- §6 flow --------------------------------------------------------------------------------------------------------
def test_object_flow_is_object_motion_and_zero_on_static(pair):
    f = object_flow(pair, dt=pair["t2"] - pair["t1"])
    fwd, bwd = f["forward"], f["backward"]
    static1 = pair["valid1"] & ~pair["moving1"]
    assert np.abs(fwd[static1]).max() == 0 and np.abs(bwd[pair["valid2"] & ~pair["moving2"]]).max() == 0
    k = max(pair["object_motions"], key=lambda k: (pair["instances1"] == k).sum())
    M_c = np.linalg.inv(pair["T_w_c1"]) @ pair["object_motions"][k] @ pair["T_w_c1"]
    p = pair["p1_t1_pi1"][pair["instances1"] == k].astype(np.float64)
    expected = (p @ M_c[:3, :3].T + M_c[:3, 3] - p) / (pair["t2"] - pair["t1"])
    np.testing.assert_allclose(fwd[pair["instances1"] == k], expected, atol=1e-4)


def test_scene_flow_contains_camera_motion(pair, truth):
    s = scene_flow(_scaled(pair, 1 / 2.7), pass2_scale=2.7)
    static1 = pair["valid1"] & ~pair["moving1"]
    p = pair["p1_t1_pi1"][static1].astype(np.float64)
    inv = np.linalg.inv(truth)                                         # static point: P1(t2,π2) = T_c2_c1 P1(t1,π1)
    np.testing.assert_allclose(s["forward"][static1], p @ inv[:3, :3].T + inv[:3, 3] - p, atol=1e-4)
    static2 = pair["valid2"] & ~pair["moving2"]
    q = pair["p2_t2_pi2"][static2].astype(np.float64)                  # static: P2(t1,π1) = T_c1_c2 P2(t2,π2)
    np.testing.assert_allclose(s["backward"][static2], q @ truth[:3, :3].T + truth[:3, 3] - q, atol=1e-4)
    with pytest.raises(ValueError, match="p1_t2_pi2"):
        scene_flow({k: v for k, v in pair.items() if k != "p1_t2_pi2"})
    with pytest.raises(ValueError, match="dt"):
        object_flow(pair, dt=0.0)
