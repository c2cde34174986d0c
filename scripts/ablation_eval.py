#!/usr/bin/env python3
"""One row per model for an architecture ablation (model card, issue 10): held-out rooms and flying scenes at the
model's resolution (Lrel of P1(t1,π1) / P2(t2,π1), object-flow EPE model / static, learned-gate IoU), the parallax
gain on both families (dpm_ros.training.diagnose.parallax_gain), how well the encoder tokens and the decoders'
cross-attention match the true correspondences, and the real pairs (dpm_ros.training.real_eval).

    python scripts/ablation_eval.py --pairs 64 --json runs/ablation.json \
        start=training_state/landscape_run1.safetensors A=runs/abl/A/last.pt B=runs/abl/B/last.pt
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def token_match_rate(net, samples: list[dict], radius: int = 4) -> dict:
    """How well the encoder's tokens could match by themselves: over view-1 tokens whose true correspondence
    (the token centre's point at t2, ``p1_t2_pi2`` projected through K) lies within ``radius`` tokens, the share
    whose cosine-correlation argmax (dpm_ros.model.network.local_correlation) is that token displacement exactly
    (``exact``) or within one token (``within1``); ``zero`` = the share whose true displacement is (0, 0), i.e.
    what "no motion" scores."""
    import numpy as np

    from dpm_ros.model import preprocess
    from dpm_ros.model.network import local_correlation
    from dpm_ros.training.diagnose import project_to_pixels
    c, side = net.config, 2 * radius + 1
    P = c.patch_size
    counts = np.zeros(4)
    with torch.inference_mode():
        for i in range(0, len(samples), 16):
            chunk = samples[i:i + 16]
            B, (H, W) = len(chunk), chunk[0]["img1"].shape[:2]
            rows, cols = H // P, W // P
            x = net.patch_embed(torch.cat([preprocess(np.stack([s[k] for s in chunk])) for k in ("img1", "img2")]))
            rope = net._rope(rows, cols, c.enc_embed_dim // c.enc_num_heads, x.device)
            for blk in net.enc_blocks:
                x = blk(x, *rope)
            x = net.enc_norm(x)
            best = local_correlation(x[:B], x[B:], rows, cols, radius).argmax(-1).reshape(B, rows, cols).numpy()
            yy, xx = np.meshgrid(np.arange(rows) * P + P // 2, np.arange(cols) * P + P // 2, indexing="ij")
            for b, s in enumerate(chunk):
                row, col, ok = project_to_pixels(np.asarray(s["p1_t2_pi2"], np.float64), np.asarray(s["K"], np.float64))
                ok &= np.asarray(s["valid1"], bool)
                dy, dx = np.rint((row[yy, xx] - yy) / P), np.rint((col[yy, xx] - xx) / P)
                good = ok[yy, xx] & (np.abs(dy) <= radius) & (np.abs(dx) <= radius)
                ky, kx = best[b] // side - radius, best[b] % side - radius
                counts += [good.sum(), (good & (ky == dy) & (kx == dx)).sum(),
                           (good & (np.abs(ky - dy) <= 1) & (np.abs(kx - dx) <= 1)).sum(),
                           (good & (dy == 0) & (dx == 0)).sum()]
    exact, within1, zero = (float(v) for v in counts[1:] / counts[0])
    return {"exact": exact, "within1": within1, "zero": zero, "tokens": int(counts[0])}


def xattn_match_rate(net, samples: list[dict]) -> dict:
    """How well the decoders' cross-attention finds the true correspondence (the supervised-matching ablation):
    over valid queries (dpm_ros.training.matching.pair_correspondences: both directions, both decoders, the
    symmetric pass), the share whose highest-logit key is the true token, per block and head (``per_block_head``
    [block][head]), for the supervised heads (``supervised``: heads < MATCH_HEADS of every block) and for all
    (``all``); ``identity`` = the share of valid queries whose true token is their own position (what attending
    to the same place scores); ``moved``: the supervised heads' hit rate over the valid queries whose true token is
    *not* their own position (the part "attend to the same place" cannot get); ``argmax_self``: the share of valid
    queries whose supervised heads' top key is their own position; ``ce_supervised``: mean cross-entropy of the
    supervised heads (ln(N) = uniform)."""
    import numpy as np

    from dpm_ros.model import preprocess
    from dpm_ros.training.matching import MATCH_HEADS, match_targets, pair_correspondences
    c = net.config
    hits = np.zeros((c.dec_depth, c.dec_num_heads))
    ce = np.zeros((c.dec_depth, c.dec_num_heads))
    valid = ident = 0.0
    moved_hits = self_hits = 0.0
    with torch.inference_mode():
        for i in range(0, len(samples), 16):
            chunk = samples[i:i + 16]
            m = [pair_correspondences(s, c.patch_size) for s in chunk]
            batch = {"match12": torch.from_numpy(np.stack([a for a, _ in m])),
                     "match21": torch.from_numpy(np.stack([b for _, b in m]))}
            out = net.forward_raw(preprocess(np.stack([s["img1"] for s in chunk])),
                                  preprocess(np.stack([s["img2"] for s in chunk])), match_heads=c.dec_num_heads)
            rows = out["xattn_logits1"][0].shape[0]
            for dec, target in zip(("1", "2"), match_targets(batch, rows)):
                ok = target >= 0
                valid += float(ok.sum())
                ident += float((ok & (target == torch.arange(target.shape[1]))).sum())
                for b, logits in enumerate(out["xattn_logits" + dec]):
                    logp = logits.float().log_softmax(-1)                   # (rows, heads, N, M)
                    t = target.clamp_min(0)[:, None, :, None].expand(-1, logp.shape[1], -1, 1)
                    okh = ok[:, None, :]
                    hits[b] += ((logits.argmax(-1) == target[:, None, :]) & okh).sum((0, 2)).numpy()
                    ce[b] -= (logp.gather(-1, t)[..., 0] * okh).sum((0, 2)).numpy()
                    top = logits[:, :MATCH_HEADS].argmax(-1)                 # (rows, MATCH_HEADS, N)
                    own = torch.arange(target.shape[1])
                    moved = (ok & (target != own))[:, None, :]
                    moved_hits += float(((top == target[:, None, :]) & moved).sum())
                    self_hits += float(((top == own) & ok[:, None, :]).sum())
    rate = hits / max(valid, 1.0)
    return {"per_block_head": rate.round(4).tolist(), "supervised": float(rate[:, :MATCH_HEADS].mean()),
            "all": float(rate.mean()), "identity": ident / max(valid, 1.0),
            "ce_supervised": float((ce / max(valid, 1.0))[:, :MATCH_HEADS].mean()), "queries": int(valid),
            "moved": moved_hits / max((valid - ident) * c.dec_depth * MATCH_HEADS, 1.0),
            "argmax_self": self_hits / max(valid * c.dec_depth * MATCH_HEADS, 1.0)}


def evaluate_one(path: str, pairs: int, data_root: str) -> dict:
    from dpm_ros.training.diagnose import parallax_gain
    from dpm_ros.training.evaluate import aggregate, load_eval_set, load_weights, pair_metrics, predict_model, \
        static_from
    from dpm_ros.training.real_eval import evaluate_real_depth
    net = load_weights(Path(path))
    h, w = net.config.height, net.config.width
    out: dict = {"weights": path, "corr_radius": net.config.corr_radius, "hw": [h, w]}
    for family in ("room", "flying"):
        samples = load_eval_set(max(pairs, 200), h, w, family=family, progress=False)[:pairs]
        seen: dict = {}

        def predict(inputs, _seen=seen):
            preds = predict_model(net, inputs, progress=False)
            _seen.setdefault("first", preds)        # the first call is the true pairs (parallax_gain's order)
            return preds
        gain = parallax_gain(predict, samples)
        preds = seen["first"]
        model = aggregate([pair_metrics(p, s) for p, s in zip(preds, samples)])
        static = aggregate([pair_metrics(static_from(p), s) for p, s in zip(preds, samples)])
        out[family] = {"parallax": gain, "lrel_p1_t1_pi1": model["lrel_p1_t1_pi1"],
                       "lrel_p2_t2_pi1": model["lrel_p2_t2_pi1"], "of_epe_fwd": model["of_epe_fwd"],
                       "of_epe_fwd_static": static["of_epe_fwd"],
                       "gate_iou": [model.get("mask_iou_learned"), model.get("mask_iou_learned_view2")],
                       "ego_rpe_rot_deg": model["ego_rpe_rot_deg"], "n_pairs": pairs,
                       "token_match": token_match_rate(net, samples), "xattn_match": xattn_match_rate(net, samples)}
    real = evaluate_real_depth(net, *([data_root] if data_root else []))
    out["real"] = {name: {k: r["model"][k] for k in ("abs_rel", "delta1", "rank_corr", "rank_corr_row_rule")}
                   | {"constant_abs_rel": r["constant"]["abs_rel"], "row_rule_rank_corr": r["row_rule"]["rank_corr"]}
                   for name, r in real["datasets"].items()}
    out["real"]["ego_direction_error_deg"] = {k: v["direction_error_deg"] for k, v in real["ego_motion"].items()}
    return out


def table(results: dict) -> str:
    names = list(results)
    rows = [("rooms Lrel P1(t1,π1) / P2(t2,π1)", lambda r: f"{r['room']['lrel_p1_t1_pi1']:.4f} / "
             f"{r['room']['lrel_p2_t2_pi1']:.4f}"),
            ("flying Lrel P1(t1,π1) / P2(t2,π1)", lambda r: f"{r['flying']['lrel_p1_t1_pi1']:.4f} / "
             f"{r['flying']['lrel_p2_t2_pi1']:.4f}"),
            ("parallax gain P1(t1,π1) rooms / flying", lambda r: f"{r['room']['parallax']['gain']['p1_t1_pi1']:+.4f} / "
             f"{r['flying']['parallax']['gain']['p1_t1_pi1']:+.4f}"),
            ("Lrel P1(t1,π1) with I2:=I1, rooms / flying",
             lambda r: f"{r['room']['parallax']['I2=I1']['p1_t1_pi1']:.4f} / "
             f"{r['flying']['parallax']['I2=I1']['p1_t1_pi1']:.4f}"),
            ("OF-EPE fwd model / static, rooms", lambda r: f"{r['room']['of_epe_fwd']:.5f} / "
             f"{r['room']['of_epe_fwd_static']:.5f}"),
            ("learned-gate IoU v1, rooms / flying", lambda r: f"{r['room']['gate_iou'][0]:.3f} / "
             f"{r['flying']['gate_iou'][0]:.3f}"),
            ("encoder-token correlation argmax = true displacement, rooms / flying (no motion: "
             + " / ".join(f"{results[names[0]][f]['token_match']['zero']:.2f}" for f in ("room", "flying")) + ")",
             lambda r: f"{r['room']['token_match']['exact']:.3f} / {r['flying']['token_match']['exact']:.3f}"),
            ("decoder cross-attention argmax = true token, supervised heads, rooms / flying (same position: "
             + " / ".join(f"{results[names[0]][f]['xattn_match']['identity']:.2f}" for f in ("room", "flying"))
             + ")", lambda r: f"{r['room']['xattn_match']['supervised']:.3f} / "
             f"{r['flying']['xattn_match']['supervised']:.3f}"),
            ("… of those, queries whose true token moved (rooms / flying)",
             lambda r: f"{r['room']['xattn_match']['moved']:.3f} / {r['flying']['xattn_match']['moved']:.3f}"),
            ("supervised heads' argmax = own position, rooms / flying",
             lambda r: f"{r['room']['xattn_match']['argmax_self']:.3f} / "
             f"{r['flying']['xattn_match']['argmax_self']:.3f}"),
            ("cross-attention CE of the supervised heads, rooms / flying (uniform: ln N)",
             lambda r: f"{r['room']['xattn_match']['ce_supervised']:.2f} / "
             f"{r['flying']['xattn_match']['ce_supervised']:.2f}"),
            ("Middlebury Spearman GT / row rule", lambda r: f"{r['real']['middlebury']['rank_corr']:.3f} / "
             f"{r['real']['middlebury']['rank_corr_row_rule']:.3f}"),
            ("Middlebury AbsRel", lambda r: f"{r['real']['middlebury']['abs_rel']:.3f}"),
            ("FlyingThings3D Spearman GT / AbsRel", lambda r: f"{r['real']['flyingthings']['rank_corr']:.3f} / "
             f"{r['real']['flyingthings']['abs_rel']:.3f}"),
            ("Middlebury ego direction error L→R / R→L (°)",
             lambda r: " / ".join(f"{v:.1f}" for v in r["real"]["ego_direction_error_deg"].values()))]
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(f(results[n]) for n in names) + " |" for label, f in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", metavar="NAME=WEIGHTS", help=".safetensors or a dpm train last.pt")
    ap.add_argument("--pairs", type=int, default=64, help="held-out pairs per family (seeds 0..N-1)")
    ap.add_argument("--data", default=None, help="real pairs folder (default: real_eval's, ../shared/data)")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for spec in args.models:
        name, _, path = spec.partition("=")
        if not path:
            ap.error(f"{spec!r}: expected NAME=WEIGHTS")
        results[name] = evaluate_one(path, args.pairs, args.data)
        print(f"{name}: done", file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
