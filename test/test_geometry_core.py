"""Geometry building blocks against synthetic ground truth (dpm_theory.md §1–3, Umeyama): intrinsics, motion masks,
nearest neighbours, weighted SE(3)/Sim(3) Procrustes and its RANSAC wrapper; and the documented ValueErrors."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from dpm_ros.geometry import (displacement_mask, estimate_focal, image_centre, motion_mask, nearest_neighbours,
                              project, rotation_angle_deg, scale_intrinsics, umeyama, umeyama_ransac)

from dynamic_pairs import dynamic_pair  # test/dynamic_pairs.py

@pytest.fixture(scope="module")
def pair():
    return dynamic_pair()


def _random_motion(rng, scale=1.0):
    rot = Rotation.from_rotvec(rng.normal(size=3) * 0.3).as_matrix()
    return rot, rng.normal(size=3), scale


# --- §1 intrinsics ------------------------------------------------------------------------------------------------
def test_estimate_focal_recovers_K_of_every_map(pair):
    f_true = pair["K"][0, 0]
    assert pair["K"][0, 2] == pytest.approx((128 - 1) / 2) and pair["K"][1, 2] == pytest.approx((96 - 1) / 2)
    for name in ("p1_t1_pi1", "p2_t2_pi2"):
        assert estimate_focal(pair[name]) == pytest.approx(f_true, rel=1e-5)
    assert estimate_focal(pair["p1_t1_pi1"], stride=3) == pytest.approx(f_true, rel=1e-5)


def test_estimate_focal_is_robust_and_weighted(pair):
    pts = pair["p1_t1_pi1"].copy()
    rng = np.random.default_rng(0)
    bad = rng.random(pts.shape[:2]) < 0.1                       # 10% gross outliers: wrong direction entirely
    pts[bad] = pts[bad] * np.array([1.7, -0.4, 1.0], np.float32)
    f_true = pair["K"][0, 0]
    ls_only = estimate_focal(pts, iterations=0)
    robust = estimate_focal(pts)
    assert abs(ls_only / f_true - 1) > 1e-2                     # least squares alone is pulled away ...
    assert abs(robust / f_true - 1) < 2e-3                      # ... Weiszfeld is not
    conf = np.where(bad, 1e-9, 1.0)
    assert estimate_focal(pts, conf=conf) == pytest.approx(f_true, rel=1e-5)


def test_estimate_focal_with_off_centre_principal_point():
    h, w, f, cx, cy = 40, 60, 70.0, 25.3, 22.1
    v, u = np.mgrid[0:h, 0:w].astype(float)
    z = 2.0 + 0.01 * u
    pts = np.stack([(u - cx) / f * z, (v - cy) / f * z, z], -1)
    assert estimate_focal(pts, principal_point=(cx, cy)) == pytest.approx(f, rel=1e-9)
    uv = project(pts, [[f, 0, cx], [0, f, cy], [0, 0, 1]])
    np.testing.assert_allclose(uv, np.stack([u, v], -1), atol=1e-9)


def test_scale_intrinsics_maps_pixel_edges():
    K = np.array([[100.0, 0, (64 - 1) / 2], [0, 100.0, (48 - 1) / 2], [0, 0, 1]])
    K2 = scale_intrinsics(K, (48, 64), (96, 128))
    assert K2[0, 0] == 200.0 and (K2[0, 2], K2[1, 2]) == image_centre(96, 128)


# --- §2 motion masks ----------------------------------------------------------------------------------------------
def test_motion_mask_equals_definition_and_ground_truth(pair):
    a, b = pair["p1_t1_pi1"], pair["p1_t2_pi1"]
    got = motion_mask(a, b, eps_rel=0.02)
    with np.errstate(invalid="ignore"):
        ref = np.linalg.norm(a - b, axis=-1) > 0.02 * np.linalg.norm(a, axis=-1)
    np.testing.assert_array_equal(got, ref)                     # the sqrt-free form equals the equation
    m = motion_mask(a, b, eps_rel=1e-4)                         # ground truth: every moving pixel, no static one
    np.testing.assert_array_equal(m[pair["valid1"]], pair["moving1"][pair["valid1"]])
    np.testing.assert_array_equal(displacement_mask(b - a, a, eps_rel=0.02), got)   # same test from a flow
    m2 = motion_mask(pair["p2_t1_pi1"], pair["p2_t2_pi1"], eps_abs=1e-3)
    np.testing.assert_array_equal(m2[pair["valid2"]], pair["moving2"][pair["valid2"]])


def test_motion_mask_excludes_invalid_pixels():
    a = np.ones((2, 3, 3), np.float32)
    b = a + 1
    a[0, 0], b[0, 1], b[0, 2] = np.nan, np.inf, np.nan
    m = motion_mask(a, b, eps_abs=0.5)
    assert m.shape == (2, 3) and not m[0].any() and m[1].all()


# --- §3 correspondences -------------------------------------------------------------------------------------------
def test_nearest_neighbours_options():
    rng = np.random.default_rng(1)
    ref = rng.random((500, 3))
    perm = rng.permutation(500)
    query = ref[perm] + rng.normal(scale=1e-6, size=(500, 3))
    np.testing.assert_array_equal(nearest_neighbours(query, ref), perm)
    np.testing.assert_array_equal(nearest_neighbours(query, ref, mutual=True), perm)
    far = np.vstack([query[:10], [[5.0, 5, 5]], [[np.nan, 0, 0]]])
    idx = nearest_neighbours(far, ref, max_dist=0.1)
    np.testing.assert_array_equal(idx[:10], perm[:10])
    assert idx[10] == -1 and idx[11] == -1
    # mutual: two queries near one reference point -> only the closer keeps it
    idx = nearest_neighbours(np.array([[0.0, 0, 0], [0.01, 0, 0]]), np.array([[0.001, 0, 0], [1.0, 0, 0]]),
                             mutual=True)
    np.testing.assert_array_equal(idx, [0, -1])


def test_nearest_neighbours_image_grid_shape(pair):
    idx = nearest_neighbours(pair["p1_t1_pi1"], pair["p1_t1_pi1"])
    assert idx.shape == (96, 128)
    flat = np.arange(96 * 128).reshape(96, 128)
    np.testing.assert_array_equal(idx[pair["valid1"]], flat[pair["valid1"]])


# --- Procrustes -----------------------------------------------------------------------------------------------------
def test_umeyama_se3_and_weights():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(200, 3))
    rot, t, _ = _random_motion(rng)
    dst = src @ rot.T + t
    r, tt, s = umeyama(src, dst)
    assert rotation_angle_deg(r.T @ rot) < 1e-8 and np.allclose(tt, t, atol=1e-10) and s == 1.0
    dst_bad = dst.copy()
    dst_bad[:20] += 5.0                                          # zero weight on corrupted points: exact again
    w = np.ones(200)
    w[:20] = 0
    r, tt, _ = umeyama(src, dst_bad, w)
    assert rotation_angle_deg(r.T @ rot) < 1e-8 and np.allclose(tt, t, atol=1e-10)
    dst_bad[20] = np.nan                                         # NaN rows are excluded, not propagated
    r, tt, _ = umeyama(src, dst_bad, w)
    assert np.allclose(tt, t, atol=1e-10)


def test_umeyama_sim3_recovers_scale_2_7():
    rng = np.random.default_rng(3)
    src = rng.normal(size=(100, 3))
    rot, t, _ = _random_motion(rng)
    dst = 2.7 * src @ rot.T + t
    r, tt, s = umeyama(src, dst, with_scale=True)
    assert s == pytest.approx(2.7, rel=1e-12)
    assert rotation_angle_deg(r.T @ rot) < 1e-8 and np.allclose(tt, t, atol=1e-10)


def test_umeyama_planar_points_give_a_rotation():
    rng = np.random.default_rng(4)
    src = np.c_[rng.normal(size=(50, 2)), np.zeros(50)]
    rot, t, _ = _random_motion(rng)
    r, tt, _ = umeyama(src, src @ rot.T + t)
    assert np.linalg.det(r) == pytest.approx(1.0) and rotation_angle_deg(r.T @ rot) < 1e-8


def test_umeyama_reflection_guard_planar_points_known_rotation():
    """Planar points leave the third singular vector's sign to the SVD: without Umeyama's det guard about half of
    these fits come out as a reflection (det −1). Every one must be the true rotation (known) and translation."""
    rng = np.random.default_rng(40)
    unguarded_would_reflect = 0
    for _ in range(40):
        src = np.c_[rng.normal(size=(30, 2)) * [2.0, 0.5], np.zeros(30)] @ Rotation.random(
            random_state=rng.integers(1 << 31)).as_matrix().T          # a plane through the origin, any orientation
        rot = Rotation.random(random_state=rng.integers(1 << 31)).as_matrix()
        t = rng.normal(size=3)
        dst = src @ rot.T + t
        r, tt, s = umeyama(src, dst)
        assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-9)
        assert rotation_angle_deg(r.T @ rot) < 1e-6 and np.allclose(tt, t, atol=1e-9) and s == 1.0
        u, _, vt = np.linalg.svd((dst - dst.mean(0)).T @ (src - src.mean(0)))
        unguarded_would_reflect += np.linalg.det(u) * np.linalg.det(vt) < 0
    assert unguarded_would_reflect >= 5                          # the cases above really exercise the guard


def test_umeyama_sim3_scale_is_least_squares_when_best_fit_is_a_reflection():
    """dst a mirror image of a flat slab: the best orthogonal fit is a reflection, so the proper rotation must flip
    the weakest axis (e₃ = −1), and the scale is then the least-squares scale for that rotation,
    s = Σ⟨dst_c, R src_c⟩ / Σ‖src_c‖² (Umeyama's (d·e)/σ², not Σd/σ²)."""
    rng = np.random.default_rng(41)
    src = rng.normal(size=(200, 3)) * [3.0, 2.0, 0.3]
    mirror = np.diag([1.0, 1.0, -1.0])
    rot0 = Rotation.from_rotvec([0.2, -0.1, 0.3]).as_matrix()
    dst = 1.7 * src @ (rot0 @ mirror).T + [1.0, 2.0, 3.0]
    r, tt, s = umeyama(src, dst, with_scale=True)
    assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-9)
    sc, dc = src - src.mean(0), dst - dst.mean(0)
    s_ls = float(np.sum(dc * (sc @ r.T)) / np.sum(sc ** 2))
    assert s == pytest.approx(s_ls, rel=1e-9)
    # the flipped thin axis costs scale: 1.7·(9 + 4 − 0.09)/(9 + 4 + 0.09) ≈ 1.677 in expectation (measured 1.6786)
    assert 1.66 < s < 1.69
    np.testing.assert_allclose(tt, dst.mean(0) - s * r @ src.mean(0), atol=1e-9)


