"""The DPM training loss: confidence-aware regression with Table 6's partial supervision, plus motion terms.

All point maps are in the optical frame of their pass's reference camera (REP 103: z forward, x right, y down),
in arbitrary model units for predictions and metres for ground truth. Both are divided by their own per-pair scale
(mean distance to the origin over the supervised valid pixels of the pass's four maps; dpm_theory.md "Metrics")
before any term is computed, so every term is unitless.

Terms (each one a scalar; ``total = conf + w_flow·flow + w_delta·delta + w_gate·gate [+ w_match·match]``):
  * ``conf``: DUSt3R's  Σ_maps mean_pixels( c·‖P̂ − P‖ − α·log c ),  α = 0.2, over supervised valid pixels.
  * ``flow``: the gated object flow  f̂ = P̂(t_other) − P̂(t_own)  (= m·Δ) against the ground-truth flow, as a
    class-balanced mean  ½·mean_moving‖f̂ − f‖ + ½·mean_static‖f̂ − f‖  so the ~10 % moving pixels count as much as
    the static ones.
  * ``delta``: the raw displacement Δ of the gated residual head (before the gate) against the ground-truth flow on
    moving pixels only, so Δ learns even while m ≈ 0 (the gate would otherwise block its gradient).
  * ``gate``: class-balanced binary cross-entropy of the gate m against the ground-truth moving pixels.
  * ``match`` (only when ``LossWeights.match`` > 0; issue-10 ablation): cross-entropy of the decoders'
    cross-attention logits against the ground-truth token correspondence (dpm_ros.training.matching).
Same-time samples supervise only the same-time maps and no motion term; static samples supervise all four maps with
P(t2) = P(t1) (zero flow, gate 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dpm_ros import POINT_MAP_NAMES, SWAPPED_POINT_MAP_NAMES
from dpm_ros.model.network import norm3

KIND_DYNAMIC, KIND_SAME_TIME, KIND_STATIC = 0, 1, 2
KIND_NAMES = {"dynamic": KIND_DYNAMIC, "same_time": KIND_SAME_TIME, "static": KIND_STATIC}

# Which of a pass's four maps (in head order) each kind supervises. Head order: own view at own time, own view at
# other time, other view at other... i.e. POINT_MAP_NAMES / SWAPPED_POINT_MAP_NAMES; maps 0 and 3 are same-time.
SUPERVISED_MAPS = {
    KIND_DYNAMIC: (True, True, True, True),
    KIND_SAME_TIME: (True, False, False, True),
    KIND_STATIC: (True, True, True, True),
}

# Per pass: (same-time map S, cross-time map X) of each view; X = S + m·Δ in the gated residual heads.
# Pass 1 (Φ(I1,I2)): view 1 flow is P1(t2,π1) − P1(t1,π1) (OF-F), view 2 flow P2(t1,π1) − P2(t2,π1) (OF-B).
FLOW_PAIRS = {
    1: (("p1_t1_pi1", "p1_t2_pi1"), ("p2_t2_pi1", "p2_t1_pi1")),
    2: (("p2_t2_pi2", "p2_t1_pi2"), ("p1_t1_pi2", "p1_t2_pi2")),
}


@dataclass
class LossWeights:
    """Weights of the terms; ``alpha`` is the confidence regulariser of DUSt3R's loss."""
    alpha: float = 0.2
    flow: float = 10.0
    delta: float = 2.0
    gate: float = 0.5
    match: float = 0.0   # supervised matching of the decoders' cross-attention (training/matching.py); 0: off
    # matching targets within this many tokens (Chebyshev) of the query's own position are dropped (applied in the
    # data worker, training/matching.py drop_near_targets); -1: keep all, 0: drop the own position only
    match_drop_radius: int = -1


def supervision_matrix(kinds: torch.Tensor) -> torch.Tensor:
    """(B,) int sample kinds -> (B, 4) bool: which of a pass's four maps are supervised per sample."""
    table = torch.tensor([SUPERVISED_MAPS[k] for k in (KIND_DYNAMIC, KIND_SAME_TIME, KIND_STATIC)],
                         dtype=torch.bool, device=kinds.device)
    if kinds.numel() and (int(kinds.min()) < 0 or int(kinds.max()) > 2):
        raise ValueError(f"sample kinds must be 0 (dynamic), 1 (same-time) or 2 (static), got {kinds.tolist()}")
    return table[kinds.long()]


