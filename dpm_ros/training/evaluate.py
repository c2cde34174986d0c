"""Held-out evaluation: the paper's Table 7 (Lrel of the four maps, object pose RPE) and Table 8 (scene- and
object-flow EPE), plus motion-mask IoU and ego-motion RPE, for ``model``, ``static`` and ``oracle``.

The held-out set is ``n`` dynamic pairs from make_pair with seeds EVAL_SEED_BASE + i (< TRAIN_SEED_BASE: disjoint
from every training seed) at the generator's default (realistic) motion, cached as .npz (no pickle: loading it cannot
run code) under the per-user
cache folder ($XDG_CACHE_HOME/dpm_ros/eval, see ``default_eval_cache_dir``), keyed by a hash of the generator's
source and verified (sha256 and key recorded in a JSON beside it) before use. Every metric uses
dpm_ros.geometry.metrics after the shared per-pair normalisation
of dpm_theory.md: prediction and ground truth of pass 1 are each divided by their mean distance to the origin over
the valid pixels of the four maps. Scene flow mixes the passes: pass 2 is brought to pass 1's scale with the Sim(3)
scale of the pixel-aligned ego-motion first. Object poses: dpm_ros.geometry.object_motion on each ground-truth
instance mask vs the true motion in camera 1. Ego-motion: the pixel-aligned form vs the true T_c1_c2. Motion masks:
the seed's ε-threshold mask of the predicted maps (``mask_iou``, ``mask_iou_view2``) and the learned gate m > 0.5
(``mask_iou_learned*``) against make_pair's moving pixels (pixels of moving objects). Translations are in
normalised units; rotations in degrees.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from dpm_ros import ALL_POINT_MAP_NAMES, POINT_MAP_NAMES
from dpm_ros.training.data import TRAIN_SEED_BASE, DataConfig, generate_sample
from dpm_ros.training.loss import KIND_DYNAMIC

EVAL_SEED_BASE = 0
METRIC_KEYS = ("lrel_p1_t1_pi1", "lrel_p2_t1_pi1", "lrel_p1_t2_pi1", "lrel_p2_t2_pi1", "sf_epe_fwd", "sf_epe_bwd",
               "of_epe_fwd", "of_epe_bwd", "obj_rpe_rot_deg", "obj_rpe_trans", "mask_iou", "mask_iou_view2",
               "ego_rpe_rot_deg", "ego_rpe_trans")
EXTRA_KEYS = ("mask_iou_learned", "mask_iou_learned_view2")
# cross-time map -> the same-time map a static (MonST3R-style) model predicts for it
STATIC_SUBSTITUTES = {"p1_t2_pi1": "p1_t1_pi1", "p2_t1_pi1": "p2_t2_pi1",
                      "p2_t1_pi2": "p2_t2_pi2", "p1_t2_pi2": "p1_t1_pi2"}
MIN_OBJECT_PIXELS = 10


def eval_seeds(n: int) -> range:
    if n < 1 or EVAL_SEED_BASE + n > TRAIN_SEED_BASE:
        raise ValueError(f"eval set size must be in [1, {TRAIN_SEED_BASE - EVAL_SEED_BASE}], got {n}")
    return range(EVAL_SEED_BASE, EVAL_SEED_BASE + n)


def generator_version() -> str:
    """Short hash of the synthetic generator's source: a cached held-out set is reused only for the same code."""
    import hashlib
    import dpm_ros.synthetic as synthetic
    h = hashlib.sha256()
    for f in sorted(Path(synthetic.__file__).parent.glob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:10]


