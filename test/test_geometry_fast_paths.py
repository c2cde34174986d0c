"""The fast paths of the default post-processing equal the plain equations (dpm_theory.md §4, §5): object pixel
groups, batched object fits, pixel-aligned ego-motion weights, the sparse nonzero scan of split_objects."""
import numpy as np
import pytest

from dpm_ros.geometry import ego_motion_pixel_aligned, split_objects, umeyama
from dpm_ros.geometry._checks import as_weights
from dpm_ros.geometry.objects import _nonzero_bytes, object_fits, object_pixels
from dpm_ros.synthetic import make_pair


@pytest.fixture(scope="module")
def pairs():
    return [make_pair(seed, 64, 96, 4, object_radius=(0.5, 1.5)) for seed in range(4)]


def test_nonzero_bytes_is_flatnonzero():
    rng = np.random.default_rng(0)
    for n in list(range(1, 40)) + [511, 4096, 196224]:
        a = (rng.random(n) < 0.05).astype(np.uint8)
        np.testing.assert_array_equal(_nonzero_bytes(a), np.flatnonzero(a))


def test_object_pixels_groups_are_the_labels_pixels(pairs):
    rng = np.random.default_rng(1)
    for p in pairs:
        pts = p["p1_t1_pi1"].copy()
        pts[rng.random(pts.shape[:2]) < 0.02] = np.nan
        for mask in (p["moving1"], rng.random(pts.shape[:2]) < 0.5):       # few objects, then many (sorted path)
            for min_size in (1, 20):
                labels, groups = object_pixels(mask, pts, min_size, 0.05)
                np.testing.assert_array_equal(labels, split_objects(mask, pts, min_size, 0.05))
                assert len(groups) == labels.max()
                sizes = [len(g) for g in groups]
                assert sizes == sorted(sizes, reverse=True)
                for k, g in enumerate(groups, start=1):
                    np.testing.assert_array_equal(g, np.flatnonzero(labels.reshape(-1) == k))
    labels, groups = object_pixels(np.zeros((5, 7), bool), np.ones((5, 7, 3)))
    assert labels.shape == (5, 7) and labels.max() == 0 and groups == []


