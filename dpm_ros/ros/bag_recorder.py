"""Record topics over DDS into MCAP without rosbag2: rclpy raw subscriptions, rosbags writes the CDR bytes with their
schemas (message definitions from rosbags' Kilted typestore; types it lacks, such as ``dpm_ros/msg/*``, are read
from their ``.msg`` files under ``share/<pkg>/msg`` or this source tree's ``msg/``) so Foxglove and RViz open them.

``BagWriter`` (no ROS needed; ``dpm_ros.bag.BagWriter`` with this typestore and rclpy QoS) is shared with ``dpm
replay``: ``OUT.mcap`` becomes one self-contained MCAP file, any other name a rosbag2 directory with MCAP storage.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from dpm_ros.bag import BagWriter as _BagWriter
from dpm_ros.ros.bag_player import resolve_msg_class

SOURCE_MSG_DIR = Path(__file__).resolve().parents[2] / "msg"


def _msg_file(msgtype: str) -> Path | None:
    """The .msg file defining 'pkg/msg/Name' in an ament prefix (share/pkg/msg) or, for dpm_ros, the source tree."""
    pkg, _, name = msgtype.split("/")
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    candidates = [Path(p) / "share" / pkg / "msg" / f"{name}.msg" for p in prefixes]
    if pkg == "dpm_ros":
        candidates.insert(0, SOURCE_MSG_DIR / f"{name}.msg")
    return next((c for c in candidates if c.is_file()), None)


def _dependencies(fielddefs) -> set[str]:
    """Message types nested in one rosbags field definition (consts, fields)."""
    from rosbags.interfaces import Nodetype

    deps = set()
    for _, (kind, detail) in fielddefs[1]:
        if kind == Nodetype.NAME:
            deps.add(detail)
        elif kind in (Nodetype.ARRAY, Nodetype.SEQUENCE) and detail[0][0] == Nodetype.NAME:
            deps.add(detail[0][1])
    return deps


_STORE = None
_STORE_LOCK = threading.Lock()


def bag_typestore(msgtypes=()):
    """The recorder's process-wide rosbags typestore (``bag.distro_typestore()``) with every type of ``msgtypes`` and
    its nested types
    registered (types only ever get added). Raises ValueError naming a type whose definition cannot be found."""
    from rosbags.typesys import get_types_from_msg

    from dpm_ros.bag import distro_typestore

    global _STORE
    with _STORE_LOCK:
        if _STORE is None:
            _STORE = distro_typestore()
        store = _STORE
        pending, added = list(msgtypes), {}
        while pending:
            msgtype = pending.pop()
            if msgtype in store.fielddefs or msgtype in added:
                continue
            path = _msg_file(msgtype) if msgtype.count("/") == 2 else None
            if path is None:
                raise ValueError(f"no message definition for '{msgtype}' (not in the ROS 2 typestore and no "
                                 f"share/<pkg>/msg/*.msg found on AMENT_PREFIX_PATH)")
            types = get_types_from_msg(path.read_text(), msgtype)
            added.update(types)
            pending.extend(_dependencies(types[msgtype]))
        if added:
            store.register(added)
        return store


def canonical_cdr(data: bytes, msgtype: str) -> bytes:
    """The same message with zeroed alignment padding. rclpy/Fast CDR leave padding bytes uninitialised (the same
    message serialises to different bytes from run to run) and the DDS transport pads the payload to 4 bytes;
    rosbags' deserialise → serialise round trip keeps every field and writes padding as zeros."""
    store = bag_typestore([msgtype])
    return bytes(store.serialize_cdr(store.deserialize_cdr(data, msgtype), msgtype))