def test_ransac_minimal_hypotheses_are_rotations():
    """RANSAC's 3-point samples are always planar: every batched minimal fit must be the true rotation, never a
    reflection."""
    from dpm_ros.geometry.procrustes import _batched_minimal_umeyama
    rng = np.random.default_rng(42)
    k = 64
    src = rng.normal(size=(k, 3, 3))
    rot = Rotation.random(k, random_state=43).as_matrix()
    t = rng.normal(size=(k, 3))
    dst = np.einsum("kij,knj->kni", rot, src) + t[:, None]
    r, tt, s = _batched_minimal_umeyama(src, dst, with_scale=False)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-9)
    assert rotation_angle_deg(np.einsum("kji,kjl->kil", r, rot)).max() < 1e-6
    np.testing.assert_allclose(tt, t, atol=1e-9)


def test_umeyama_ransac_with_20_percent_gross_outliers():
    rng = np.random.default_rng(5)
    src = rng.normal(size=(2000, 3)) * 3
    rot, t, _ = _random_motion(rng)
    dst = 2.7 * src @ rot.T + t
    out = rng.random(2000) < 0.2
    dst[out] += rng.normal(scale=2.0, size=(out.sum(), 3))
    r_plain, _, _ = umeyama(src, dst, with_scale=True)
    assert rotation_angle_deg(r_plain.T @ rot) > 0.1            # plain least squares is wrong ...
    r, tt, s, inl = umeyama_ransac(src, dst, with_scale=True, threshold=1e-3)
    assert rotation_angle_deg(r.T @ rot) < 1e-4 and s == pytest.approx(2.7, rel=1e-5)
    assert np.linalg.norm(tt - t) < 1e-5 * np.linalg.norm(t)
    np.testing.assert_array_equal(inl, ~out)                   # ... RANSAC finds exactly the clean points


