"""How far could a correspondence-based cross-time head go with a given network's geometry?

A cross-time map can be read off the other view instead of regressed: for a pixel p of image 1 that sees surface
point X, ``P1(t2,π1)[p] = P2(t2,π1)[q]`` where q is the pixel of image 2 that sees X at t2 (view 2 likewise with
``P1(t1,π1)``). ``correspondence_bound`` builds those maps with the *ground-truth* correspondence q(p) (from the
synthetic pair: ``p1_t2_pi2`` projected through K) and the *ground-truth* moving mask as the gate, on top of the
network's own same-time maps; moving pixels whose point is hidden or outside the other image at that time keep the
static answer. Its object-flow EPE is a lower bound for any such head on this network: if it is not
well below the static baseline's, the geometry (not the motion head) is what limits object flow.

``parallax_gain`` asks whether the network uses the second view to place view 1's points at all (triangulation)
or predicts view 1's depth monocularly: Lrel of P1(t1,π1) (and P2(t2,π1)) against the true pair's ground truth,
with the true I2, with I2 := I1 (no parallax) and with I2 := the next pair's I2. The gain
``Lrel(P1(t1,π1) | I2 := I1) − Lrel(P1(t1,π1) | true I2)`` is ~0 for a monocular network and > 0 when the second
view's parallax helps.

Run: ``python -m dpm_ros.training.diagnose --weights engines/dpm_small.safetensors --pairs 200``
     ``python -m dpm_ros.training.diagnose --weights W --parallax --family flying --pairs 64``
"""
from __future__ import annotations

import argparse

import numpy as np


