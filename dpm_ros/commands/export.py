"""``dpm export --weights W --height H --width Wd --out engines/NAME.onnx``: a DPM network to a self-describing ONNX
file (fixed size, symmetric pair as one batch). ``--preset P`` without ``--weights`` exports random weights (for
development and benchmarks)."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--weights", help="model weights: .safetensors from dpm train / save_model, or a DUSt3R / "
                                          "MonST3R .pth checkpoint (with --preset, or guessed from its heads)")
    parser.add_argument("--preset", help="model preset (dpm_small, dpm_tiny, dust3r_vitl_512_dpt, ...); without "
                                         "--weights the network is randomly initialised (--seed)")
    parser.add_argument("--height", type=int, help="input/output height in pixels (default: the model's)")
    parser.add_argument("--width", type=int, help="input/output width in pixels (default: the model's)")
    parser.add_argument("--out", required=True, help="output file, e.g. engines/dpm_small.onnx")
    parser.add_argument("--single-pass", action="store_true",
                        help="export only Φ(I1, I2) (four maps) instead of the symmetric pair")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17, default 18)")
    parser.add_argument("--seed", type=int, default=0, help="random-initialisation seed (without --weights)")
    parser.add_argument("--check", action="store_true",
                        help="after export, compare ONNX Runtime with torch on one synthetic pair and print the error")


def load_network(weights: str | None, preset: str | None, seed: int = 0):
    """The DPMNet to export: from ``weights`` (.safetensors / .pth) or a random ``preset``."""
    from pathlib import Path

    import torch

    from dpm_ros.model import build_model, load_dust3r_checkpoint, load_model

    if weights is None:
        if preset is None:
            raise ValueError("give --weights (a trained model) or --preset (random weights)")
        torch.manual_seed(seed)
        return build_model(preset).eval()
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights not found")
    if path.suffix == ".safetensors" and path.with_suffix(".json").is_file():
        model = load_model(path)
        if preset and model.config.preset != preset:
            raise ValueError(f"{path}: holds a {model.config.preset} model, not --preset {preset}")
        return model
    return load_dust3r_checkpoint(path, preset)


def run(args) -> int:
    import time
    from pathlib import Path

    from dpm_ros.engine.cache import file_sha256
    from dpm_ros.engine.export import export_onnx

    start = time.perf_counter()
    model = load_network(args.weights, args.preset, args.seed)
    sha = file_sha256(args.weights) if args.weights else ""
    info = export_onnx(model, args.out, args.height, args.width, symmetric=not args.single_pass, opset=args.opset,
                       weights_sha256=sha)
    out = Path(args.out)
    size = out.stat().st_size + sum(p.stat().st_size for p in out.parent.glob(out.name + ".data"))
    print(f"wrote {out}: {info.preset} {info.width}x{info.height}, symmetric={info.symmetric}, opset {info.opset}, "
          f"{len(info.outputs)} outputs, {size / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s")
    if args.check:
        print(f"check (ONNX Runtime vs torch, max relative error): {parity_check(model, out):.2e}")
    return 0


def parity_check(model, onnx_path) -> float:
    """Max relative error of ONNX Runtime vs torch over all outputs on one synthetic pair."""
    import numpy as np

    from dpm_ros.engine.onnxruntime_backend import OnnxRuntimeEngine
    from dpm_ros.engine.torch_backend import TorchEngine
    from dpm_ros.synthetic import make_pair

    ort_engine = OnnxRuntimeEngine(onnx_path)
    pair = make_pair(0, height=ort_engine.onnx.height, width=ort_engine.onnx.width, renderer="numpy")
    torch_engine = TorchEngine(model, symmetric=ort_engine.onnx.symmetric, height=ort_engine.onnx.height,
                               width=ort_engine.onnx.width)
    ref = torch_engine.infer(pair["img1"], pair["img2"])
    got = ort_engine.infer(pair["img1"], pair["img2"])
    return max(float(np.abs(got[k] - ref[k]).max() / np.abs(ref[k]).max()) for k in got)