# --- documented errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, message", [
    (lambda: umeyama(np.zeros((5, 2)), np.zeros((5, 2))), "last axis of length 3"),
    (lambda: umeyama(np.zeros((5, 3)), np.zeros((4, 3))), "same shape"),
    (lambda: umeyama(np.ones((2, 3)), np.ones((2, 3))), "at least 3 usable points"),
    (lambda: umeyama(np.full((9, 3), np.nan), np.ones((9, 3))), "at least 3 usable points"),
    (lambda: umeyama(np.outer(np.arange(6.0), [1, 2, 3]), np.outer(np.arange(6.0), [1, 2, 3])), "collinear"),
    (lambda: umeyama(np.eye(3), np.eye(3), weights=np.ones(2)), "one weight per point"),
    (lambda: estimate_focal(np.ones((4, 3))), "(H, W, 3)"),
    (lambda: estimate_focal(np.full((4, 4, 3), np.nan)), "at least 3 usable points"),
    (lambda: estimate_focal(np.dstack([np.zeros((4, 4, 2)), np.ones((4, 4))]), principal_point=(0, 0)),
     "optical axis"),
    (lambda: motion_mask(np.ones((4, 3)), np.ones((5, 3))), "same shape"),
    (lambda: motion_mask(np.ones((4, 3)), np.ones((4, 3)), eps_abs=-1), "eps_abs"),
    (lambda: nearest_neighbours(np.ones((4, 3)), np.ones((4, 3)), max_dist=0), "max_dist"),
    (lambda: umeyama_ransac(np.eye(3), np.eye(3), threshold=-1.0), "threshold"),
])
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


# --- cheaper computations equal the equations they replace -------------------------------------------------------
def test_fast_forms_equal_their_definitions():
    from dpm_ros.geometry._checks import finite_rows
    rng = np.random.default_rng(7)
    a = rng.normal(size=(1000, 3)).astype(np.float32)
    a[rng.random(1000) < 0.1, rng.integers(0, 3)] = np.nan
    a[rng.random(1000) < 0.05, 1] = np.inf
    a[rng.random(1000) < 0.05, 2] = -np.inf
    np.testing.assert_array_equal(finite_rows(a), np.isfinite(a).all(axis=-1))
    rots = Rotation.from_rotvec(rng.normal(size=(200, 3))).as_matrix()
    want = np.degrees(np.arccos(np.clip((np.trace(rots, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    np.testing.assert_allclose(rotation_angle_deg(rots), want, atol=1e-6)
