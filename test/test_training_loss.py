"""The training loss: the formula on a tiny case, Table 6's masks per sample kind, and the motion terms."""
from __future__ import annotations

import math

import pytest
import torch

from dpm_ros import ALL_POINT_MAP_NAMES, POINT_MAP_NAMES
from dpm_ros.training.loss import (KIND_DYNAMIC, KIND_SAME_TIME, KIND_STATIC, LossWeights, dpm_loss, pair_scale,
                                   supervision_matrix)

B, H, W = 3, 4, 5
CROSS = ("p1_t2_pi1", "p2_t1_pi1", "p2_t1_pi2", "p1_t2_pi2")


def _case(seed: int = 0, kinds=(KIND_DYNAMIC, KIND_SAME_TIME, KIND_STATIC), symmetric: bool = True):
    g = torch.Generator().manual_seed(seed)
    names = ALL_POINT_MAP_NAMES if symmetric else POINT_MAP_NAMES
    gt = {n: torch.randn(B, H, W, 3, generator=g) + torch.tensor([0.0, 0.0, 4.0]) for n in ALL_POINT_MAP_NAMES}
    pred = {n: (gt[n] * 0.7 + 0.1 * torch.randn(B, H, W, 3, generator=g)).requires_grad_() for n in names}
    for n in names:
        pred["conf_" + n] = (1.0 + torch.rand(B, H, W, generator=g)).requires_grad_()
    batch = dict(gt)
    batch["valid1"] = torch.rand(B, H, W, generator=g) > 0.2
    batch["valid2"] = torch.rand(B, H, W, generator=g) > 0.2
    batch["moving1"] = torch.rand(B, H, W, generator=g) > 0.6
    batch["moving2"] = torch.rand(B, H, W, generator=g) > 0.6
    batch["kind"] = torch.tensor(kinds)
    return pred, batch


def test_confidence_loss_equals_formula_on_tiny_case():
    """conf term = Σ_maps mean over supervised valid pixels of c·‖P̂/ŝ − P/s‖ − α log c (one pass, one sample)."""
    pred, batch = _case(kinds=(KIND_DYNAMIC,) * B, symmetric=False)
    w = LossWeights(alpha=0.2, flow=0.0, delta=0.0, gate=0.0)
    total, logs = dpm_loss(pred, batch, w)
    expected = 0.0
    s_hat, s_gt = [], []
    for b in range(B):  # per-pair scale: mean ‖P‖ over valid pixels of all four maps, by an explicit loop
        num_h = num_g = den = 0.0
        for n in POINT_MAP_NAMES:
            v = batch["valid" + n[1]][b]
            num_h += pred[n][b][v].norm(dim=-1).sum().item()
            num_g += batch[n][b][v].norm(dim=-1).sum().item()
            den += v.sum().item()
        s_hat.append(num_h / den)
        s_gt.append(num_g / den)
    for n in POINT_MAP_NAMES:
        terms = []
        for b in range(B):
            for i in range(H):
                for j in range(W):
                    if batch["valid" + n[1]][b, i, j]:
                        c = pred["conf_" + n][b, i, j].item()
                        e = (pred[n][b, i, j] / s_hat[b] - batch[n][b, i, j] / s_gt[b]).norm().item()
                        terms.append(c * e - 0.2 * math.log(c))
        expected += sum(terms) / len(terms)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert logs["conf"] == pytest.approx(expected, rel=1e-5)


def test_supervision_matrix_per_kind():
    sup = supervision_matrix(torch.tensor([KIND_DYNAMIC, KIND_SAME_TIME, KIND_STATIC]))
    assert sup.tolist() == [[True] * 4, [True, False, False, True], [True] * 4]
    with pytest.raises(ValueError, match="kinds"):
        supervision_matrix(torch.tensor([3]))


def test_same_time_sample_gives_no_gradient_to_cross_time_maps_or_gate():
    """Table 6 'Spring' kind: P1(t2,π1), P2(t1,π1) (and their swapped twins) are unsupervised; so is the gate."""
    pred, batch = _case(kinds=(KIND_SAME_TIME,) * B)
    for cross in CROSS:
        pred["motion_logit_" + cross] = torch.randn(B, H, W).requires_grad_()
        pred["delta_" + cross] = torch.randn(B, H, W, 3).requires_grad_()
    total, _ = dpm_loss(pred, batch)
    total.backward()
    for n in ("p1_t2_pi1", "p2_t1_pi1", "p2_t1_pi2", "p1_t2_pi2"):
        assert pred[n].grad is None or pred[n].grad.abs().max() == 0, n
        assert pred["conf_" + n].grad is None or pred["conf_" + n].grad.abs().max() == 0, n
    for cross in CROSS:
        assert pred["delta_" + cross].grad is None or pred["delta_" + cross].grad.abs().max() == 0
        g = pred["motion_logit_" + cross].grad
        assert g is None or g.abs().max() == 0
    for n in ("p1_t1_pi1", "p2_t2_pi1", "p2_t2_pi2", "p1_t1_pi2"):
        assert pred[n].grad.abs().max() > 0, n


def test_dynamic_sample_supervises_all_eight_maps():
    pred, batch = _case(kinds=(KIND_DYNAMIC,) * B)
    total, _ = dpm_loss(pred, batch)
    total.backward()
    for n in ALL_POINT_MAP_NAMES:
        assert pred[n].grad.abs().max() > 0, n
        assert pred["conf_" + n].grad.abs().max() > 0, n


def test_invalid_pixels_get_no_gradient():
    pred, batch = _case(kinds=(KIND_DYNAMIC,) * B)
    total, _ = dpm_loss(pred, batch)
    total.backward()
    invalid1 = ~batch["valid1"]
    assert invalid1.any()
    assert pred["conf_p1_t1_pi1"].grad[invalid1].abs().max() == 0