def default_eval_cache_dir() -> Path:
    """Per-user cache folder for held-out sets: $XDG_CACHE_HOME/dpm_ros/eval (default ~/.cache/dpm_ros/eval)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dpm_ros" / "eval"


SAMPLE_ARRAYS = ALL_POINT_MAP_NAMES + ("img1", "img2", "valid1", "valid2", "moving1", "moving2", "K", "T_w_c1",
                                       "T_w_c2", "instances1", "instances2")


def _cache_key(n: int, height: int, width: int, family: str = "room") -> dict:
    key = dict(format=1, n=n, height=height, width=width, seed_base=EVAL_SEED_BASE, generator=generator_version())
    if family != "room":        # the rooms' key (and so their cache files) as before
        key["family"] = family
    return key


def _save_eval_cache(path: Path, samples: list[dict], key: dict) -> None:
    """Write ``samples`` as one .npz (plain arrays only) and its key + sha256 as ``path``.json, atomically."""
    arrays = {}
    for i, s in enumerate(samples):
        for name in SAMPLE_ARRAYS:
            arrays[f"{i}/{name}"] = np.asarray(s[name])
        ids = sorted(s["object_motions"])
        arrays[f"{i}/object_ids"] = np.asarray(ids, np.int64)
        arrays[f"{i}/object_motions"] = np.asarray([s["object_motions"][k] for k in ids], float).reshape(-1, 4, 4)
        arrays[f"{i}/kind"] = np.asarray(s["kind"], np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    tmp.replace(path)
    meta = path.with_name(path.name + ".json")
    tmp_meta = meta.with_name(f".{meta.name}.{os.getpid()}.tmp")
    tmp_meta.write_text(json.dumps(dict(key, sha256=digest)))
    tmp_meta.replace(meta)


def _load_eval_cache(path: Path, key: dict) -> list[dict] | None:
    """The cached samples when ``path`` and its JSON exist, the key matches and the sha256 verifies; else None
    (a stale or damaged cache is said and regenerated). Loaded with allow_pickle=False: no code runs from it."""
    meta_path = path.with_name(path.name + ".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        data = path.read_bytes()
        if {k: meta.get(k) for k in key} != key or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            raise ValueError("key or sha256 does not match")
        import io
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            samples = []
            for i in range(key["n"]):
                s = {name: z[f"{i}/{name}"] for name in SAMPLE_ARRAYS}
                s["object_motions"] = {int(k): T for k, T in zip(z[f"{i}/object_ids"], z[f"{i}/object_motions"])}
                s["kind"] = int(z[f"{i}/kind"])
                samples.append(s)
        return samples
    except (OSError, ValueError, KeyError) as exc:
        print(f"dpm eval: warning: ignoring the held-out cache {path} ({exc}); regenerating it", file=sys.stderr)
        return None


def load_eval_set(n: int, height: int, width: int, cache_dir: Path | None | str = "default",
                  progress: bool = True, family: str = "room") -> list[dict]:
    """The held-out pairs (generate_sample dicts), from the verified .npz cache in ``cache_dir`` (default: the
    per-user ``default_eval_cache_dir()``; None: no cache) when present, else generated and cached.
    ``family`` "room" (the orbit camera of the model card's set) or "flying" (its CAMERA_MODES motions); no
    photometric augmentation."""
    cache = None
    key = _cache_key(n, height, width, family)
    if cache_dir is not None:
        folder = default_eval_cache_dir() if cache_dir == "default" else Path(cache_dir)
        tag = "" if family == "room" else f"_{family}"
        cache = folder / f"eval_{n}_{height}x{width}{tag}_seed{EVAL_SEED_BASE}_{key['generator']}.npz"
        samples = _load_eval_cache(cache, key)
        if samples is not None:
            for sample in samples:
                sample["family"] = family
            return samples
    cfg = DataConfig(height=height, width=width)
    seeds = eval_seeds(n)
    if progress:
        from tqdm import tqdm
        seeds = tqdm(seeds, desc="held-out pairs", unit="pair")
    motion = "modes" if family == "flying" else "orbit"
    samples = [generate_sample(s, cfg, KIND_DYNAMIC, 1.0, family=family, camera_motion=motion) for s in seeds]
    if cache is not None:
        try:
            _save_eval_cache(cache, samples, key)
        except OSError as exc:
            print(f"dpm eval: warning: cannot write the held-out cache {cache} ({exc}); continuing without it",
                  file=sys.stderr)
    return samples


def load_weights(path: Path):
    """A network from shipped weights (.safetensors + .json) or from a training checkpoint (``last.pt``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights {path} not found (train with `dpm train`, or --methods oracle)")
    if path.suffix == ".pt":
        import torch
        from dpm_ros.model import DPMConfig, DPMNet
        state = torch.load(path, map_location="cpu", weights_only=True)
        if "model" not in state or "model_config" not in state:
            raise ValueError(f"{path}: not a `dpm train` checkpoint (no 'model' / 'model_config')")
        net = DPMNet(DPMConfig.from_dict(state["model_config"]))
        net.load_state_dict(state["model"])
        return net.eval()
    from dpm_ros.model.checkpoint import load_model
    return load_model(path)


def predict_model(net, samples: list[dict], batch: int = 16, progress: bool = True) -> list[dict]:
    """Symmetric forward of the network on every pair: list of dicts of numpy maps/confidences per pair."""
    import torch
    from dpm_ros.model import preprocess
    net.eval()
    out: list[dict] = []
    starts = range(0, len(samples), batch)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="model", unit="batch")
    with torch.inference_mode():
        for s in starts:
            chunk = samples[s:s + batch]
            img1 = preprocess(np.stack([c["img1"] for c in chunk]))
            img2 = preprocess(np.stack([c["img2"] for c in chunk]))
            pred = net(img1, img2)
            for b in range(len(chunk)):
                out.append({k: v[b].float().numpy() for k, v in pred.items()})
    return out


def static_from(pred: dict) -> dict:
    """The same prediction with every cross-time map replaced by its same-time map (what a static model says)."""
    out = dict(pred)
    for key in ("motion_prob_1", "motion_prob_2"):
        if key in pred:
            out[key] = np.zeros_like(pred[key])
    for cross, same in STATIC_SUBSTITUTES.items():
        if same in pred:
            out[cross] = pred[same]
            if "conf_" + same in pred:
                out["conf_" + cross] = pred["conf_" + same]
    return out


def oracle_from(sample: dict) -> dict:
    """Ground truth served as a prediction (every metric must then be ~0, IoU 1)."""
    out = {n: sample[n] for n in ALL_POINT_MAP_NAMES}
    out.update({"conf_" + n: np.ones(sample[n].shape[:2], np.float32) for n in ALL_POINT_MAP_NAMES})
    out["motion_prob_1"] = sample["moving1"].astype(np.float32)
    out["motion_prob_2"] = sample["moving2"].astype(np.float32)
    return out


def _rigid_in_camera1(M_w: np.ndarray, T_w_c1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A world-frame motion (4×4, t1 → t2) expressed in camera 1's optical frame: T_c1_w·M·T_w_c1 -> (R, t)."""
    T = np.linalg.inv(T_w_c1) @ M_w @ T_w_c1
    return T[:3, :3], T[:3, 3]


def _iou_or_nan(pred_mask, gt_mask, valid) -> float:
    from dpm_ros.geometry.metrics import mask_iou
    try:
        return mask_iou(pred_mask, gt_mask, valid)
    except ValueError:  # both empty: undefined, left out of the mean
        return float("nan")


def pair_metrics(pred: dict, sample: dict, eps_rel: float = 0.02) -> dict:
    """Every metric of one pair (lists for per-object RPE); conventions in the module docstring.

    pred: the eight maps (model units, each pass in its own camera-1 frame), ``conf_*``, optional
    ``motion_prob_1/2``; sample: a generate_sample dict (ground truth in metres)."""
    from dpm_ros.geometry import ego_motion, motion_mask, object_motion
    from dpm_ros.geometry.metrics import epe, lrel, normalise_pair, rpe
    v1, v2 = sample["valid1"], sample["valid2"]
    valid = {n: (v1 if n[1] == "1" else v2) for n in ALL_POINT_MAP_NAMES}
    ph, pg, (fp, fg) = normalise_pair({n: pred[n] for n in POINT_MAP_NAMES}, {n: sample[n] for n in POINT_MAP_NAMES},
                                      {n: valid[n] for n in POINT_MAP_NAMES})
    m: dict = {}
    for n in POINT_MAP_NAMES:
        m["lrel_" + n] = lrel(ph[n], pg[n], valid[n])
    # object flow (fixed camera 1): OF-F = P1(t2,π1) − P1(t1,π1), OF-B = P2(t1,π1) − P2(t2,π1)
    m["of_epe_fwd"] = epe(ph["p1_t2_pi1"] - ph["p1_t1_pi1"], pg["p1_t2_pi1"] - pg["p1_t1_pi1"], v1)
    m["of_epe_bwd"] = epe(ph["p2_t1_pi1"] - ph["p2_t2_pi1"], pg["p2_t1_pi1"] - pg["p2_t2_pi1"], v2)
    # ego-motion camera 2 -> camera 1 (pixel-aligned form; Sim(3) scale s of pass 1 over pass 2)
    rot_h, t_h, s_h = ego_motion(pred, method="pixel_aligned")
    T_c1_c2 = np.linalg.inv(sample["T_w_c1"]) @ sample["T_w_c2"]
    m["ego_rpe_rot_deg"], m["ego_rpe_trans"] = rpe(rot_h, t_h / fp, T_c1_c2[:3, :3], T_c1_c2[:3, 3] / fg)
    # scene flow spans both passes: SF-F = P1(t2,π2) − P1(t1,π1), SF-B = P2(t1,π1) − P2(t2,π2); pass 2 is brought to
    # pass 1's scale by s (ground truth: metres in both passes) and then normalised like pass 1.
    qh = {n: np.asarray(pred[n], np.float64) * (s_h / fp) for n in ("p1_t2_pi2", "p2_t2_pi2")}
    qg = {n: np.asarray(sample[n], np.float64) / fg for n in ("p1_t2_pi2", "p2_t2_pi2")}
    m["sf_epe_fwd"] = epe(qh["p1_t2_pi2"] - ph["p1_t1_pi1"], qg["p1_t2_pi2"] - pg["p1_t1_pi1"], v1)
    m["sf_epe_bwd"] = epe(ph["p2_t1_pi1"] - qh["p2_t2_pi2"], pg["p2_t1_pi1"] - qg["p2_t2_pi2"], v2)
    # motion masks (seed's ε-threshold on the predicted maps) against ground-truth moving pixels
    mask1 = motion_mask(pred["p1_t1_pi1"], pred["p1_t2_pi1"], eps_rel=eps_rel)
    mask2 = motion_mask(pred["p2_t1_pi1"], pred["p2_t2_pi1"], eps_rel=eps_rel)
    m["mask_iou"] = _iou_or_nan(mask1, sample["moving1"], v1)
    m["mask_iou_view2"] = _iou_or_nan(mask2, sample["moving2"], v2)
    if "motion_prob_1" in pred:  # the learned gate m > 0.5 as a mask
        m["mask_iou_learned"] = _iou_or_nan(pred["motion_prob_1"] > 0.5, sample["moving1"], v1)
        m["mask_iou_learned_view2"] = _iou_or_nan(pred["motion_prob_2"] > 0.5, sample["moving2"], v2)
    # object poses: fitted on each ground-truth instance mask, against the true motion in camera 1
    rots, trans = [], []
    for oid, M_w in sample.get("object_motions", {}).items():
        mask = (sample["instances1"] == oid) & v1
        if mask.sum() < MIN_OBJECT_PIXELS:
            continue
        try:
            r_hat, tr_hat = object_motion(ph["p1_t1_pi1"], ph["p1_t2_pi1"], mask)
        except ValueError:
            continue
        r_gt, tr_gt = _rigid_in_camera1(np.asarray(M_w, np.float64), np.asarray(sample["T_w_c1"], np.float64))
        e_rot, e_t = rpe(r_hat, tr_hat, r_gt, tr_gt / fg)
        rots.append(e_rot)
        trans.append(e_t)
    m["obj_rpe_rot_deg"], m["obj_rpe_trans"] = rots, trans
    return m


def aggregate(per_pair: list[dict]) -> dict:
    """Mean of each metric over pairs (object RPE: over all objects of all pairs); NaNs (undefined) skipped."""
    out = {}
    keys = list(METRIC_KEYS) + [k for k in EXTRA_KEYS if per_pair and k in per_pair[0]]
    for key in keys:
        vals = []
        for m in per_pair:
            v = m[key]
            vals.extend(v if isinstance(v, list) else [v])
        arr = np.asarray(vals, dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        out[key] = float(arr.mean()) if arr.size else float("nan")
    out["n_pairs"] = len(per_pair)
    return out


def evaluate_methods(predictions: dict[str, list[dict]], samples: list[dict], progress: bool = True) -> dict:
    """{method: aggregated metrics} for each method's list of per-pair predictions."""
    results = {}
    for name, preds in predictions.items():
        it = zip(preds, samples)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, total=len(samples), desc=f"metrics {name}", unit="pair")
        results[name] = aggregate([pair_metrics(p, s) for p, s in it])
    return results


def format_tables(results: dict) -> str:
    """Table 7, Table 8 and the extra rows as aligned text, methods side by side."""
    methods = list(results)
    rows = [("Table 7: Lrel P1(t1,pi1)", "lrel_p1_t1_pi1"), ("         Lrel P2(t1,pi1)", "lrel_p2_t1_pi1"),
            ("         Lrel P1(t2,pi1)", "lrel_p1_t2_pi1"), ("         Lrel P2(t2,pi1)", "lrel_p2_t2_pi1"),
            ("         object RPE rot (deg)", "obj_rpe_rot_deg"), ("         object RPE trans", "obj_rpe_trans"),
            ("Table 8: scene flow EPE fwd", "sf_epe_fwd"), ("         scene flow EPE bwd", "sf_epe_bwd"),
            ("         object flow EPE fwd", "of_epe_fwd"), ("         object flow EPE bwd", "of_epe_bwd"),
            ("motion-mask IoU view 1", "mask_iou"), ("motion-mask IoU view 2", "mask_iou_view2"),
            ("ego-motion RPE rot (deg)", "ego_rpe_rot_deg"), ("ego-motion RPE trans", "ego_rpe_trans"),
            ("learned gate m>0.5 IoU view 1", "mask_iou_learned"),
            ("learned gate m>0.5 IoU view 2", "mask_iou_learned_view2")]
    n = results[methods[0]]["n_pairs"] if methods else 0
    lines = [f"{'metric (' + str(n) + ' held-out pairs)':<32}" + "".join(f"{m:>12}" for m in methods)]
    for label, key in rows:
        if all(key in results[m] for m in methods):
            lines.append(f"{label:<32}" + "".join(f"{results[m][key]:>12.4f}" for m in methods))
    return "\n".join(lines)


def write_json(results: dict, path: Path, real: dict | None = None) -> None:
    """``{"methods": {method: {metric: value}}}`` (+ ``"real_depth"``: real_eval.evaluate_real_depth's result)."""
    doc = {"methods": results}
    if real is not None:
        doc["real_depth"] = real
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")