def test_object_fits_equal_umeyama_per_object(pairs):
    rng = np.random.default_rng(2)
    n_fits = 0
    for p in pairs:
        _, groups = object_pixels(p["moving1"], p["p1_t1_pi1"], 5, 0.05)
        p1 = p["p1_t1_pi1"]
        p2 = p["p1_t2_pi1"] + rng.normal(scale=1e-3, size=p1.shape).astype(np.float32)
        p2[rng.random(p1.shape[:2]) < 0.02] = np.nan
        conf = rng.random(p1.shape[:2]).astype(np.float32)
        conf[rng.random(conf.shape) < 0.05] = np.nan
        conf[rng.random(conf.shape) < 0.05] = -1.0
        for c in (None, conf):
            for fit_points in (0, 64):
                f = object_fits(p1, p2, groups, c, fit_points)
                for k, g in enumerate(groups):
                    fit = g[::-(-len(g) // fit_points)] if fit_points else g
                    rot, t, _ = umeyama(p1.reshape(-1, 3)[fit], p2.reshape(-1, 3)[fit],
                                        None if c is None else c.reshape(-1)[fit])
                    assert f["ok"][k]
                    np.testing.assert_allclose(f["R"][k], rot, atol=1e-12)
                    np.testing.assert_allclose(f["t"][k], t, atol=1e-12)
                    a = p1.reshape(-1, 3)[g].astype(np.float64)
                    np.testing.assert_allclose(f["centroid"][k], a.mean(axis=0), rtol=1e-12)
                    np.testing.assert_array_equal(f["extent"][k], a.max(axis=0) - a.min(axis=0))
                    expect = 1.0 if c is None else np.mean(c.reshape(-1)[g].astype(np.float64))
                    np.testing.assert_allclose(f["confidence"][k], expect, rtol=1e-12)
                    n_fits += 1
    assert n_fits >= 20
    line = np.zeros((4, 5, 3), np.float32)
    line[..., 0], line[..., 2] = np.arange(5), 5.0                        # collinear / too few points: not ok
    assert not object_fits(line, line + 1, [np.arange(5)])["ok"][0]
    assert not object_fits(line, line + 1, [np.arange(2)])["ok"][0]


def test_pixel_aligned_weights_match_as_weights(pairs):
    p = dict(pairs[0])
    rng = np.random.default_rng(3)
    for name in ("p2_t2_pi2", "p2_t2_pi1", "p1_t1_pi2", "p1_t1_pi1"):
        c = rng.random(p[name].shape[:2]).astype(np.float32) + 0.1
        for bad in (np.nan, -2.0, np.inf):
            c[rng.random(c.shape) < 0.03] = bad
        p["conf_" + name] = c
    for stride in (1, 3):
        sub = (slice(None, None, stride), slice(None, None, stride))
        src, dst, w = [], [], []
        for a, b in (("p2_t2_pi2", "p2_t2_pi1"), ("p1_t1_pi2", "p1_t1_pi1")):
            src.append(p[a][sub].reshape(-1, 3))
            dst.append(p[b][sub].reshape(-1, 3))
            ca, cb = (as_weights(p["conf_" + n][sub], p[n][sub].shape[:2]) for n in (a, b))
            w.append(np.sqrt(ca * cb).reshape(-1))
        expect = umeyama(np.concatenate(src), np.concatenate(dst), np.concatenate(w), with_scale=True)
        got = ego_motion_pixel_aligned(p, stride=stride)
        for x, y in zip(got, expect):
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


def test_object_pixels_max_objects_and_dtype(pairs):
    mask = np.random.default_rng(4).random((64, 96)) < 0.5                # many small components
    full = split_objects(mask, pairs[0]["p1_t1_pi1"], 1, 0.05)
    labels, groups = object_pixels(mask, pairs[0]["p1_t1_pi1"], 1, 0.05, max_objects=7, dtype=np.uint16)
    assert labels.dtype == np.uint16 and len(groups) == 7 and full.max() > 7
    np.testing.assert_array_equal(labels, np.where(full <= 7, full, 0))
    with pytest.raises(ValueError, match="do not fit"):
        object_pixels(mask, pairs[0]["p1_t1_pi1"], 1, 0.05, dtype=np.uint8)


def test_squared_norm_overwrite_equals_plain_sum_of_squares():
    from dpm_ros.geometry.masks import squared_norm
    rng = np.random.default_rng(5)
    for dtype in (np.float32, np.float64):
        a = (rng.normal(size=(37, 23, 3)) * 10).astype(dtype)
        a[3, 4, 1] = np.nan
        a[5, 6, 2] = np.inf
        plain = squared_norm(a, 0.25)
        tmp = a.copy()
        fast = squared_norm(tmp, 0.25, overwrite=True)
        np.testing.assert_array_equal(fast, plain)
        assert np.array_equal(tmp, a * a, equal_nan=True)          # the input was squared in place
        with np.errstate(invalid="ignore"):
            ref = 0.25 * (a.astype(np.float64) ** 2).sum(axis=-1)
        np.testing.assert_allclose(fast, ref, rtol=1e-6 if dtype == np.float32 else 1e-12)
        assert np.isnan(fast[3, 4]) and np.isinf(fast[5, 6])


def test_umeyama_equals_the_weighted_moment_equations():
    rng = np.random.default_rng(6)
    for with_scale in (False, True):
        src = rng.normal(size=(500, 3)) * 3 + 7
        rot0 = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        rot0 *= np.sign(np.linalg.det(rot0))
        dst = 1.7 * src @ rot0.T + [1.0, -2.0, 0.5] + rng.normal(size=(500, 3)) * 0.05
        w = rng.uniform(0, 2, 500)
        rot, t, s = umeyama(src, dst, w, with_scale=with_scale)
        wn = w / w.sum()                                           # Umeyama 1991, eqs. (34)-(42), written out
        mu_s, mu_d = wn @ src, wn @ dst
        cov = np.einsum("n,ni,nj->ij", wn, dst - mu_d, src - mu_s)
        u, d, vt = np.linalg.svd(cov)
        e = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
        r_ref = u @ e @ vt
        s_ref = np.trace(np.diag(d) @ e) / (wn @ ((src - mu_s) ** 2).sum(axis=1)) if with_scale else 1.0
        np.testing.assert_allclose(rot, r_ref, atol=1e-12)
        np.testing.assert_allclose(s, s_ref, rtol=1e-12)
        np.testing.assert_allclose(t, mu_d - s_ref * r_ref @ mu_s, atol=1e-10)


def _with_invalid(p, seed):
    """Copy of a pair with ~1% NaN/±inf coordinates in every point map (invalid pixels must stay excluded)."""
    rng = np.random.default_rng(seed)
    q = dict(p)
    for name in [n for n in p if n.startswith("p") and n[1] in "12" and "_pi" in n]:
        a = np.array(p[name], np.float32)
        a[rng.random(a.shape[:2]) < 0.01, rng.integers(0, 3)] = rng.choice([np.nan, np.inf, -np.inf])
        q[name] = a
    return q


@pytest.mark.parametrize("block_pixels", [1, 500, 8192, 10 ** 6])       # one row, rows not dividing H, one block
def test_flows_and_masks_equal_the_plain_functions(pairs, block_pixels):
    from dpm_ros.geometry import displacement_mask, object_flow, scene_flow
    from dpm_ros.geometry.flow import flows_and_masks
    from dpm_ros.geometry.masks import squared_norm
    p = _with_invalid(pairs[1], 8)
    for s in (None, 1.0, 1.2345):
        for eps_rel, eps_abs in ((0.02, None), (0.0, None), (0.02, 0.05)):
            with np.errstate(invalid="ignore"):
                flows, m1, m2, r2 = flows_and_masks(p, eps_rel, eps_abs, pass2_scale=s, block_pixels=block_pixels)
                of = object_flow(p)
                want = {"object_forward": of["forward"], "object_backward": of["backward"]}
                if s is not None:
                    sf = scene_flow(p, pass2_scale=s)
                    want.update(scene_forward=sf["forward"], scene_backward=sf["backward"])
            assert list(flows) == list(want)
            for k in want:                                           # bit for bit, NaN where the plain form has NaN
                assert flows[k].dtype == np.float32 and np.array_equal(flows[k], want[k], equal_nan=True), k
            np.testing.assert_array_equal(m1, displacement_mask(of["forward"], p["p1_t1_pi1"], eps_rel, eps_abs))
            np.testing.assert_array_equal(m2, displacement_mask(of["backward"], p["p2_t1_pi1"], eps_rel, eps_abs))
            assert np.array_equal(r2, squared_norm(p["p1_t1_pi1"]), equal_nan=True)
    # the equations themselves (dpm_theory.md §2, §6) on the valid pixels, in float64
    flows, m1, _, r2 = flows_and_masks(p, 0.02, None, pass2_scale=1.2345, block_pixels=block_pixels)
    a, b, c = (p[n].astype(np.float64) for n in ("p1_t1_pi1", "p1_t2_pi1", "p1_t2_pi2"))
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(a).all(-1) & np.isfinite(b).all(-1)
        ok_c = ok & np.isfinite(c).all(-1)
        np.testing.assert_allclose(flows["object_forward"][ok], (b - a)[ok], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(flows["scene_forward"][ok_c], (1.2345 * c - a)[ok_c], rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(r2[ok], (a ** 2).sum(-1)[ok], rtol=1e-6)
        norm_d, norm_a = np.linalg.norm(b - a, axis=-1), np.linalg.norm(a, axis=-1)
        clear = ok & (np.abs(norm_d - 0.02 * norm_a) > 1e-5 * norm_a)  # away from the threshold's float rounding
    np.testing.assert_array_equal(m1[clear], (norm_d > 0.02 * norm_a)[clear])
    assert not m1[~ok].any()                                           # invalid pixels never move


def test_flows_and_masks_other_dtypes_take_the_plain_path(pairs):
    from dpm_ros.geometry.flow import flows_and_masks
    p = _with_invalid(pairs[2], 9)
    q = {k: (v.astype(np.float64) if k == "p2_t1_pi1" else v) for k, v in p.items()}
    with np.errstate(invalid="ignore"):
        fast = flows_and_masks(p, 0.02, None, 1.1)
        slow = flows_and_masks(q, 0.02, None, 1.1)
    for k in fast[0]:
        np.testing.assert_allclose(fast[0][k], slow[0][k], rtol=1e-6, atol=1e-6)
    assert np.mean(fast[1] != slow[1]) < 1e-3 and np.mean(fast[2] != slow[2]) < 1e-3
    with pytest.raises(ValueError, match="pass2_scale"):
        flows_and_masks(p, pass2_scale=0.0)
    with pytest.raises(ValueError, match="eps_abs"):
        flows_and_masks(p, eps_abs=-1.0)
    with pytest.raises(ValueError, match="p1_t2_pi2"):
        flows_and_masks({k: v for k, v in p.items() if k != "p1_t2_pi2"}, pass2_scale=1.0)


def test_object_pixels_with_given_sq_norms_equals_without(pairs):
    from dpm_ros.geometry.masks import squared_norm
    rng = np.random.default_rng(10)
    for p in pairs:
        pts = _with_invalid(p, 11)["p1_t1_pi1"]
        for mask in (p["moving1"], rng.random(pts.shape[:2]) < 0.5):
            plain = object_pixels(mask, pts, 5, 0.05)
            fast = object_pixels(mask, pts, 5, 0.05, sq_norms=squared_norm(pts).reshape(pts.shape[:2]))
            np.testing.assert_array_equal(fast[0], plain[0])
            assert len(fast[1]) == len(plain[1]) and all(np.array_equal(a, b) for a, b in zip(fast[1], plain[1]))
    with pytest.raises(ValueError, match="sq_norms"):
        object_pixels(pairs[0]["moving1"], pairs[0]["p1_t1_pi1"], sq_norms=np.zeros((3, 3), np.float32))


def test_umeyama_rows_equals_umeyama():
    from dpm_ros.geometry.procrustes import umeyama_rows
    rng = np.random.default_rng(12)
    src = (rng.normal(size=(800, 3)) * 3 + 7).astype(np.float32)
    rot0 = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    rot0 *= np.sign(np.linalg.det(rot0))
    dst = (1.3 * src @ rot0.T + [1.0, -2.0, 0.5] + rng.normal(size=(800, 3)) * 0.05).astype(np.float32)
    src[rng.random(800) < 0.05, 1] = np.nan
    dst[rng.random(800) < 0.05, 2] = np.inf
    w = rng.uniform(0, 2, 800)
    w[rng.random(800) < 0.05] = np.nan
    w[rng.random(800) < 0.05] = -1.0
    w[rng.random(800) < 0.05] = np.inf
    for with_scale in (False, True):
        for weights in (w, np.ones(800)):
            x = np.concatenate([src.T, dst.T]).astype(np.float64)
            got = umeyama_rows(x, weights, with_scale=with_scale)
            for a, b in zip(got, umeyama(src, dst, weights, with_scale=with_scale)):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="6, N"):
        umeyama_rows(np.zeros((3, 10)), np.ones(10))
    with pytest.raises(ValueError, match="at least 3"):
        umeyama_rows(np.full((6, 10), np.nan), np.ones(10))


def _split_reference(mask, pts, min_size, max_gap):
    """split_objects' definition written out plainly (float64, scipy labelling): 4-connected components of the
    mask's valid pixels, the farther pixel of every 4-neighbour pair with ‖p_a − p_b‖ > max_gap·min(‖p_a‖, ‖p_b‖)
    left out, then given (two sweeps) the largest label of a 4-neighbour it is close to; components below min_size
    dropped; numbered by decreasing size."""
    from scipy import ndimage
    p = pts.astype(np.float64)
    h, w = mask.shape
    with np.errstate(invalid="ignore", over="ignore"):
        r2 = (p ** 2).sum(-1)
        valid = mask & np.isfinite(r2)
    far = np.zeros((h, w), bool)
    close = {}                                          # (dy, dx) -> bool (h, w): pixel and its neighbour close
    for dy, dx in ((0, 1), (1, 0)):
        a, b = p[:h - dy, :w - dx], p[dy:, dx:]
        ra, rb = r2[:h - dy, :w - dx], r2[dy:, dx:]
        with np.errstate(invalid="ignore"):
            gap2 = ((a - b) ** 2).sum(-1)
            cut = (gap2 > max_gap ** 2 * np.minimum(ra, rb)) & valid[:h - dy, :w - dx] & valid[dy:, dx:]
            near = gap2 <= max_gap ** 2 * np.minimum(ra, rb)
        far[:h - dy, :w - dx] |= cut & (ra > rb)
        far[dy:, dx:] |= cut & ~(ra > rb)
        fwd = np.zeros((h, w), bool)
        fwd[:h - dy, :w - dx] = near
        bwd = np.zeros((h, w), bool)
        bwd[dy:, dx:] = near
        close[(dy, dx)], close[(-dy, -dx)] = fwd, bwd
    labels, _ = ndimage.label(valid & ~far, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    ys, xs = np.nonzero(far)
    for _ in range(2):
        best = np.zeros(len(ys), labels.dtype)
        for (dy, dx), ok in close.items():
            y2, x2 = ys + dy, xs + dx
            inside = (y2 >= 0) & (y2 < h) & (x2 >= 0) & (x2 < w)
            cand = np.zeros(len(ys), labels.dtype)
            cand[inside] = np.where(ok[ys[inside], xs[inside]], labels[y2[inside], x2[inside]], 0)
            best = np.maximum(best, cand)
        todo = labels[ys, xs] == 0
        labels[ys[todo], xs[todo]] = best[todo]
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    order = np.argsort(-sizes, kind="stable")
    keep = order[sizes[order] >= min_size]
    lut = np.zeros(len(sizes), np.int64)
    lut[keep] = np.arange(1, len(keep) + 1)
    return lut[labels]


def test_split_objects_equals_its_definition(pairs):
    rng = np.random.default_rng(13)
    n_objects = 0
    for p in pairs:
        pts = p["p1_t1_pi1"].copy()
        pts[rng.random(pts.shape[:2]) < 0.02] = np.nan
        box = np.zeros(pts.shape[:2], bool)
        box[5:50, 10:80] = rng.random((45, 70)) < 0.7
        for mask in (p["moving1"], box, rng.random(pts.shape[:2]) < 0.5):   # few components, then many
            for min_size, max_gap in ((1, 0.05), (20, 0.02)):
                got, groups = object_pixels(mask, pts, min_size, max_gap)
                np.testing.assert_array_equal(got, _split_reference(mask, pts, min_size, max_gap))
                for k, g in enumerate(groups, start=1):
                    np.testing.assert_array_equal(g, np.flatnonzero(got.reshape(-1) == k))
                n_objects += len(groups)
    assert n_objects > 50


def test_object_fits_centroid_is_the_float64_mean_of_large_objects():
    rng = np.random.default_rng(14)
    for dtype in (np.float32, np.float64, np.int32):
        p1 = (rng.normal(size=(200, 300, 3)) * 3 + [100.0, -50.0, 400.0]).astype(dtype)
        groups = [np.arange(0, 60000, 1), np.sort(rng.choice(60000, 777, replace=False)), np.arange(5, 9)]
        f = object_fits(p1, p1, groups)
        for k, g in enumerate(groups):
            a = p1.reshape(-1, 3)[g].astype(np.float64)
            np.testing.assert_allclose(f["centroid"][k], a.mean(axis=0), rtol=1e-13)
            np.testing.assert_array_equal(f["extent"][k], a.max(axis=0) - a.min(axis=0))


def test_scene_flow_is_the_equation_rounded_once(pairs):
    """SF-F = s·P1(t2,π2) − P1(t1,π1), SF-B = P2(t1,π1) − s·P2(t2,π2) (s rounded to float32) computed in float64
    and rounded once to float32: within half an ulp, NaN/inf where the equation has them."""
    from dpm_ros.geometry import scene_flow
    from dpm_ros.geometry.flow import flows_and_masks
    p = _with_invalid(pairs[3], 15)
    f64 = {k: np.asarray(v, np.float64) for k, v in p.items() if k.startswith("p")}
    for s in (1.0, 1.2345, 0.77):
        s32 = float(np.float32(s))
        want = {"forward": s32 * f64["p1_t2_pi2"] - f64["p1_t1_pi1"],
                "backward": f64["p2_t1_pi1"] - s32 * f64["p2_t2_pi2"]}
        with np.errstate(invalid="ignore"):
            got = scene_flow(p, pass2_scale=s)
            fused = flows_and_masks(p, pass2_scale=s)[0]
        for k, v in want.items():
            ok = np.isfinite(v)
            half_ulp = 0.5 * np.spacing(np.abs(v[ok]).astype(np.float32)).astype(np.float64)
            assert np.all(np.abs(got[k][ok] - v[ok]) <= half_ulp * (1 + 1e-9)), (s, k)
            assert np.array_equal(got[k][~ok], v[~ok].astype(np.float32), equal_nan=True)
            assert np.array_equal(fused["scene_" + k], got[k], equal_nan=True)


@pytest.mark.parametrize("relative", [True, False])
def test_cut_edges_are_the_mask_pairs_beyond_the_split_distance(pairs, relative):
    """The split's cut pairs are exactly the right/down mask pairs farther apart than the split distance (float64,
    pairs within 1e-5 of the limit either way)."""
    from dpm_ros.geometry.masks import squared_norm
    from dpm_ros.geometry.objects import _cut_edges
    rng = np.random.default_rng(16)
    gap = 0.05 if relative else 0.2
    for p in pairs:
        pts = p["p1_t1_pi1"]
        r2 = squared_norm(pts).reshape(pts.shape[:2])
        for mask in (p["moving1"], rng.random(pts.shape[:2]) < 0.6):
            m8 = mask.astype(np.uint8)
            whole = _cut_edges(pts, m8, r2, gap, relative)
            assert len(whole[0]) > 0
            h, w = m8.shape
            ia = np.arange(h * w).reshape(h, w)
            ca = np.concatenate([ia[:, :-1].ravel(), ia[:-1].ravel()])
            cb = np.concatenate([ia[:, 1:].ravel(), ia[1:].ravel()])
            inside = m8.reshape(-1)[ca].astype(bool) & m8.reshape(-1)[cb].astype(bool)
            a, b = (pts.reshape(-1, 3)[i].astype(np.float64) for i in (ca, cb))
            d2 = ((a - b) ** 2).sum(-1)
            lim = gap ** 2 * np.minimum((a ** 2).sum(-1), (b ** 2).sum(-1)) if relative else gap ** 2
            got = set(zip(*(x.tolist() for x in whole)))

            def beyond(f):
                keep = inside & (d2 > lim * f)
                return set(zip(ca[keep].tolist(), cb[keep].tolist()))
            assert beyond(1 + 1e-5) <= got <= beyond(1 - 1e-5) and len(got) > 0


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (3, 5), (40, 33)])
def test_flows_and_masks_odd_shapes_and_layouts(shape):
    """Tiny and odd images, and float32 maps that are views (not C-contiguous: the plain functions), give the plain
    functions' values."""
    from dpm_ros.geometry import displacement_mask, object_flow, scene_flow
    from dpm_ros.geometry.flow import flows_and_masks
    rng = np.random.default_rng(17)
    names = ("p1_t1_pi1", "p1_t2_pi1", "p2_t1_pi1", "p2_t2_pi1", "p1_t2_pi2", "p2_t2_pi2")
    base = {n: (rng.normal(size=shape + (3,)) + [0, 0, 5]).astype(np.float32) for n in names}
    wide = {n: np.repeat(v, 2, axis=1)[:, ::2] for n, v in base.items()}          # same values, strided views
    for maps in (base, wide):
        flows, m1, m2, r2 = flows_and_masks(maps, 0.2, None, pass2_scale=1.3, block_pixels=3)
        of, sf = object_flow(maps), scene_flow(maps, pass2_scale=1.3)
        for k in ("forward", "backward"):
            assert np.array_equal(flows["object_" + k], of[k]) and np.array_equal(flows["scene_" + k], sf[k])
        np.testing.assert_array_equal(m1, displacement_mask(of["forward"], maps["p1_t1_pi1"], 0.2))
        np.testing.assert_array_equal(m2, displacement_mask(of["backward"], maps["p2_t1_pi1"], 0.2))
        assert r2.shape == shape and (m1.size < 100 or (m1.any() and not m1.all()))


def _focal_reference(pts, conf, pp, stride, iterations=20, tol=1e-10):
    """estimate_focal written out plainly (dpm_theory.md §1): least squares, then Weiszfeld with np.hypot."""
    h, w = pts.shape[:2]
    c = np.ones((h, w)) if conf is None else as_weights(conf, (h, w))
    cx, cy = ((w - 1) / 2, (h - 1) / 2) if pp is None else pp
    vv, uu = np.mgrid[0:h:stride, 0:w:stride]
    p, c = pts[::stride, ::stride].astype(np.float64), c[::stride, ::stride]
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(p).all(-1) & (p[..., 2] > 0) & (c > 0)
    qx, qy, c = p[ok, 0] / p[ok, 2], p[ok, 1] / p[ok, 2], c[ok]
    dx, dy = uu[ok] - cx, vv[ok] - cy
    f = np.sum(c * (qx * dx + qy * dy)) / np.sum(c * (qx * qx + qy * qy))
    for _ in range(iterations):
        wr = c / np.maximum(np.hypot(dx - f * qx, dy - f * qy), 1e-12 * max(abs(f), 1.0))
        f_new = np.sum(wr * (qx * dx + qy * dy)) / np.sum(wr * (qx * qx + qy * qy))
        done = abs(f_new - f) <= tol * abs(f)
        f = f_new
        if done:
            break
    return f


def test_estimate_focal_equals_plain_weiszfeld(pairs):
    from dpm_ros.geometry import estimate_focal
    rng = np.random.default_rng(18)
    for p in pairs[:2]:
        pts = p["p1_t1_pi1"] * np.float32(1.0)
        pts[rng.random(pts.shape[:2]) < 0.03] = np.nan
        pts[rng.random(pts.shape[:2]) < 0.2] *= np.float32(1.3)              # outliers: Weiszfeld works
        conf = rng.random(pts.shape[:2]).astype(np.float32)
        conf[rng.random(conf.shape) < 0.05] = -1.0
        conf[rng.random(conf.shape) < 0.05] = np.nan
        for c in (None, conf):
            for stride in (1, 3):
                for pp in (None, (40.3, 30.1)):
                    got = estimate_focal(pts, c, principal_point=pp, stride=stride)
                    assert got == pytest.approx(_focal_reference(pts, c, pp, stride), rel=1e-12)
    with pytest.raises(ValueError, match="conf"):
        estimate_focal(pairs[0]["p1_t1_pi1"], conf=np.ones((3, 3)))
