"""The supervised-matching loss (issue-10 ablation, dpm_ros.training.matching): its token-correspondence ground truth
(a known shift, occlusion, out of view, and a direct reprojection of a rendered pair), the cross-entropy and its
symmetric-pass target order, zero cost and unchanged outputs when off, the CLI/curve switch, and that it trains;
arm C's option that drops the targets within R tokens of the query's own position."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dpm_ros.training.loss import LossWeights, dpm_loss
from dpm_ros.training.matching import (drop_near_targets, match_loss, match_targets, pair_correspondences,
                                       token_correspondence)

H, W, P = 32, 48, 8
ROWS, COLS = H // P, W // P
K = np.array([[40.0, 0.0, 23.5], [0.0, 40.0, 15.5], [0.0, 0.0, 1.0]])


def _plane(z: float, h: int = H, w: int = W) -> np.ndarray:
    """Points of a fronto-parallel plane at depth z seen through K: pixel (r, c) is the ray K⁻¹(c, r, 1)."""
    r, c = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([(c - K[0, 2]) / K[0, 0] * z, (r - K[1, 2]) / K[1, 1] * z, np.full_like(r, z)], -1)


def _shifted_plane_case():
    """View 1 sees a plane at 4 m; camera 2 moved by (−0.8, −0.8, 0) m: every point lands 8 px (one token) right
    and one token down in image 2, so token (i, j) -> (i + 1, j + 1) where that is inside the image."""
    pts = _plane(4.0) - np.array([-0.8, -0.8, 0.0])
    seen = _plane(4.0)
    ones = np.ones((H, W), bool)
    return pts, seen, ones


def test_known_shift_gives_the_next_token_down_and_right_and_none_out_of_view():
    pts, seen, ones = _shifted_plane_case()
    got = token_correspondence(pts, K, ones, seen, ones, P).reshape(ROWS, COLS)
    i, j = np.mgrid[0:ROWS, 0:COLS]
    want = np.where((i + 1 < ROWS) & (j + 1 < COLS), (i + 1) * COLS + (j + 1), -1)
    np.testing.assert_array_equal(got, want)
    assert (got == -1).sum() == ROWS + COLS - 1          # last row and last column leave the image


def test_occluded_invalid_and_behind_the_camera_are_marked_invalid():
    pts, seen, ones = _shifted_plane_case()
    seen = seen.copy()
    seen[8:16, 16:24] = _plane(3.0)[8:16, 16:24]        # target token (1, 2): something 25 % nearer hides it
    valid_dst = ones.copy()
    valid_dst[16:24, 24:32] = False                      # target token (2, 3): no ground truth there
    valid_src = ones.copy()
    valid_src[0 * P + P // 2, 0 * P + P // 2] = False    # source token (0, 0): its centre pixel has none
    pts = pts.copy()
    pts[2 * P + P // 2, 0 * P + P // 2, 2] = -1.0        # source token (2, 0): behind camera 2
    got = token_correspondence(pts, K, valid_src, seen, valid_dst, P).reshape(ROWS, COLS)
    assert got[0, 1] == -1 and got[1, 2] == -1 and got[0, 0] == -1 and got[2, 0] == -1
    assert got[0, 2] == 1 * COLS + 3 and got[1, 1] == 2 * COLS + 2   # neighbours unaffected
    # a 4 % depth disagreement is within the 5 % tolerance (rendering noise), 6 % is not
    for z, ok in ((4.0 * 0.96, True), (4.0 * 0.94, False)):
        s2 = _plane(z)
        assert (token_correspondence(pts, K, ones, s2, ones, P)[:1] >= 0).all() == ok


def _direct(points, K_, valid_src, seen, valid_dst, tol=0.05):
    """The same ground truth the plain way: every pixel projected (diagnose.project_to_pixels), then read at
    the token centres."""
    from dpm_ros.training.diagnose import project_to_pixels
    pts = np.nan_to_num(np.asarray(points, np.float64), nan=0.0)
    row, col, ok = project_to_pixels(pts, K_)
    ok &= np.asarray(valid_src, bool) & np.asarray(valid_dst, bool)[row, col]
    z = pts[..., 2]
    ok &= np.abs(np.asarray(seen, np.float64)[row, col, 2] - z) <= tol * z
    idx = np.where(ok, (row // P) * (points.shape[1] // P) + col // P, -1)
    return idx[P // 2::P, P // 2::P].reshape(-1)


@pytest.fixture(scope="module")
def rendered():
    from dpm_ros.training.data import DataConfig, generate_sample
    cfg = DataConfig(height=H, width=W)
    return [generate_sample(1_000_123 + i, cfg, family=fam, camera_motion="modes")
            for i, fam in enumerate(("room", "flying"))]


def test_rendered_pairs_equal_a_direct_reprojection_both_ways(rendered):
    for s in rendered:
        m12, m21 = pair_correspondences(s, P)
        K_ = np.asarray(s["K"], np.float64)
        np.testing.assert_array_equal(m12, _direct(s["p1_t2_pi2"], K_, s["valid1"], s["p2_t2_pi2"], s["valid2"]))
        np.testing.assert_array_equal(m21, _direct(s["p2_t1_pi1"], K_, s["valid2"], s["p1_t1_pi1"], s["valid1"]))
        assert m12.shape == (ROWS * COLS,) and (m12 >= 0).mean() > 0.5 and (m21 >= 0).mean() > 0.5
        assert (m12 != np.arange(ROWS * COLS)).any()       # not trivially the identity


def test_sample_item_carries_the_indices_only_when_asked(rendered):
    from dpm_ros.training.data import sample_item
    s = rendered[0]
    assert "match12" not in sample_item(s)
    item = sample_item(s, P)
    m12, m21 = pair_correspondences(s, P)
    assert item["match12"].dtype == torch.int64
    np.testing.assert_array_equal(item["match12"].numpy(), m12)
    np.testing.assert_array_equal(item["match21"].numpy(), m21)
    assert set(item) - set(sample_item(s)) == {"match12", "match21"}


def test_drop_near_targets_hand_made_grid():
    """3 × 4 token grid (query n at row n // 4, col n % 4). Known answers per radius; the row/col decomposition
    matters: query 3 (row 0, col 3) -> target 4 (row 1, col 0) is one index apart but 3 tokens away."""
    #                  q: 0  1  2   3  4  5  6   7  8  9  10  11
    t = np.array([[0, 6, -1, 4, 4, 0, 6, 11, 0, 9, 5, 6]])
    # Chebyshev distance of each valid target from its own position:
    # q0->0: 0 | q1->6 (1,2): 1 | q3->4 (1,0): 3 | q4->4: 0 | q5->0 (0,0): 1 | q6->6: 0 | q7->11 (2,3): 1
    # q8->0 (0,0): 2 | q9->9: 0 | q10->5 (1,1): 1 | q11->6 (1,2): 1
    want = {0: [-1, 6, -1, 4, -1, 0, -1, 11, 0, -1, 5, 6],
            1: [-1, -1, -1, 4, -1, -1, -1, -1, 0, -1, -1, -1],
            2: [-1, -1, -1, 4, -1, -1, -1, -1, -1, -1, -1, -1]}
    for r, w in want.items():
        np.testing.assert_array_equal(drop_near_targets(t, 4, r), [w])
    off = drop_near_targets(t, 4, -1)
    np.testing.assert_array_equal(off, t)
    assert off is not t and drop_near_targets(t, 4, 0).dtype == np.int64


def test_drop_radius_in_the_data_worker_off_is_identical_and_on_drops_exactly_the_near(rendered):
    from dpm_ros.training.data import sample_item
    own = np.arange(ROWS * COLS)
    i, j = own // COLS, own % COLS
    for s in rendered:
        m12, m21 = pair_correspondences(s, P)
        for a, b in zip(pair_correspondences(s, P, -1), (m12, m21)):
            np.testing.assert_array_equal(a, b)
        base, off = sample_item(s, P), sample_item(s, P, -1)
        assert all(torch.equal(base[k], off[k]) for k in base)
        for r in (0, 1):
            item = sample_item(s, P, r)
            for key, m in (("match12", m12), ("match21", m21)):
                got = item[key].numpy()
                dist = np.maximum(np.abs(m // COLS - i), np.abs(m % COLS - j))
                np.testing.assert_array_equal(got, np.where((m >= 0) & (dist <= r), -1, m))
            assert all(torch.equal(base[k], item[k]) for k in base if not k.startswith("match"))
    # the shifted plane: every target moved by exactly (1, 1) token -> R=0 keeps them all, R=1 drops them all
    pts, seen, ones = _shifted_plane_case()
    m = token_correspondence(pts, K, ones, seen, ones, P)
    np.testing.assert_array_equal(drop_near_targets(m, COLS, 0), m)
    assert (drop_near_targets(m, COLS, 1) == -1).all() and (m >= 0).sum() == (ROWS - 1) * (COLS - 1)


def test_match_loss_over_the_remaining_queries_only():
    """Dropped targets (-1) leave the CE: it equals the CE over the queries still valid."""
    g = torch.Generator().manual_seed(1)
    B, N = 2, 12
    batch = {"match12": torch.randint(-1, N, (B, N), generator=g), "match21": torch.randint(-1, N, (B, N), generator=g)}
    dropped = {k: torch.from_numpy(drop_near_targets(v.numpy(), 4, 0)) for k, v in batch.items()}
    assert (dropped["match12"] >= 0).sum() < (batch["match12"] >= 0).sum()
    logits = {k: (torch.randn(B, 1, N, N, generator=g),) for k in ("xattn_logits1", "xattn_logits2")}
    loss, logs = match_loss(logits, dropped)
    want = []
    for key, t in (("xattn_logits1", dropped["match12"]), ("xattn_logits2", dropped["match21"])):
        ok = t >= 0
        want.append(torch.nn.functional.cross_entropy(logits[key][0][:, 0][ok], t[ok]))
    assert float(loss) == pytest.approx(float(sum(want) / 2), rel=1e-6)
    assert logs["match_valid"] == float((dropped["match12"] >= 0).sum() + (dropped["match21"] >= 0).sum()) / 2


def _one_hot_logits(target: torch.Tensor, n: int, heads: int = 1) -> torch.Tensor:
    logits = torch.zeros(target.shape[0], heads, target.shape[1], n)
    logits.scatter_(-1, target.clamp_min(0)[:, None, :, None].expand(-1, heads, -1, 1), 30.0)
    return logits


def test_match_loss_is_zero_for_the_true_tokens_and_reads_the_symmetric_order():
    g = torch.Generator().manual_seed(0)
    B, N = 3, 12
    batch = {"match12": torch.randint(-1, N, (B, N), generator=g), "match21": torch.randint(-1, N, (B, N), generator=g)}
    t1, t2 = match_targets(batch, 2 * B)
    assert torch.equal(t1, torch.cat([batch["match12"], batch["match21"]]))
    assert torch.equal(t2, torch.cat([batch["match21"], batch["match12"]]))
    pred = {"xattn_logits1": (_one_hot_logits(t1, N),) * 2, "xattn_logits2": (_one_hot_logits(t2, N),) * 2}
    loss, logs = match_loss(pred, batch)
    assert float(loss) < 1e-9 and logs["match_acc"] == 1.0
    assert logs["match_valid"] == float((batch["match12"] >= 0).sum() + (batch["match21"] >= 0).sum())
    # the swapped pass answered as if it were pass 1: half the rows wrong
    wrong = {"xattn_logits1": (_one_hot_logits(torch.cat([batch["match12"]] * 2), N),),
             "xattn_logits2": (_one_hot_logits(t2, N),)}
    loss, logs = match_loss(wrong, batch)
    assert float(loss) > 5.0 and logs["match_acc"] < 0.9
    # uniform logits: ln N on every valid query, whatever the invalid ones say
    flat = {"xattn_logits1": (torch.zeros(2 * B, 1, N, N),), "xattn_logits2": (torch.zeros(2 * B, 1, N, N),)}
    assert float(match_loss(flat, batch)[0]) == pytest.approx(np.log(N), rel=1e-6)
    with pytest.raises(ValueError, match="rows"):
        match_targets(batch, 5)


def _batch_and_pred(B: int = 2):
    from dpm_ros.model import build_model
    from dpm_ros.training.data import DataConfig, generate_sample, sample_item
    cfg = DataConfig(height=H, width=W)
    items = [sample_item(generate_sample(1_000_500 + i, cfg, camera_motion="modes"), P) for i in range(B)]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    torch.manual_seed(0)
    net = build_model("dpm_tiny")
    return net, batch


def test_off_means_absent_and_unchanged_outputs():
    net, batch = _batch_and_pred()
    with torch.no_grad():
        plain = net.forward_raw(batch["img1"], batch["img2"])
        with_logits = net.forward_raw(batch["img1"], batch["img2"], match_heads=1)
        with torch.autocast("cpu", dtype=torch.bfloat16):      # the fast training path: bit-identical
            fast = net.forward_raw(batch["img1"], batch["img2"])
            fast_logits = net.forward_raw(batch["img1"], batch["img2"], match_heads=2)
    assert "xattn_logits1" not in plain and set(with_logits) - set(plain) == {"xattn_logits1", "xattn_logits2"}
    for k in plain:
        torch.testing.assert_close(with_logits[k], plain[k], atol=1e-5, rtol=1e-5)
        assert torch.equal(fast_logits[k], fast[k])
    assert len(with_logits["xattn_logits1"]) == net.config.dec_depth
    assert with_logits["xattn_logits1"][0].shape == (2 * 2, 1, ROWS * COLS, ROWS * COLS)
    assert fast_logits["xattn_logits2"][0].shape[1] == 2
    # weight 0: the loss and its logs are exactly what they were, whatever the pred/batch carry
    base = {k: v for k, v in batch.items() if not k.startswith("match")}
    t0, l0 = dpm_loss({k: v for k, v in with_logits.items() if k in plain}, base, LossWeights())
    t1, l1 = dpm_loss(with_logits, batch, LossWeights(match=0.0))
    assert torch.equal(t0, t1) and l0 == l1 and "match" not in l1
    # weight w: total = the old total + w·match
    t2, l2 = dpm_loss(with_logits, batch, LossWeights(match=0.5))
    assert float(t2) == pytest.approx(float(t1) + 0.5 * l2["match"], rel=1e-6)
    assert 0 <= l2["match_acc"] <= 1 and l2["match"] > 0
    with pytest.raises(ValueError, match="cross-attention logits"):
        dpm_loss(plain, batch, LossWeights(match=0.5))
    with pytest.raises(ValueError, match="landscape"):
        net.forward_raw(batch["img1"].transpose(2, 3), batch["img2"].transpose(2, 3), match_heads=1)


def test_the_matching_loss_teaches_the_cross_attention():
    """40 Adam steps on one batch with only the matching term: cross-entropy and argmax accuracy improve a lot
    (gradients reach the logits on the fp32 path)."""
    net, batch = _batch_and_pred()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    first = None
    for _ in range(40):
        pred = net.forward_raw(batch["img1"], batch["img2"], match_heads=1)
        loss, logs = match_loss(pred, batch)
        first = first or logs
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logs["match"] < 0.5 * first["match"] and logs["match_acc"] > first["match_acc"] + 0.3


def test_trainer_and_cli_switch(tmp_path):
    import argparse

    from dpm_ros.commands.train import add_arguments, config_from_args
    from dpm_ros.training.data import DataConfig
    from dpm_ros.training.trainer import TrainConfig, Trainer
    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_args(p.parse_args(["--preset", "dpm_tiny", "--match-weight", "0.5"]))
    assert cfg.loss.match == 0.5 and TrainConfig.from_dict(cfg.to_dict()).loss.match == 0.5
    assert config_from_args(p.parse_args(["--preset", "dpm_tiny"])).loss.match == 0.0
    with pytest.raises(ValueError, match="match-weight"):
        config_from_args(p.parse_args(["--preset", "dpm_tiny", "--match-weight", "-1"]))
    assert cfg.loss.match_drop_radius == -1
    cfg_c = config_from_args(p.parse_args(["--preset", "dpm_tiny", "--match-weight", "0.5",
                                           "--match-drop-radius", "1"]))
    assert TrainConfig.from_dict(cfg_c.to_dict()).loss.match_drop_radius == 1
    old = cfg.to_dict()
    del old["loss"]["match_drop_radius"]                      # a config saved before the option: off
    assert TrainConfig.from_dict(old).loss.match_drop_radius == -1
    with pytest.raises(ValueError, match="match-drop-radius"):
        config_from_args(p.parse_args(["--preset", "dpm_tiny", "--match-drop-radius", "0"]))
    with pytest.raises(ValueError, match="match_drop_radius"):
        Trainer(TrainConfig(preset="dpm_tiny", out=str(tmp_path / "bad"), steps=1, batch=2, workers=0,
                            data=DataConfig(height=H, width=W), loss=LossWeights(match_drop_radius=0)),
                resume=False, progress=False)
    valid = {}
    for w, r, keys in ((0.0, -1, False), (0.5, -1, True), (0.5, 1, True)):
        cfg = TrainConfig(preset="dpm_tiny", out=str(tmp_path / f"m{w}r{r}"), steps=1, batch=2, workers=0,
                          precision="bf16", data=DataConfig(height=H, width=W),
                          loss=LossWeights(match=w, match_drop_radius=r))
        logs = Trainer(cfg, resume=False, progress=False).run()
        assert ("match" in logs[0]) == keys and np.isfinite(logs[0]["loss"])
        saved = torch.load(tmp_path / f"m{w}r{r}" / "last.pt", weights_only=True)["config"]
        assert saved["loss"]["match"] == w and saved["loss"]["match_drop_radius"] == r
        valid[r] = logs[0].get("match_valid")
    assert 0 <= valid[1] < valid[-1]          # the trainer hands the radius to the data worker


def test_curve_segment_keeps_the_weight(tmp_path):
    import json

    from dpm_ros.model import build_model, save_model
    from dpm_ros.training.curve import segment_config
    weights = save_model(build_model("dpm_tiny"), tmp_path / "w.safetensors")
    state = {"preset": "dpm_tiny", "weights": "w.safetensors", "pairs_seen": 0, "cpu_hours": 0.0,
             "next_sample": 0, "continue": {"match_weight": 0.25}}
    (tmp_path / "curve.json").write_text(json.dumps(state))
    assert segment_config(state, tmp_path / "curve.json", tmp_path / "runs").loss.match == 0.25
    assert segment_config(state, tmp_path / "curve.json", tmp_path / "runs").loss.match_drop_radius == -1
    state["continue"]["match_drop_radius"] = 1
    assert segment_config(state, tmp_path / "curve.json", tmp_path / "runs").loss.match_drop_radius == 1
    del state["continue"]["match_weight"], state["continue"]["match_drop_radius"]
    assert segment_config(state, tmp_path / "curve.json", tmp_path / "runs").loss.match == 0.0
    assert weights.exists()
