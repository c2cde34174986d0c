"""Evaluation metrics of dpm_theory.md (the paper's Tables 7 and 8): per-pair scale normalisation, Lrel, 3D EPE,
pose RPE, mask IoU/F1; trajectory APE/RPE in the convention of the ``evo`` tool are in ``trajectory.py`` and
re-exported here."""
from __future__ import annotations

import numpy as np

from dpm_ros.geometry._checks import as_mask, as_points, finite_rows, same_shape
from dpm_ros.geometry.procrustes import rotation_angle_deg
from dpm_ros.geometry.trajectory import ape_rmse, associate, ape, read_tum, rpe_trajectory  # noqa: F401


def _valid(pred, gt, valid, what):
    p = as_points(pred, f"{what} prediction")
    g = as_points(gt, f"{what} ground truth")
    same_shape(p, g, f"{what} prediction", f"{what} ground truth")
    ok = finite_rows(p) & finite_rows(g)
    if valid is not None:
        ok &= as_mask(valid, p.shape[:-1], f"{what} valid")
    if not ok.any():
        raise ValueError(f"{what}: no valid pixels (all NaN/inf or masked out)")
    return p, g, ok


def normalise_pair(pred: dict, gt: dict, valid: dict | None = None):
    """Divide prediction and ground truth of one pair each by its mean distance to the origin over the valid pixels
    of all the given maps (one factor per side, shared by the maps, so their relative geometry is kept).

    ``pred``/``gt``: {name: (H, W, 3)} with the same names; ``valid``: optional {name: bool (H, W)} (missing names:
    all pixels); a pixel counts where both sides are finite and valid. Returns ``(pred_n, gt_n, (f_pred, f_gt))``.
    """
    if set(pred) != set(gt) or not pred:
        raise ValueError(f"normalise_pair: prediction and ground truth must hold the same maps, got "
                         f"{sorted(pred)} and {sorted(gt)}")
    sums = np.zeros(2)
    count = 0
    masks = {}
    for name in pred:
        p, g, ok = _valid(pred[name], gt[name], None if valid is None else valid.get(name), name)
        masks[name] = ok
        sums += [np.linalg.norm(p[ok].astype(np.float64), axis=-1).sum(),
                 np.linalg.norm(g[ok].astype(np.float64), axis=-1).sum()]
        count += int(ok.sum())
    fp, fg = sums / count
    if not (fp > 0 and fg > 0):
        raise ValueError("normalise_pair: a side has all points at the origin; its scale is undefined")
    out_p = {k: np.where(masks[k][..., None], np.asarray(v, dtype=np.float64) / fp, np.nan) for k, v in pred.items()}
    out_g = {k: np.where(masks[k][..., None], np.asarray(v, dtype=np.float64) / fg, np.nan) for k, v in gt.items()}
    return out_p, out_g, (float(fp), float(fg))


def lrel(pred, gt, valid=None) -> float:
    """Lrel of one map: mean over valid pixels of ``‖p̂ − p‖ / ‖p‖``. Apply :func:`normalise_pair` first (Lrel is
    not scale-invariant). Pixels with NaN/inf on either side or ``‖p‖ = 0`` are excluded."""
    p, g, ok = _valid(pred, gt, valid, "lrel")
    gn = np.linalg.norm(g[ok], axis=-1)
    nz = gn > 0
    if not nz.any():
        raise ValueError("lrel: every valid ground-truth point is at the origin")
    return float(np.mean(np.linalg.norm(p[ok][nz] - g[ok][nz], axis=-1) / gn[nz]))


def epe(pred_flow, gt_flow, valid=None) -> float:
    """3D end-point error: mean over valid pixels of ``‖f̂ − f‖₂`` (after the same normalisation as Lrel)."""
    p, g, ok = _valid(pred_flow, gt_flow, valid, "epe")
    return float(np.mean(np.linalg.norm(p[ok] - g[ok], axis=-1)))


def rpe(R_pred, t_pred, R_gt, t_gt) -> tuple[float, float]:
    """Relative pose error of one motion: rotation ``angle(R̂ᵀR)`` in degrees and translation ``‖t̂ − t‖`` (units
    of t). Average over objects/pairs yourself."""
    rp, rg = np.asarray(R_pred, dtype=np.float64), np.asarray(R_gt, dtype=np.float64)
    if rp.shape != (3, 3) or rg.shape != (3, 3):
        raise ValueError(f"rpe: rotations must be 3x3, got {rp.shape} and {rg.shape}")
    tp, tg = np.asarray(t_pred, dtype=np.float64).reshape(-1), np.asarray(t_gt, dtype=np.float64).reshape(-1)
    if tp.shape != (3,) or tg.shape != (3,):
        raise ValueError(f"rpe: translations must have 3 elements, got {tp.shape} and {tg.shape}")
    if not (np.isfinite(rp).all() and np.isfinite(rg).all() and np.isfinite(tp).all() and np.isfinite(tg).all()):
        raise ValueError("rpe: poses contain NaN/inf")
    return float(rotation_angle_deg(rp.T @ rg)), float(np.linalg.norm(tp - tg))


def _confusion(pred, gt, valid):
    g = np.asarray(gt)
    p = as_mask(pred, g.shape, "predicted mask")
    g = as_mask(g, g.shape, "ground-truth mask")
    if valid is not None:
        v = as_mask(valid, g.shape, "valid")
        p, g = p[v], g[v]
    tp = int(np.count_nonzero(p & g))
    return tp, int(np.count_nonzero(p & ~g)), int(np.count_nonzero(~p & g))


def mask_iou(pred, gt, valid=None) -> float:
    """IoU of a predicted motion mask against ground-truth moving pixels: ``|P ∩ G| / |P ∪ G|``.
    Raises ValueError when both masks are empty (IoU undefined)."""
    tp, fp, fn = _confusion(pred, gt, valid)
    if tp + fp + fn == 0:
        raise ValueError("mask_iou: both masks are empty (no moving pixels predicted or labelled); IoU is undefined")
    return tp / (tp + fp + fn)


def mask_f1(pred, gt, valid=None) -> float:
    """F1 of a predicted motion mask against ground truth: ``2|P ∩ G| / (|P| + |G|)``.
    Raises ValueError when both masks are empty."""
    tp, fp, fn = _confusion(pred, gt, valid)
    if tp + fp + fn == 0:
        raise ValueError("mask_f1: both masks are empty (no moving pixels predicted or labelled); F1 is undefined")
    return 2 * tp / (2 * tp + fp + fn)