def rosbags_qos(profile):
    """rclpy QoSProfile → rosbags Qos (stored as the topic's offered_qos_profiles)."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    def duration(d):
        ns = d.nanoseconds if hasattr(d, "nanoseconds") else 0
        if ns <= 0 or ns >= 2**63 - 1:
            return QosTime(sec=9223372036, nsec=854775807)
        return QosTime(sec=ns // 1_000_000_000, nsec=ns % 1_000_000_000)

    return Qos(history=QosHistory[profile.history.name], depth=int(profile.depth),
               reliability=QosReliability[profile.reliability.name],
               durability=QosDurability[profile.durability.name], deadline=duration(profile.deadline),
               lifespan=duration(profile.lifespan), liveliness=QosLiveliness[profile.liveliness.name],
               liveliness_lease_duration=duration(profile.liveliness_lease_duration),
               avoid_ros_namespace_conventions=bool(profile.avoid_ros_namespace_conventions))


class BagWriter(_BagWriter):
    """:class:`dpm_ros.bag.BagWriter` for the recorder and ``dpm replay``: topics are declared with the rclpy
    QoSProfiles of their publishers and schemas from the recorder's typestore (installed .msg files only)."""

    def add_topic(self, topic: str, msgtype: str, qos_profiles=()) -> None:
        """Declare ``topic`` once, with its schema; ``qos_profiles``: rclpy QoSProfiles of its publishers."""
        if topic not in self.connections:
            super().add_topic(topic, msgtype, [rosbags_qos(q) for q in qos_profiles], bag_typestore([msgtype]))