def pair_scale(maps: torch.Tensor, weights: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-pair normalisation factor: weighted mean of ‖P‖ over all maps and pixels.

    maps (B, 4, H, W, 3), weights (B, 4, H, W) -> (B,) in the maps' unit (metres for ground truth)."""
    norms = maps.norm(dim=-1)
    return (norms * weights).sum(dim=(1, 2, 3)) / weights.sum(dim=(1, 2, 3)).clamp_min(eps)


def _balanced_mean(err: torch.Tensor, moving: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """½·mean of err over moving pixels + ½·mean over the others (both under ``weight``); empty classes count 0."""
    pos = moving * weight
    neg = (1.0 - moving) * weight
    term_pos = (err * pos).sum() / pos.sum().clamp_min(1.0)
    term_neg = (err * neg).sum() / neg.sum().clamp_min(1.0)
    return 0.5 * (term_pos + term_neg)


class _ScaledDist(torch.autograd.Function):
    """Per-pixel distance ``‖a·s − b‖`` over the last axis (3) of (B, H, W, 3) maps: ``s`` (B,) a per-sample factor
    (or None: 1), ``b`` a target without gradient (or None: 0). One node instead of autograd's mul/sub/norm chain:
    the backward is ``u·(g/e)`` (u = a·s − b; 0 where u = 0, as torch's norm backward), one pass over the 3
    channels for ``a`` and one for ``s``."""

    @staticmethod
    def forward(ctx, a, s, b):
        u = a * s[:, None, None, None] if s is not None else a
        if b is not None:
            u = u - b
        e = norm3(u)
        ctx.save_for_backward(u, a if s is not None else None, s, e)
        return e

    @staticmethod
    def backward(ctx, g):
        u, a, s, e = ctx.saved_tensors
        r = g / e    # e >= 1e-15 (norm3); where u = 0 the gradient u·r is 0, as torch's norm backward gives
        grad_a = grad_s = None
        if ctx.needs_input_grad[0]:
            grad_a = u * (r * s[:, None, None] if s is not None else r)[..., None]
        if s is not None and ctx.needs_input_grad[1]:
            grad_s = ((u * a).sum(-1) * r).sum(dim=(1, 2))
        return grad_a, grad_s, None


def _planar(m: torch.Tensor) -> torch.Tensor:
    """A (B, H, W, 3) map with the memory of (B, 3, H, W) planes (the layout of the training path's predictions,
    see ``Trainer``): element-wise ops between the two then read contiguous planes (no copy if it already is)."""
    return m.movedim(-1, 1).contiguous().movedim(1, -1)


def _dist(a: torch.Tensor, s: torch.Tensor | None = None, b: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, W) ``‖a·s − b‖`` (see :class:`_ScaledDist`)."""
    return _ScaledDist.apply(a, s, b)


def dpm_loss(pred: dict, batch: dict, weights: LossWeights | None = None) -> tuple[torch.Tensor, dict]:
    """The training loss of one batch.

    pred: the model's ``forward_raw`` dict (maps (B,H,W,3), ``conf_<name>`` (B,H,W)); for each cross-time map X
    optionally ``delta_X`` (raw Δ, (B,H,W,3)) and ``motion_logit_X`` (gate logit, (B,H,W)) — terms whose inputs
    are absent are skipped. batch: ground truth under the same map names (metres), ``valid1``,
    ``valid2`` (B,H,W) bool, ``moving1``, ``moving2`` (B,H,W) bool, ``kind`` (B,) int.
    Returns (total, {term: float}) with per-map regression errors for logging.

    Computed in the predictions' dtype (fp32 in training) map by map (no stacked (B, 4, H, W, 3) copies, no
    zero-filled select gradients), every per-pixel distance as one :class:`_ScaledDist` node; the ground truth's
    normalisation runs without autograd. Equal to the stacked formulation to float rounding (test_training_loss)."""
    w = weights or LossWeights()
    sup = supervision_matrix(batch["kind"]).float()               # (B, 4)
    motion_ok = (batch["kind"] != KIND_SAME_TIME).float()          # (B,)
    passes = [(1, POINT_MAP_NAMES)]
    if all(name in pred for name in SWAPPED_POINT_MAP_NAMES):
        passes.append((2, SWAPPED_POINT_MAP_NAMES))
    dtype = pred[POINT_MAP_NAMES[0]].dtype
    valid = {v: batch["valid" + v].to(dtype) for v in "12"}
    moving = {v: batch["moving" + v].to(dtype) for v in "12"}
    total_conf = pred[POINT_MAP_NAMES[0]].new_zeros(())
    total_flow, total_delta, total_gate = total_conf.clone(), total_conf.clone(), total_conf.clone()
    logs: dict[str, float] = {}
    for pass_id, names in passes:
        pw = [valid[name[1]] * sup[:, k, None, None] for k, name in enumerate(names)]      # (B, H, W) each
        den = sum(x.sum(dim=(1, 2)) for x in pw).clamp_min(1e-8)                           # (B,)
        p_hat = [pred[name] for name in names]                                             # (B, H, W, 3) each
        with torch.no_grad():   # ground truth divided by its per-pair scale
            p_gt = [_planar(batch[name].to(dtype)) for name in names]
            s_gt = (sum((norm3(g) * x).sum(dim=(1, 2)) for g, x in zip(p_gt, pw)) / den).clamp_min(1e-6)
            p_gt = [g / s_gt[:, None, None, None] for g in p_gt]
        s_hat = (sum((_dist(p) * x).sum(dim=(1, 2)) for p, x in zip(p_hat, pw)) / den).clamp_min(1e-6)
        inv = 1.0 / s_hat                                                                  # (B,)
        for k, name in enumerate(names):
            conf, wk = pred["conf_" + name], pw[k]
            err = _dist(p_hat[k], inv, p_gt[k])                                            # (B, H, W)
            count = wk.sum().clamp_min(1.0)
            term = conf * err - w.alpha * torch.log(conf)
            total_conf = total_conf + (term * wk).sum() / count
            logs["reg_" + name] = float((err.detach() * wk).sum() / count)
        # motion terms, per view of this pass (cross-time map X = same-time map S + m·Δ)
        for same, cross in FLOW_PAIRS[pass_id]:
            k_same, k_cross = names.index(same), names.index(cross)
            view = cross[1]
            wv = valid[view] * motion_ok[:, None, None]
            mv = moving[view]
            f_gt = p_gt[k_cross] - p_gt[k_same]
            f_err = _dist(p_hat[k_cross] - p_hat[k_same], inv, f_gt)
            total_flow = total_flow + _balanced_mean(f_err, mv, wv)
            if "delta_" + cross in pred:
                wm = wv * mv
                d_err = _dist(pred["delta_" + cross], inv, f_gt)
                total_delta = total_delta + (d_err * wm).sum() / wm.sum().clamp_min(1.0)
            if "motion_logit_" + cross in pred:
                bce = F.binary_cross_entropy_with_logits(pred["motion_logit_" + cross], mv, reduction="none")
                total_gate = total_gate + _balanced_mean(bce, mv, wv)
    total = total_conf + w.flow * total_flow + w.delta * total_delta + w.gate * total_gate
    if w.match > 0:   # absent (no logits, no targets, no log keys) when off: the loss is then what it always was
        from dpm_ros.training.matching import match_loss
        if "xattn_logits1" not in pred or "match12" not in batch:
            raise ValueError("LossWeights.match > 0 needs the network's cross-attention logits (forward_raw "
                             "match_heads > 0) and the batch's match12/match21 token correspondences")
        term, match_logs = match_loss(pred, batch)
        total = total + w.match * term
        logs.update(match_logs)
    logs.update({k: float(v.detach()) for k, v in (("loss", total), ("conf", total_conf), ("flow", total_flow),
                                                   ("delta", total_delta), ("gate", total_gate))})
    return total, logs
