"""``dpm record OUT.mcap TOPIC...``: record topics over DDS into MCAP with schemas, without rosbag2."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("out", help="output: OUT.mcap (one MCAP file) or a folder name (rosbag2 folder, MCAP)")
    parser.add_argument("topics", nargs="+", metavar="TOPIC", help="topics to record (subscribed when they appear)")
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    parser.add_argument("--max-messages", type=int, default=None, metavar="N", help="stop after N messages in all")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT when it is a bag (file or rosbag2 folder), once the new one is complete")
    parser.add_argument("--status-every", type=float, default=10.0, metavar="S",
                        help="log received / written / lost counts every S seconds (default 10)")
    parser.add_argument("--flush-every", type=float, default=1.0, metavar="S",
                        help="put the pending MCAP chunk on disk every S seconds (what a kill can lose; default 1)")
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
    if not args.status_every > 0 or not args.flush_every > 0:
        raise ValueError("--status-every and --flush-every must be > 0 seconds")
    writer = BagWriter(args.out, overwrite=args.overwrite, live=True)
    live = writer.live_path if writer.bare else writer.live_path.parent
    print(f"dpm record: writing {live}" + (f" (it replaces {writer.path} when the recording ends)"
                                          if live != writer.path else ""), file=sys.stderr, flush=True)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("dpm_record", parameter_overrides=[
        Parameter("use_sim_time", Parameter.Type.BOOL, bool(args.use_sim_time))])
    recorder = None
    close_error = None
    try:
        recorder = BagRecorder(node, writer, args.topics, duration=args.duration, max_messages=args.max_messages,
                               stop=stop, flush_s=args.flush_every, status_s=args.status_every)
        counts = recorder.record()
    finally:
        if recorder is not None and recorder.write_error:
            writer.abort()                 # no summary after a torn chunk: the file stays readable up to it
            path = live
        else:
            try:
                path = writer.close()
            except OSError as exc:
                close_error, path = f"{type(exc).__name__}: {exc}", live
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    summary = ", ".join(f"{t}: {n}" for t, n in counts.items()) or "nothing"
    print(f"dpm record: wrote {recorder.summary()['written']} messages to {path} (per topic: {summary})",
          file=sys.stderr, flush=True)
    print(f"dpm record: {recorder.status_line()}", file=sys.stderr, flush=True)
    if recorder.write_error or close_error:
        print(f"dpm record: error: the recording is incomplete ({recorder.write_error or close_error}); "
              f"{path} holds the messages of its complete chunks", file=sys.stderr, flush=True)
        return 1
    if recorder.summary()["written"] == 0:
        seen = [t for t, sub in recorder.subscriptions.items() if sub is not None]
        why = (f"subscribed to {', '.join(seen)} but no message arrived" if seen
               else "no publisher of a recordable type appeared on " + ", ".join(recorder.topics))
        print(f"dpm record: error: nothing recorded ({why}); {path} is an empty bag", file=sys.stderr, flush=True)
        return 1
    return 0