def subscription_qos(publishers):
    """QoS to subscribe with, compatible with every publisher found (rosbag2's rule): reliable only if all offer
    it, transient-local only if all do; deep keep-last history so bursts are not dropped here."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    profiles = [p.qos_profile for p in publishers]
    reliable = bool(profiles) and all(q.reliability == ReliabilityPolicy.RELIABLE for q in profiles)
    latched = bool(profiles) and all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL for q in profiles)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


class BagRecorder:
    """Subscribes (raw) to ``topics`` as their publishers appear and writes every message with its receive time
    (``node``'s clock, ns). Stops on ``stop``, after ``duration`` seconds, after ``max_messages`` in total, or when
    the output cannot be written (disk full: ``write_error``). Every ``flush_s`` seconds the pending chunk is put on
    disk (what a kill can lose); every ``status_s`` seconds a log line says received / written / lost so far.

    Counts (``summary()``): ``received`` per topic; ``written``: in the bag; ``lost`` by reason: ``not delivered``
    (gaps in the publisher's sequence numbers: DDS history overflow or transport loss; counted for topics with one
    publisher), ``not written`` (received after / with a write failure) and ``not flushed`` (written to the pending
    chunk but never on disk because the disk filled)."""

    def __init__(self, node, writer: BagWriter, topics, duration: float | None = None,
                 max_messages: int | None = None, stop: threading.Event | None = None, log=None,
                 flush_s: float = 1.0, status_s: float = 10.0):
        if not topics:
            raise ValueError("name at least one topic to record")
        if duration is not None and not duration > 0:
            raise ValueError(f"--duration must be > 0 seconds, got {duration}")
        if max_messages is not None and max_messages < 1:
            raise ValueError(f"--max-messages must be >= 1, got {max_messages}")
        self.node, self.writer = node, writer
        self.topics = [t if t.startswith("/") else "/" + t for t in topics]
        self.duration, self.max_messages = duration, max_messages
        self.flush_s, self.status_s = flush_s, status_s
        self.stop = stop or threading.Event()
        self.log = log or (lambda text: print(f"dpm record: {text}", file=sys.stderr, flush=True))
        self.subscriptions: dict[str, object] = {}
        self.total = 0
        self.received: dict[str, int] = {}
        self.not_delivered: dict[str, int] = {}
        self.not_written = 0
        self.write_error: str | None = None
        self._last_seq: dict[str, int] = {}
        self._single_publisher: dict[str, bool] = {}

    def _discover(self) -> None:
        types = dict(self.node.get_topic_names_and_types())
        for topic in self.topics:
            if topic in self.subscriptions or topic not in types:
                continue
            msgtype = types[topic][0]
            cls = resolve_msg_class(msgtype, installed=True)
            if cls is None:
                self.log(f"warning: cannot import '{msgtype}' of {topic}; not recording it")
                self.subscriptions[topic] = None
                continue
            publishers = self.node.get_publishers_info_by_topic(topic)
            self.writer.add_topic(topic, msgtype, [p.qos_profile for p in publishers])
            self._single_publisher[topic] = len(publishers) == 1
            self.received.setdefault(topic, 0)
            self.subscriptions[topic] = self.node.create_subscription(
                cls, topic, lambda data, info, t=topic: self._on_message(t, data, info),
                subscription_qos(publishers), raw=True)
            self.log(f"recording {topic} ({msgtype})")

    def _count_gap(self, topic: str, info) -> None:
        """Messages the publisher sent between two we received (its sequence numbers skip), one publisher only."""
        seq = info.get("publication_sequence_number") if isinstance(info, dict) else None
        if not seq or not self._single_publisher.get(topic):
            return
        last = self._last_seq.get(topic)
        if last is not None and seq > last + 1:
            self.not_delivered[topic] = self.not_delivered.get(topic, 0) + seq - last - 1
        if last is None or seq > last:
            self._last_seq[topic] = seq

    def _on_message(self, topic: str, data: bytes, info=None) -> None:
        if self.max_messages is not None and self.total >= self.max_messages:
            self.stop.set()
            return
        self.received[topic] = self.received.get(topic, 0) + 1
        self._count_gap(topic, info)
        if self.write_error is not None:
            self.not_written += 1
            return
        try:
            self.writer.write(topic, self.node.get_clock().now().nanoseconds, data)
        except OSError as exc:
            self._write_failed(exc)
            self.not_written += 1
            return
        self.total += 1
        if self.max_messages is not None and self.total >= self.max_messages:
            self.stop.set()

    def _write_failed(self, exc: OSError) -> None:
        self.write_error = f"{type(exc).__name__}: {exc}"
        self.log(f"error: writing '{self.writer.live_path}' failed ({self.write_error}); stopping. The file keeps "
                 f"{self.writer.durable} messages in complete chunks")
        self.stop.set()

    def summary(self) -> dict:
        """{"received", "written", "lost": {reason: n}} so far (see class doc)."""
        lost = {}
        if sum(self.not_delivered.values()):
            lost["not delivered (publisher sequence gaps: DDS queue overflow or transport loss)"] = \
                sum(self.not_delivered.values())
        if self.not_written:
            lost[f"not written ({self.write_error})"] = self.not_written
        unflushed = self.writer.total - self.writer.durable if self.write_error else 0
        if unflushed:
            lost["not flushed (pending chunk when the write failed)"] = unflushed
        return dict(received=sum(self.received.values()), written=self.writer.durable if self.write_error
                    else self.writer.total, lost=lost)

    def status_line(self) -> str:
        s = self.summary()
        lost = "; ".join(f"{n} {why}" for why, n in s["lost"].items()) or "none"
        return f"received {s['received']}, written {s['written']}, lost {sum(s['lost'].values())} ({lost})"

    def _drain(self, executor, limit_s: float = 2.0) -> None:
        """After Ctrl-C/SIGTERM or --duration, write what has already arrived (not after --max-messages)."""
        if self.max_messages is not None and self.total >= self.max_messages or self.write_error:
            return
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            before = self.total
            executor.spin_once(timeout_sec=0.05)
            if self.total == before:
                return

    def record(self) -> dict[str, int]:
        """Spin until a stop condition; returns messages written per topic."""
        from rclpy.executors import SingleThreadedExecutor

        executor = SingleThreadedExecutor(context=self.node.context)
        executor.add_node(self.node)
        start = next_discovery = time.monotonic()
        next_flush, next_status = start + self.flush_s, start + self.status_s
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                if self.duration is not None and now - start >= self.duration:
                    break
                if now >= next_discovery and len(self.subscriptions) < len(self.topics):
                    self._discover()
                    next_discovery = now + 0.1
                if now >= next_flush:
                    next_flush = now + self.flush_s
                    try:
                        self.writer.flush()
                    except OSError as exc:
                        self._write_failed(exc)
                if now >= next_status:
                    next_status = now + self.status_s
                    self.log(self.status_line())
                executor.spin_once(timeout_sec=0.05)
            self._drain(executor)
        finally:
            executor.remove_node(self.node)
        unseen = [t for t in self.topics if t not in self.subscriptions]
        if unseen:
            self.log(f"warning: no publisher ever appeared on {', '.join(unseen)}")
        return dict(self.writer.counts)