def test_static_sample_targets_zero_flow_and_closed_gate():
    """Static kind: P(t2) = P(t1) is the target. A prediction with zero flow and m≈0 has ~zero motion terms;
    one with flow on static pixels is penalised."""
    pred, batch = _case(kinds=(KIND_STATIC,) * B, symmetric=False)
    for n in ("p1_t2_pi1",):
        batch[n] = batch["p1_t1_pi1"].clone()
    batch["p2_t1_pi1"] = batch["p2_t2_pi1"].clone()
    batch["moving1"] = torch.zeros(B, H, W, dtype=torch.bool)
    batch["moving2"] = torch.zeros(B, H, W, dtype=torch.bool)
    still = {k: v.detach().clone() for k, v in pred.items()}
    still["p1_t2_pi1"] = still["p1_t1_pi1"].clone()
    still["p2_t1_pi1"] = still["p2_t2_pi1"].clone()
    still["motion_logit_p1_t2_pi1"] = torch.full((B, H, W), -12.0)
    still["motion_logit_p2_t1_pi1"] = torch.full((B, H, W), -12.0)
    _, logs = dpm_loss(still, batch)
    assert logs["flow"] < 1e-6
    assert logs["gate"] < 1e-3
    _, logs_moving = dpm_loss(pred, batch)
    assert logs_moving["flow"] > 0.05


def test_flow_term_is_class_balanced():
    """½ mean over moving + ½ mean over static: an error only on the (few) moving pixels costs half of the
    same error on all pixels, whatever the share of moving pixels."""
    pred, batch = _case(kinds=(KIND_DYNAMIC,) * B, symmetric=False)
    gt = {n: batch[n] for n in POINT_MAP_NAMES}
    exact = {n: gt[n].clone() for n in POINT_MAP_NAMES}
    exact.update({"conf_" + n: torch.ones(B, H, W) for n in POINT_MAP_NAMES})
    wrong_moving = dict(exact)
    off = torch.zeros(B, H, W, 3)
    off[..., 0] = 0.3
    moving = batch["moving1"][..., None].float()
    # shift P1(t2) on moving pixels only, by a fixed amount in normalised units of the gt scale
    scale = pair_scale(torch.stack([gt[n] for n in POINT_MAP_NAMES], 1),
                       torch.stack([batch["valid" + n[1]] for n in POINT_MAP_NAMES], 1).float())
    wrong_moving["p1_t2_pi1"] = gt["p1_t2_pi1"] + off * moving * scale[:, None, None, None]
    w = LossWeights(flow=1.0, delta=0.0, gate=0.0)
    _, logs = dpm_loss(wrong_moving, batch, w)
    # view-1 flow error is 0.3 on moving pixels, 0 elsewhere -> 0.15 (scale of P̂ barely changes)
    assert logs["flow"] == pytest.approx(0.15, rel=0.05)


def test_delta_term_regresses_raw_displacement_on_moving_pixels():
    pred, batch = _case(kinds=(KIND_DYNAMIC,) * B, symmetric=False)
    pred["delta_p1_t2_pi1"] = (pred["p1_t2_pi1"] - pred["p1_t1_pi1"]).detach().clone()
    _, logs0 = dpm_loss(pred, batch)
    pred["delta_p1_t2_pi1"] = pred["delta_p1_t2_pi1"] + 1.0
    _, logs1 = dpm_loss(pred, batch)
    assert logs1["delta"] > logs0["delta"] + 0.1


@pytest.mark.parametrize("planar", [False, True])
def test_loss_equals_the_stacked_pre_issue9_loss_value_and_gradients(planar):
    """The map-by-map loss (one _ScaledDist node per distance, ground-truth scale without autograd) against the
    stacked formulation it replaced (kept as dpm_ros.benchmarks.train.legacy_dpm_loss): same total, same logged
    terms, same gradients for every input, including pixels where prediction and target coincide (e = 0). With
    contiguous (B, H, W, 3) maps and with planar memory (views of (B, 3, H, W), as the trainer's network gives)."""
    from dpm_ros.benchmarks.train import legacy_dpm_loss
    pred, batch = _case(seed=3)
    g = torch.Generator().manual_seed(7)
    for cross in CROSS:
        pred["motion_logit_" + cross] = torch.randn(B, H, W, generator=g).requires_grad_()
        pred["delta_" + cross] = torch.randn(B, H, W, 3, generator=g).requires_grad_()
    if planar:
        pred = {k: (v.detach().movedim(-1, 1).contiguous().movedim(1, -1).requires_grad_(v.requires_grad)
                    if v.dim() == 4 else v) for k, v in pred.items()}
        assert pred["p1_t1_pi1"].movedim(-1, 1).is_contiguous()
    with torch.no_grad():   # a zero-distance pixel: the norm's gradient is 0 there in both
        pred["delta_p1_t2_pi1"][0, 0, 0] = 0.0
        pred["p1_t1_pi1"][1, 2, 3] = 0.0
    inputs = [v for v in pred.values() if v.requires_grad]
    new, logs_new = dpm_loss(pred, batch)
    grads_new = torch.autograd.grad(new, inputs)
    old, logs_old = legacy_dpm_loss(pred, batch)
    grads_old = torch.autograd.grad(old, inputs)
    assert new.item() == pytest.approx(old.item(), rel=1e-6)
    assert logs_new.keys() == logs_old.keys()
    for k in logs_new:
        assert logs_new[k] == pytest.approx(logs_old[k], rel=1e-5, abs=1e-7), k
    for a, b in zip(grads_new, grads_old):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(float(a.abs().max()) > 0 for a in grads_new)
