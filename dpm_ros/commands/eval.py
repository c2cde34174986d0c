"""``dpm eval``: the paper's Tables 7 and 8 (+ motion-mask IoU, ego-motion RPE) on the held-out synthetic set,
for ``model`` (the weights), ``static`` (the same weights, cross-time maps := same-time maps) and ``oracle``
(ground truth through the same metrics; must be ~0).

    dpm eval --weights engines/dpm_small.safetensors --pairs 200 --json runs/eval.json
"""
from __future__ import annotations

import sys
from pathlib import Path

METHODS = ("model", "static", "oracle")


def add_arguments(parser) -> None:
    parser.add_argument("--weights", default="engines/dpm_small.safetensors",
                        help="model weights (.safetensors with its .json beside it, or a training checkpoint last.pt)")
    parser.add_argument("--pairs", type=int, default=200, help="held-out pairs (seeds 0..N-1, never trained on)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of model,static,oracle")
    parser.add_argument("--height", type=int, default=None, help="evaluation resolution: the model runs at it too "
                        "(any multiple of its patch size; default: the model's)")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--family", choices=("room", "flying"), default="room",
                        help="held-out scene family: room (the card's set) or flying (random primitives, "
                             "robot / hand-held camera motions)")
    parser.add_argument("--batch", type=int, default=16, help="pairs per forward pass")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--cache-dir", default=None, help="where the generated held-out set is cached as .npz "
                        "(default: $XDG_CACHE_HOME/dpm_ros/eval, i.e. ~/.cache/dpm_ros/eval)")
    parser.add_argument("--no-cache", action="store_true", help="regenerate the held-out set, write no cache")
    parser.add_argument("--json", default=None, help='write {"methods": {method: {metric: value}}} here')
    parser.add_argument("--real-data", default=None, metavar="DIR",
                        help="also report scale-aligned depth AbsRel / δ<1.25 on the real pairs under DIR "
                             "(../shared/data: FlyingThings3D, Middlebury)")
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    import torch

    from dpm_ros.training import evaluate as ev
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise ValueError(f"--methods: unknown {unknown or methods} (use a subset of {','.join(METHODS)})")
    if args.pairs < 1 or args.batch < 1:
        raise ValueError(f"--pairs and --batch must be >= 1, got {args.pairs} and {args.batch}")
    torch.set_num_threads(args.threads)
    progress = not args.no_progress
    net = None
    if {"model", "static"} & set(methods):
        net = ev.load_weights(Path(args.weights))
        height, width = args.height or net.config.height, args.width or net.config.width
    else:
        height, width = args.height or 64, args.width or 64
    cache = None if args.no_cache else (Path(args.cache_dir) if args.cache_dir else "default")
    samples = ev.load_eval_set(args.pairs, height, width, cache, progress, family=args.family)
    predictions = {}
    if net is not None:
        model_preds = ev.predict_model(net, samples, args.batch, progress)
        if "model" in methods:
            predictions["model"] = model_preds
        if "static" in methods:
            predictions["static"] = [ev.static_from(p) for p in model_preds]
    if "oracle" in methods:
        predictions["oracle"] = [ev.oracle_from(s) for s in samples]
    predictions = {m: predictions[m] for m in methods}
    results = ev.evaluate_methods(predictions, samples, progress)
    print(ev.format_tables(results))
    real = None
    if args.real_data and net is not None:
        from dpm_ros.training.real_eval import evaluate_real_depth, format_table
        from dpm_ros.engine.torch_backend import TorchEngine
        engine = TorchEngine(net, device="cpu", symmetric=True, source=str(args.weights), height=height, width=width)
        real = evaluate_real_depth(engine, Path(args.real_data))
        print("\nscale-aligned depth of P1(t1,pi1) on real pairs\n" + format_table(real))
    if args.json:
        ev.write_json(results, Path(args.json), real)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
