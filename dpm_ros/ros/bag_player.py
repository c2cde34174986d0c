"""Play a rosbag2 (MCAP or sqlite3) over DDS without rosbag2: rosbags reads the CDR bytes, rclpy publishes them raw.

Each connection is published with its recorded type (imported as ``<pkg>.msg.<Name>`` only for a type of the ROS 2
typestore or this package's, never a module named by the file; other topics are skipped with a warning) and its
recorded QoS (``offered_qos_profiles`` of the bag's metadata or MCAP
channel), at the original timing scaled by ``rate``; ``/clock`` (rosgraph_msgs/Clock) follows the bag time when asked.
"""
from __future__ import annotations

import importlib
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dpm_ros.bag import iterate_messages
from dpm_ros.bag import open_bag as open_reader  # noqa: F401  (re-exported: one bag opener for the project)

CAMERA_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def camera_topics(connections) -> list[str]:
    """Topics carrying sensor_msgs/Image or CompressedImage."""
    return sorted({c.topic for c in connections if c.msgtype in CAMERA_TYPES})


def describe_topics(connections) -> str:
    """'/a (pkg/msg/T), /b (...)' for error messages."""
    return ", ".join(sorted({f"{c.topic} ({c.msgtype})" for c in connections})) or "none"


def no_camera_message(path, connections) -> str:
    return (f"bag '{path}' has no camera topic (sensor_msgs/msg/Image or CompressedImage), so dpm_node has nothing "
            f"to process; its topics: {describe_topics(connections)}")


_MSGTYPE = re.compile(r"([A-Za-z][A-Za-z0-9_]*)/(?:msg/)?([A-Z][A-Za-z0-9]*)")


def known_msgtype(msgtype: str, installed: bool = False) -> str | None:
    """'pkg/msg/Name' when ``msgtype`` ('pkg/msg/Name' or 'pkg/Name') is a type this project may import: one of the
    ROS 2 typestore (rosbags' Kilted store) or this package's own (msg/*.msg); with ``installed`` also a type whose
    .msg file an installed interface package ships (share/<pkg>/msg, for types seen on the live graph). Else None:
    a name read from a file never decides which Python module is imported."""
    m = _MSGTYPE.fullmatch(msgtype or "")
    if m is None:
        return None
    name = f"{m.group(1)}/msg/{m.group(2)}"
    from dpm_ros.bag import distro_msgtypes

    if name in distro_msgtypes():
        return name
    from dpm_ros.ros.bag_recorder import SOURCE_MSG_DIR, _msg_file

    if m.group(1) == "dpm_ros" and (SOURCE_MSG_DIR / f"{m.group(2)}.msg").is_file():
        return name
    if installed and _msg_file(name) is not None:
        return name
    return None


def resolve_msg_class(msgtype: str, installed: bool = False):
    """The rclpy message class of 'pkg/msg/Name' (also 'pkg/Name'), or None when it is not a known type (see
    ``known_msgtype``) or cannot be imported."""
    name = known_msgtype(msgtype, installed)
    if name is None:
        return None
    pkg, _, cls = name.split("/")
    try:
        module = importlib.import_module(f"{pkg}.msg")
    except ImportError:
        return None
    return getattr(module, cls, None)


