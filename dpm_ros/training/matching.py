"""Supervised matching (issue 10 ablation): the decoder's cross-attention told where each token's correspondence is.

Ground truth (data worker, numpy, loop-free): for each token of view a (its patch-centre pixel, row-major token
order), the token of view b that contains the pixel where that pixel's 3D point *at view b's time* projects through
K (both cameras of a synthetic pair share K). Invalid (-1) when the centre pixel has no ground truth, the point is
behind camera b or outside its image, the pixel it lands on has no ground truth, or it is occluded there: view b's
own depth at that pixel differs from the projected depth by more than ``tol`` (5 %).

  * view 1 -> view 2: ``p1_t2_pi2`` (view 1's points at t2 in camera 2), occlusion against ``p2_t2_pi2``;
  * view 2 -> view 1: ``p2_t1_pi1`` (view 2's points at t1 in camera 1), occlusion against ``p1_t1_pi1``.

Every sample kind has them (same-time samples are rendered as dynamic pairs whose cross-time maps are simply not
supervised; static samples have t2 = t1 geometry), so all pairs of a batch count.

Loss (:func:`match_loss`): cross-entropy of the decoders' cross-attention logits (softmax scale included: the
logits the attention actually normalises) against that token index, over valid tokens, averaged over the
supervised blocks and heads. Which: head 0 of every decoder block (``MATCH_HEADS``; the other head stays free for
context), chosen by measurement (engines/README.md, ablation). Off unless ``LossWeights.match`` > 0; then the data
worker computes the indices and the network returns those logits (DPMNet.forward_raw(..., match_heads=1)).

Arm C of the ablation (``LossWeights.match_drop_radius`` R >= 0, ``dpm train --match-drop-radius R``): the data
worker also drops (-1) every target within Chebyshev distance R tokens of the query's own grid position
(:func:`drop_near_targets`), so only correspondences that moved are taught; -1 (default): keep all.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MATCH_HEADS = 1
"""Heads 0 .. MATCH_HEADS-1 of every decoder block's cross-attention are supervised."""

OCCLUSION_TOL = 0.05
"""Relative depth disagreement above which a projected point counts as hidden in the other view."""


