"""The ``dpm`` command. Each subcommand lives in ``dpm_ros/commands/<name>.py`` and defines
``add_arguments(parser)`` and ``run(args) -> int``; its one-line help is here, in ``SUBCOMMANDS`` (the only place).
Modules are imported only when their
subcommand runs, so ``dpm --help`` is fast and needs neither torch nor ROS."""
from __future__ import annotations

import argparse
import errno
import importlib
import importlib.util
import sys

# name -> one-line help; the module dpm_ros.commands.<name with - as _> implements it.
SUBCOMMANDS = {
    "demo": "synthetic sequence through the full pipeline; writes an overview PNG and a metrics table",
    "synth": "write a synthetic dynamic sequence with ground truth as a rosbag2 (MCAP)",
    "bench": "benchmarks of the hot paths (geometry, network, ONNX Runtime options, training, packing, the node's "
             "image in/out); JSON on stdout",
    "train": "train a DPM network on synthetic data (checkpoints, exact resume)",
    "curve": "continue the shipped model's learning curve from the committed state; evaluate and log a row",
    "eval": "paper-style tables (Lrel, EPE, RPE, mask IoU) on a held-out synthetic set",
    "export": "export weights to ONNX (symmetric pair as one batch)",
    "build-engine": "build a TensorRT engine from an ONNX file (needs an NVIDIA GPU)",
    "replay": "run a rosbag2 through the pipeline offline, writing the node's outputs to a new bag",
    "batch": "run many rosbag2s through the pipeline offline (local worker processes or a Ray cluster), "
             "one output each",
    "play": "publish a rosbag2 over DDS with its original timing",
    "record": "record topics over DDS into an MCAP bag",
    "soak": "drive the node with a synthetic stream and log memory, latency and drops",
    "import": "images (folder, glob, TUM rgb.txt) or a video → a rosbag2 MCAP for dpm play / replay",
}
# subcommands that need ROS 2 (rclpy, and dpm_ros.ros, which `pip install .` leaves out): offered only where both
# import. replay, batch and demo need it through dpm_ros.ros.replay (rclpy's serialisation of the node's messages).
NEEDS_ROS = frozenset({"demo", "replay", "batch", "play", "record", "soak"})
# subcommands whose module name differs from the command ('import' is a Python keyword)
MODULES = {"import": "import_bag"}


def _module_name(command: str) -> str:
    return "dpm_ros.commands." + MODULES.get(command, command.replace("-", "_"))


def ros_available() -> bool:
    """rclpy and this package's ROS layer (``dpm_ros.ros``) are both installed (not with a plain ``pip install .``)."""
    try:
        return all(importlib.util.find_spec(m) is not None for m in ("rclpy", "dpm_ros.ros"))
    except ImportError:
        return False


def available_commands() -> dict[str, str]:
    """Subcommands that can run in this install: their module is present and, for ``NEEDS_ROS``, ROS 2 is."""
    ros = ros_available()
    return {name: text for name, text in SUBCOMMANDS.items()
            if (ros or name not in NEEDS_ROS) and importlib.util.find_spec(_module_name(name))}


def build_parser(load: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpm", description="Dynamic Point Maps: tools around the dpm_ros node.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in available_commands().items():
        p = sub.add_parser(name, help=text, description=text)
        if name == load:
            importlib.import_module(_module_name(name)).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(load=command if command in available_commands() else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(_module_name(args.command))
    try:
        return int(module.run(args) or 0)
    except (FileNotFoundError, ValueError) as exc:  # user errors: one clear line, non-zero exit
        print(f"dpm {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:   # disk full, read-only, no permission: one clear line (the writers cleaned up)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        print(f"dpm {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
