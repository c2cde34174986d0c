"""``dpm record OUT.mcap TOPIC...``: record topics over DDS into MCAP with schemas, without rosbag2."""
from __future__ import annotations

HELP = "record topics over DDS into an MCAP bag"


def add_arguments(parser) -> None:
    parser.add_argument("out", help="output: OUT.mcap (one MCAP file) or a folder name (rosbag2 folder, MCAP)")
    parser.add_argument("topics", nargs="+", metavar="TOPIC", help="topics to record (subscribed when they appear)")
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    parser.add_argument("--max-messages", type=int, default=None, metavar="N", help="stop after N messages in all")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT when it is a bag (file or rosbag2 folder), once the new one is complete")
    parser.add_argument("--use-sim-time", action="store_true", help="stamp messages with /clock time")


def run(args) -> int:
    import signal
    import sys
    import threading

    import rclpy
    from rclpy.parameter import Parameter
    from rclpy.signals import SignalHandlerOptions

    from dpm_ros.ros.bag_recorder import BagRecorder, BagWriter

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    writer = BagWriter(args.out, overwrite=args.overwrite, live=True)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("dpm_record", parameter_overrides=[
        Parameter("use_sim_time", Parameter.Type.BOOL, bool(args.use_sim_time))])
    try:
        recorder = BagRecorder(node, writer, args.topics, duration=args.duration,
                               max_messages=args.max_messages, stop=stop)
        counts = recorder.record()
    finally:
        path = writer.close()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    summary = ", ".join(f"{t}: {n}" for t, n in counts.items()) or "nothing"
    print(f"dpm record: wrote {sum(counts.values())} messages to {path} ({summary})", file=sys.stderr, flush=True)
    return 0