def token_correspondence(points: np.ndarray, K: np.ndarray, valid_src: np.ndarray, seen: np.ndarray,
                         valid_dst: np.ndarray, patch: int, tol: float = OCCLUSION_TOL) -> np.ndarray:
    """(rows·cols,) int64: for each source-view token, the target-view token its centre pixel's point lands in,
    -1 where invalid / out of view / occluded.

    points (H, W, 3): the source view's points in the target camera's optical frame at the target image's time
    (metres, NaN where invalid); K (3, 3) intrinsics of the target camera; valid_src, valid_dst (H, W) bool;
    seen (H, W, 3): the target view's own points (its camera, its time) for the occlusion test; patch: token size
    in pixels (token (i, j) covers rows i·P..i·P+P−1, cols j·P..j·P+P−1; its centre pixel is (i·P + P//2, j·P + P//2)).
    """
    H, W = points.shape[:2]
    rows, cols = H // patch, W // patch
    c = patch // 2
    p = np.asarray(points, np.float64)[c::patch, c::patch][:rows, :cols]          # (rows, cols, 3)
    ok = np.asarray(valid_src, bool)[c::patch, c::patch][:rows, :cols] & np.isfinite(p).all(-1)
    p = np.where(ok[..., None], p, 1.0)
    uvw = p @ np.asarray(K, np.float64).T                                           # pixel (col, row) = uvw[:2]/w
    ok &= uvw[..., 2] > 1e-9
    w = np.where(ok, uvw[..., 2], 1.0)
    col, row = np.rint(uvw[..., 0] / w), np.rint(uvw[..., 1] / w)
    ok &= (col >= 0) & (col < W) & (row >= 0) & (row < H)
    ri, ci = np.where(ok, row, 0).astype(np.int64), np.where(ok, col, 0).astype(np.int64)
    ok &= np.asarray(valid_dst, bool)[ri, ci]
    z_seen = np.asarray(seen, np.float64)[ri, ci, 2]
    with np.errstate(invalid="ignore"):
        ok &= np.abs(z_seen - p[..., 2]) <= tol * p[..., 2]
    return np.where(ok, (ri // patch) * cols + ci // patch, -1).reshape(-1).astype(np.int64)


def drop_near_targets(target: np.ndarray, cols: int, radius: int) -> np.ndarray:
    """Copy of ``target`` ((..., N) int token indices, row-major over a grid ``cols`` tokens wide, -1 invalid) with
    -1 wherever the target token lies within Chebyshev distance ``radius`` (in tokens) of the query token's own
    grid position (query n sits at row n // cols, col n % cols in both views: same image size). radius 0 drops
    only the own position, 1 also its 8 neighbours; radius < 0 returns the targets unchanged."""
    target = np.asarray(target, np.int64)
    if radius < 0:
        return target.copy()
    q = np.arange(target.shape[-1], dtype=np.int64)
    near = np.maximum(np.abs(target // cols - q // cols), np.abs(target % cols - q % cols)) <= radius
    return np.where((target >= 0) & near, -1, target)


def pair_correspondences(s: dict, patch: int, drop_radius: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(view 1 -> view 2, view 2 -> view 1) token indices of a generate_sample dict (see the module doc);
    ``drop_radius`` R >= 0 also invalidates the targets within R tokens of the query's own position
    (:func:`drop_near_targets`)."""
    K = np.asarray(s["K"], np.float64)
    m12 = token_correspondence(s["p1_t2_pi2"], K, s["valid1"], s["p2_t2_pi2"], s["valid2"], patch)
    m21 = token_correspondence(s["p2_t1_pi1"], K, s["valid2"], s["p1_t1_pi1"], s["valid1"], patch)
    if drop_radius >= 0:
        cols = np.asarray(s["valid1"]).shape[1] // patch
        m12, m21 = drop_near_targets(m12, cols, drop_radius), drop_near_targets(m21, cols, drop_radius)
    return m12, m21


def match_targets(batch: dict, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of decoder 1's and decoder 2's queries, in the network's batch order: (B, N) each when the pass
    was not symmetric (n_rows = B), else (2B, N): pass 1 then the swapped pass, where decoder 1 reads view 2
    and decoder 2 reads view 1."""
    m12, m21 = batch["match12"].long(), batch["match21"].long()
    if n_rows == m12.shape[0]:
        return m12, m21
    if n_rows != 2 * m12.shape[0]:
        raise ValueError(f"cross-attention logits for {n_rows} rows, match targets for {m12.shape[0]} pairs")
    return torch.cat([m12, m21]), torch.cat([m21, m12])


def match_loss(pred: dict, batch: dict) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy of the supervised cross-attention logits (``pred['xattn_logits1'/'2']``: per decoder
    block (rows, heads, N queries, M keys)) against the true key token, over valid tokens, all blocks and heads
    weighted equally; also the argmax accuracy (share of valid queries whose top key is the true token)."""
    total, correct, count, terms = None, 0.0, 0.0, 0
    for dec in ("1", "2"):
        blocks = pred["xattn_logits" + dec]
        target = match_targets(batch, blocks[0].shape[0])[int(dec) - 1].to(blocks[0].device)
        for logits in blocks:
            rows, heads, n, m = logits.shape
            t = target[:, None, :].expand(rows, heads, n).reshape(-1)
            flat = logits.float().reshape(-1, m)
            ce = F.cross_entropy(flat, t, ignore_index=-1, reduction="sum")
            valid = (t >= 0).sum()
            term = ce / valid.clamp_min(1)
            total = term if total is None else total + term
            terms += 1
            with torch.no_grad():
                correct += float(((flat.argmax(-1) == t) & (t >= 0)).sum())
                count += float(valid)
    loss = total / terms
    return loss, {"match": float(loss.detach()), "match_acc": correct / max(count, 1.0),
                  "match_valid": count / max(terms, 1)}
