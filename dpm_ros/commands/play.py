"""``dpm play IN``: publish a rosbag2 (MCAP or sqlite3) over DDS with its original timing, without rosbag2."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("bag", help="rosbag2 directory, .mcap file or .db3 file")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    parser.add_argument("--clock", nargs="?", type=float, const=100.0, default=None, metavar="HZ",
                        help="publish /clock from the bag time (default 100 Hz when given without a value)")
    parser.add_argument("--loop", action="store_true", help="play again from the start until Ctrl-C")
    parser.add_argument("--topics", nargs="+", default=None, metavar="TOPIC", help="play only these topics")
    parser.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="S",
                        help="wait up to S seconds until every played topic has a subscriber (default: no wait)")
    parser.add_argument("--delay", type=float, default=0.0, metavar="S", help="sleep S seconds before playing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args) -> int:
    import signal
    import sys
    import threading

    import rclpy
    from rclpy.signals import SignalHandlerOptions

    from dpm_ros.ros.bag_player import BagPlayer

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("dpm_play")
    player = None
    try:
        player = BagPlayer(node, args.bag, rate=args.rate, clock=args.clock is not None,
                           clock_hz=args.clock or 100.0, loop=args.loop, topics=args.topics,
                           wait_for_subscribers=args.wait_for_subscribers, delay=args.delay, stop=stop,
                           progress=not args.no_progress)
        stats = player.play()
        rate = stats.published / stats.wall_s if stats.wall_s > 0 else 0.0
        print(f"dpm play: published {stats.published} messages on {len(player.publishers)} topics in "
              f"{stats.wall_s:.2f} s ({rate:.1f} msg/s){' (stopped)' if stop.is_set() else ''}",
              file=sys.stderr, flush=True)
        if stats.undecodable:
            print(f"dpm play: warning: {stats.undecodable} message(s) were not valid CDR and not published",
                  file=sys.stderr, flush=True)
        return 0
    finally:
        if player is not None:
            player.close()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