def qos_from_offered(profiles):
    """rclpy QoSProfile for playing a topic recorded with these rosbags ``Qos`` profiles (rosbag2's rule: reliable
    only if every recorded publisher was, transient-local likewise, the largest keep-last depth, else 10). Empty →
    reliable, volatile, keep-last 10."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    if not profiles:
        return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
    reliable = all(p.reliability.name == "RELIABLE" for p in profiles)
    latched = all(p.durability.name == "TRANSIENT_LOCAL" for p in profiles)
    depths = [p.depth for p in profiles if p.history.name == "KEEP_LAST" and p.depth > 0]
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=max(depths) if depths else 10,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


@dataclass
class PlayStats:
    published: int = 0
    loops: int = 0
    skipped_topics: tuple = ()
    wall_s: float = 0.0
    undecodable: int = 0


class BagPlayer:
    """Publishes a bag on ``node``. ``rate``: speed factor; ``clock``: publish /clock at ``clock_hz`` from bag time;
    ``topics``: only these (None = all); ``wait_for_subscribers``: seconds to wait until every played topic has a
    subscriber (0 = do not wait); ``delay``: seconds to sleep before the first message. ``stop`` (threading.Event)
    ends playback early."""

    def __init__(self, node, path, rate: float = 1.0, clock: bool = False, loop: bool = False, topics=None,
                 clock_hz: float = 100.0, wait_for_subscribers: float = 0.0, delay: float = 0.0,
                 stop: threading.Event | None = None, progress: bool = True, log=None):
        if not rate > 0:
            raise ValueError(f"--rate must be > 0, got {rate}")
        if not clock_hz > 0:
            raise ValueError(f"clock rate must be > 0 Hz, got {clock_hz}")
        self.node, self.path, self.rate, self.loop = node, Path(path), float(rate), loop
        self.clock_period = 1.0 / clock_hz
        self.wait_for_subscribers, self.delay = float(wait_for_subscribers), float(delay)
        self.stop = stop or threading.Event()
        self.progress = progress
        self.log = log or (lambda text: print(f"dpm play: {text}", file=sys.stderr, flush=True))
        self.reader = open_reader(self.path)
        known = {c.topic for c in self.reader.connections}
        topics = [t if t.startswith("/") else "/" + t for t in topics] if topics else None
        if topics:
            missing = sorted(set(topics) - known)
            if missing:
                text = (f"bag '{self.path}' has no topic {', '.join(missing)}; its topics: "
                        f"{describe_topics(self.reader.connections)}")
                self.reader.close()
                raise ValueError(text)
        self.connections, self.publishers, skipped = [], {}, []
        self.classes: dict = {}
        self._told_garbage: set = set()
        for conn in self.reader.connections:
            if topics and conn.topic not in topics:
                continue
            cls = resolve_msg_class(conn.msgtype)
            if cls is None:
                skipped.append(f"{conn.topic} ({conn.msgtype})")
                continue
            self.connections.append(conn)
            self.classes[conn.topic] = cls
            if conn.topic not in self.publishers:
                same = [c for c in self.reader.connections if c.topic == conn.topic]
                profiles = [q for c in same for q in getattr(c.ext, "offered_qos_profiles", None) or []]
                self.publishers[conn.topic] = node.create_publisher(cls, conn.topic, qos_from_offered(profiles))
        self.stats = PlayStats(skipped_topics=tuple(skipped))
        if skipped:
            self.log(f"warning: skipping {len(skipped)} topic(s) whose message type cannot be imported "
                     f"(build/source its interface package): {', '.join(skipped)}")
        if not camera_topics(self.connections):
            self.log("note: " + no_camera_message(self.path, self.reader.connections))
        self.clock_pub = None
        if clock:
            from rclpy.qos import QoSProfile, ReliabilityPolicy
            from rosgraph_msgs.msg import Clock
            self.clock_pub = node.create_publisher(Clock, "/clock", QoSProfile(
                depth=1, reliability=ReliabilityPolicy.RELIABLE))
            self._clock_msg = Clock()

    def close(self) -> None:
        self.reader.close()

    def _decodes(self, conn, data: bytes) -> bool:
        """True when ``data`` deserialises as the topic's type (rclpy, C); garbage is counted and never relayed."""
        from rclpy.serialization import deserialize_message
        try:
            deserialize_message(data, self.classes[conn.topic])
            return True
        except Exception as exc:   # rclpy raises various errors on garbage bytes
            self.stats.undecodable += 1
            if conn.topic not in self._told_garbage:
                self._told_garbage.add(conn.topic)
                self.log(f"warning: not publishing messages of {conn.topic} whose bytes are not valid "
                         f"{conn.msgtype} CDR ({type(exc).__name__}: {exc}); counted")
            return False

    def _publish_clock(self, stamp_ns: int) -> None:
        self._clock_msg.clock.sec, self._clock_msg.clock.nanosec = divmod(int(stamp_ns), 1_000_000_000)
        self.clock_pub.publish(self._clock_msg)

    def _wait_until(self, wall_target: float, wall0: float, bag0: int) -> None:
        """Sleep until ``wall_target`` (monotonic s), publishing /clock from bag time meanwhile."""
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= wall_target:
                return
            if self.clock_pub is not None:
                self._publish_clock(bag0 + int((now - wall0) * self.rate * 1e9))
                self.stop.wait(min(self.clock_period, wall_target - now))
            else:
                self.stop.wait(wall_target - now)

    def _wait_for_subscribers(self) -> None:
        deadline = time.monotonic() + self.wait_for_subscribers
        while not self.stop.is_set() and time.monotonic() < deadline:
            if all(p.get_subscription_count() > 0 for p in self.publishers.values()):
                return
            self.stop.wait(0.05)
        lonely = [t for t, p in self.publishers.items() if p.get_subscription_count() == 0]
        if lonely:
            self.log(f"warning: no subscriber after {self.wait_for_subscribers:.1f} s on {', '.join(lonely)}; "
                     "playing anyway")

    def play(self) -> PlayStats:
        """Publish every message once (or until ``stop`` with ``loop``); returns the counts."""
        from tqdm import tqdm

        if not self.connections:
            self.log(f"nothing to play from '{self.path}'")
            return self.stats
        if self.wait_for_subscribers > 0:
            self._wait_for_subscribers()
        if self.delay > 0:
            self.stop.wait(self.delay)
        total = sum(c.msgcount for c in self.connections)
        start = time.monotonic()
        with tqdm(total=total, unit="msg", desc="dpm play", file=sys.stderr, disable=not self.progress,
                  mininterval=1.0) as bar:
            while not self.stop.is_set():
                wall0, bag0 = time.monotonic(), None
                for conn, stamp, data in iterate_messages(self.reader, self.connections):
                    if bag0 is None:
                        bag0 = stamp
                    self._wait_until(wall0 + (stamp - bag0) / 1e9 / self.rate, wall0, bag0)
                    if self.stop.is_set():
                        break
                    if self.clock_pub is not None:
                        self._publish_clock(stamp)
                    if not self._decodes(conn, data):
                        continue
                    self.publishers[conn.topic].publish(data)
                    self.stats.published += 1
                    bar.update(1)
                self.stats.loops += 1
                if not self.loop:
                    break
                bar.reset()
        self.stats.wall_s = time.monotonic() - start
        self._wait_for_acks()
        return self.stats

    def _wait_for_acks(self, timeout_s: float = 5.0) -> None:
        """Let reliable subscribers receive the last messages before the publishers go away."""
        from rclpy.duration import Duration

        for topic, pub in self.publishers.items():
            if hasattr(pub, "wait_for_all_acked") and not pub.wait_for_all_acked(Duration(seconds=timeout_s)):
                self.log(f"warning: not every subscriber of {topic} acknowledged the last messages")
