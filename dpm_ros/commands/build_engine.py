"""``dpm build-engine --onnx engines/NAME.onnx [--fp16] [--workspace GB]``: build (ahead of time, on the robot) the
TensorRT engine that ``load_engine`` would build on first start, into the same keyed cache."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--onnx", required=True, help="exported model, e.g. engines/dpm_small.onnx")
    parser.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default="fp16",
                        help="engine precision (default fp16: a strongly typed network whose head tail and norm "
                             "reductions stay FP32; bf16 needs sm_80+)")
    parser.add_argument("--fp16", dest="precision", action="store_const", const="fp16", help="same as --precision fp16")
    parser.add_argument("--workspace", type=float, default=None, metavar="GB",
                        help="TensorRT workspace memory limit in GiB (default: TensorRT's, the whole GPU)")
    parser.add_argument("--cache-dir", default=None,
                        help="engine cache folder (default: beside the ONNX file when writable, else "
                             "~/.cache/dpm_ros/engines; env DPM_ENGINE_CACHE)")
    parser.add_argument("--force", action="store_true", help="rebuild even when a matching engine is cached")


def run(args) -> int:
    import sys
    import time

    from dpm_ros.engine.onnx_model import read_onnx_info
    from dpm_ros.engine.tensorrt_build import get_or_build_engine, tensorrt_unavailable_reason

    info = read_onnx_info(args.onnx)  # clear errors for a missing/corrupt file before touching TensorRT
    reason = tensorrt_unavailable_reason()
    if reason:
        print(f"dpm build-engine: error: TensorRT cannot run here: {reason}. On a machine without an NVIDIA GPU "
              f"the node runs {args.onnx} through ONNX Runtime instead.", file=sys.stderr)
        return 2
    start = time.perf_counter()

    def report(phase: str) -> None:
        print(f"\r[{time.perf_counter() - start:7.1f} s] {phase[:70]:<70}", end="", flush=True)

    print(f"building {info.preset} {info.width}x{info.height} ({args.precision}) from {args.onnx}")
    path, meta, built = get_or_build_engine(args.onnx, args.cache_dir, args.precision, args.workspace,
                                            force=args.force, report=report)
    print()
    key = meta["key"]
    what = f"built in {time.perf_counter() - start:.1f} s" if built else "already cached (use --force to rebuild)"
    print(f"{path}: {what}; TensorRT {key['tensorrt_version']}, {key['gpu_name']} "
          f"(sm_{key['compute_capability'][0]}{key['compute_capability'][1]}), {key['precision']}, "
          f"{path.stat().st_size / 1e6:.1f} MB")
    return 0