def project_to_pixels(points: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest pixel (row, col) of each point (H, W, 3, camera optical frame) through K, and a mask of those in
    front of the camera and inside the H×W image."""
    h, w = points.shape[:2]
    z = points[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = K[0, 0] * points[..., 0] / z + K[0, 2]
        v = K[1, 1] * points[..., 1] / z + K[1, 2]
    ok = (z > 0) & np.isfinite(u) & np.isfinite(v)
    col = np.rint(np.where(ok, u, 0.0)).astype(np.int64)   # pixel (row r, col c) is ray K⁻¹(c, r, 1) (make_pair)
    row = np.rint(np.where(ok, v, 0.0)).astype(np.int64)
    ok &= (col >= 0) & (col < w) & (row >= 0) & (row < h)
    return row.clip(0, h - 1), col.clip(0, w - 1), ok


def correspondence_maps(pred: dict, sample: dict) -> dict:
    """``pred`` with its pass-1 cross-time maps replaced by the same-time map of the other view at the true
    corresponding pixel, on ground-truth moving pixels (elsewhere the static answer); gates = ground truth."""
    from dpm_ros.training.evaluate import static_from
    out = static_from(pred)
    K = np.asarray(sample["K"], np.float64)
    for cross, other, target, seen, valid_other, moving in (
            # X at t2 in camera 2's frame, what camera 2 sees at t2; view 2 likewise at t1 in camera 1
            ("p1_t2_pi1", "p2_t2_pi1", sample["p1_t2_pi2"], sample["p2_t2_pi2"], sample["valid2"], sample["moving1"]),
            ("p2_t1_pi1", "p1_t1_pi1", sample["p2_t1_pi1"], sample["p1_t1_pi1"], sample["valid1"], sample["moving2"])):
        target = np.asarray(target, np.float64)
        row, col, ok = project_to_pixels(target, K)
        ok &= np.asarray(valid_other, bool)[row, col]
        # visible: the other camera's pixel sees X itself (same depth within 2 %), not an occluder or the background
        seen_z = np.asarray(seen, np.float64)[row, col, 2]
        ok &= np.abs(seen_z - target[..., 2]) <= 0.02 * np.abs(target[..., 2])
        use = np.asarray(moving, bool) & ok
        m = np.array(out[cross], copy=True)
        m[use] = np.asarray(pred[other])[row[use], col[use]]
        out[cross] = m
    out["motion_prob_1"] = np.asarray(sample["moving1"], np.float32)
    out["motion_prob_2"] = np.asarray(sample["moving2"], np.float32)
    return out


def correspondence_bound(preds: list[dict], samples: list[dict]) -> dict:
    """{"model", "static", "corr_bound"}: aggregated held-out metrics (evaluate.aggregate) of the
    network's predictions, its static baseline and the ground-truth-correspondence maps built on it."""
    from dpm_ros.training.evaluate import aggregate, pair_metrics, static_from
    rows = {"model": [], "static": [], "corr_bound": []}
    for p, s in zip(preds, samples):
        rows["model"].append(pair_metrics(p, s))
        rows["static"].append(pair_metrics(static_from(p), s))
        rows["corr_bound"].append(pair_metrics(correspondence_maps(p, s), s))
    return {k: aggregate(v) for k, v in rows.items()}


PARALLAX_MAPS = ("p1_t1_pi1", "p2_t2_pi1")
PARALLAX_VARIANTS = ("true_I2", "I2=I1", "I2=other")


def parallax_gain(predict, samples: list[dict], variants: tuple[str, ...] = PARALLAX_VARIANTS) -> dict:
    """``predict(samples) -> list of prediction dicts`` (e.g. ``lambda s: predict_model(net, s)``) on the pairs
    as they are (``true_I2``), with ``img2 := img1`` (``I2=I1``) and with ``img2 :=`` the next pair's ``img2``
    (``I2=other``; leave it out of ``variants`` to save a pass); every variant is scored against the true pair's
    ground truth after the shared per-pair normalisation. Returns ``{variant: {map: mean Lrel}}`` for
    :data:`PARALLAX_MAPS` plus ``"gain"``: ``{map: Lrel(I2=I1) − Lrel(true_I2)}`` (> 0: the true second view helps
    that map)."""
    from dpm_ros.geometry.metrics import lrel, normalise_pair
    from dpm_ros.training.evaluate import POINT_MAP_NAMES
    n = len(samples)
    if n < 2:
        raise ValueError(f"parallax_gain needs at least 2 pairs (I2=other uses the next pair), got {n}")
    if not {"true_I2", "I2=I1"} <= set(variants) <= set(PARALLAX_VARIANTS):
        raise ValueError(f"variants must include 'true_I2' and 'I2=I1', all among {PARALLAX_VARIANTS}; got {variants}")
    build = {"true_I2": lambda: samples,
             "I2=I1": lambda: [dict(s, img2=s["img1"]) for s in samples],
             "I2=other": lambda: [dict(s, img2=samples[(i + 1) % n]["img2"]) for i, s in enumerate(samples)]}
    out: dict = {}
    for name in variants:
        inputs = build[name]()
        vals = {k: [] for k in PARALLAX_MAPS}
        for p, s in zip(predict(inputs), samples):          # ground truth: always the true pair's
            valid = {m: (s["valid1"] if m[1] == "1" else s["valid2"]) for m in POINT_MAP_NAMES}
            ph, pg, _ = normalise_pair({m: p[m] for m in POINT_MAP_NAMES}, {m: s[m] for m in POINT_MAP_NAMES}, valid)
            for k in vals:
                vals[k].append(lrel(ph[k], pg[k], valid[k]))
        out[name] = {k: float(np.mean(v)) for k, v in vals.items()}
    out["gain"] = {k: out["I2=I1"][k] - out["true_I2"][k] for k in PARALLAX_MAPS}
    return out


def main(argv=None) -> int:
    from dpm_ros.training.evaluate import format_tables, load_eval_set, load_weights, predict_model
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help=".safetensors (+ .json) or a dpm train last.pt")
    ap.add_argument("--pairs", type=int, default=200, help="held-out pairs (seeds 0..N-1)")
    ap.add_argument("--family", choices=("room", "flying"), default="room", help="held-out scene family")
    ap.add_argument("--parallax", action="store_true",
                    help="print the parallax gain (JSON) instead of the correspondence bound")
    args = ap.parse_args(argv)
    net = load_weights(args.weights)
    samples = load_eval_set(args.pairs, net.config.height, net.config.width, family=args.family)
    if args.parallax:
        import json
        res = parallax_gain(lambda s: predict_model(net, s, progress=False), samples)
        print(json.dumps({k: {m: round(v, 4) for m, v in d.items()} for k, d in res.items()}, indent=1))
        return 0
    print(format_tables(correspondence_bound(predict_model(net, samples), samples)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
