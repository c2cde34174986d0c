"""Drive ``dpm_node`` from another process: start it, feed it images, collect what it publishes.

Used by the integration tests, ``dpm soak`` and benchmarks. ``NodeProcess`` runs the node as a subprocess (DDS on
loopback: the caller's environment must already carry the variables of ``scripts/ros_env.sh``). ``Probe`` is an
rclpy node in its own context and executor thread that publishes inputs and records every output message with its
arrival time (tests), or only latency, diagnostics and counts (``dpm soak``).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Optional

from dpm_ros.bag import header_ns


def node_command() -> list[str]:
    """The installed ``dpm_node`` executable next to this interpreter, else ``python -m dpm_ros.ros.node``."""
    exe = Path(sys.executable).with_name("dpm_node")
    if exe.is_file() and os.access(exe, os.X_OK):
        return [str(exe)]
    found = shutil.which("dpm_node")
    return [found] if found else [sys.executable, "-m", "dpm_ros.ros.node"]


class NodeProcess:
    """``with NodeProcess(args, log_path) as proc:`` runs ``dpm_node args...``; SIGINT on exit (then kill)."""

    def __init__(self, args: list[str], log_path: Path, command: Optional[list[str]] = None):
        self.cmd = (command or node_command()) + list(args)
        self.log_path = Path(log_path)
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "NodeProcess":
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ))
        return self

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
        """SIGINT (Ctrl-C), wait; kill if it does not exit. Returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __exit__(self, *exc) -> None:
        self.stop()


class Probe:
    """An rclpy node in its own context and executor thread that publishes the node's inputs and watches its
    outputs. Two uses, one class:

    - tests (``record=True``, reliable QoS): every output message is kept with its arrival time (``got``,
      ``arrivals``);
    - a stream over hours (``dpm soak``: ``record=False``, ``sensor_qos=True`` publishes best-effort like a camera
      driver): nothing is kept but per-stamp latency from /dpm/odometry (``publish_stamped`` → ``take``), the latest
      /diagnostics values and, for ``count`` (name → output topic), raw subscriptions that only count (``counts``).
      Memory stays bounded."""

    def __init__(self, namespace: str = "", image_topic: str = "/camera/image_raw",
                 camera_info_topic: str = "/camera/camera_info", name: str = "dpm_probe", record: bool = True,
                 sensor_qos: bool = False, count: Optional[dict] = None):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image
        from tf2_msgs.msg import TFMessage

        from dpm_ros.ros.node import OUTPUT_TYPES

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.outputs: dict[str, list] = defaultdict(list)
        self.record = record
        self._lock = threading.Lock()
        self.sent: dict[int, float] = {}        # stamp (ns) → publish time (monotonic s); pruned
        self.latencies: list[float] = []        # ms, since the last take()
        self.n_odometry = 0
        self.diag: dict[str, str] = {}
        self.received = {n: 0 for n in (count or {})}   # raw output messages counted, by name
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        inputs = qos_profile_sensor_data if sensor_qos else reliable
        self.image_pub = self.node.create_publisher(Image, image_topic, inputs)
        self.compressed_pub = self.node.create_publisher(CompressedImage, image_topic + "/compressed", inputs)
        self.info_pub = self.node.create_publisher(CameraInfo, camera_info_topic, inputs)
        latched = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.tf_static_pub = self.node.create_publisher(TFMessage, "/tf_static", latched)

        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import Odometry
        from sensor_msgs.msg import PointCloud2
        from visualization_msgs.msg import MarkerArray

        from dpm_ros.msg import ObjectMotionArray

        types = {"PointCloud2": PointCloud2, "Image": Image, "CameraInfo": CameraInfo,
                 "ObjectMotionArray": ObjectMotionArray, "MarkerArray": MarkerArray}
        ns = "/" + namespace.strip("/") + "/" if namespace.strip("/") else "/"
        topics = {key: (ns + key, types[kind]) for key, kind in OUTPUT_TYPES.items()}
        topics.update({"dpm/odometry": (ns + "dpm/odometry", Odometry), "tf": ("/tf", TFMessage),
                       "diagnostics": ("/diagnostics", DiagnosticArray)})
        self.points_topic = topics["dpm/points"][0]
        self.odometry_topic = topics["dpm/odometry"][0]
        for key, (topic, typ) in topics.items():
            if record or key in ("dpm/odometry", "diagnostics"):
                self.node.create_subscription(typ, topic, self._recorder(key), reliable if record else
                                              QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE))
        by_topic = {topic: typ for topic, typ in topics.values()}
        for n, topic in (count or {}).items():   # raw (undeserialised) best-effort: the node sees a subscriber
            self.node.create_subscription(by_topic[topic], topic, lambda _m, n=n: self._count(n),
                                          qos_profile_sensor_data, raw=True)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # context shut down under us at close()
            pass

    def _recorder(self, key: str) -> Callable:
        def record(msg):
            now = time.monotonic()
            with self._lock:
                if self.record:
                    self.outputs[key].append((now, msg))
                if key == "dpm/odometry":
                    self.n_odometry += 1
                    sent = self.sent.pop(header_ns(msg), None)
                    if sent is not None:
                        self.latencies.append(1000.0 * (now - sent))
                elif key == "diagnostics":
                    values = {kv.key: kv.value for st in msg.status for kv in st.values}
                    if "frames_in" in values:
                        self.diag = values
        return record

    def _count(self, name: str) -> None:
        with self._lock:
            self.received[name] += 1

    def publish_stamped(self, image_msg, info_msg, stamp_ns: int) -> None:
        """Publish a frame and its CameraInfo stamped ``stamp_ns``, remembering when (for ``take``'s latency)."""
        from builtin_interfaces.msg import Time

        t = Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
        image_msg.header.stamp = t
        info_msg.header.stamp = t
        self.info_pub.publish(info_msg)
        with self._lock:
            self.sent[stamp_ns] = time.monotonic()
            if len(self.sent) > 2000:  # outputs for old stamps will never come (dropped pairs): forget them
                for k in sorted(self.sent)[:1000]:
                    del self.sent[k]
        self.image_pub.publish(image_msg)

    def take(self) -> tuple[list[float], int, dict]:
        """(I1 publish → /dpm/odometry latencies in ms since the last call, odometry messages so far, latest
        /diagnostics values)."""
        with self._lock:
            lat, self.latencies = self.latencies, []
            return lat, self.n_odometry, dict(self.diag)

    def counts(self) -> dict:
        """Raw output messages received so far, by the names of ``count``."""
        with self._lock:
            return dict(self.received)

    def connected(self) -> bool:
        """The node subscribes to our image topic and publishes odometry."""
        return self.image_pub.get_subscription_count() > 0 and self.node.count_publishers(self.odometry_topic) > 0

    def got(self, name: str) -> list:
        """Messages received on output ``name`` ('dpm/points', 'tf', 'diagnostics', ...)."""
        with self._lock:
            return [m for _, m in self.outputs.get(name, [])]

    def arrivals(self, name: str) -> list[float]:
        with self._lock:
            return [t for t, _ in self.outputs.get(name, [])]

    @staticmethod
    def wait_for(predicate: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(poll)
        return predicate()

    def wait_connected(self, timeout: float = 60.0, proc: Optional[NodeProcess] = None, publishers=()) -> bool:
        """Until discovery has finished both ways: the node subscribes to our image topic, every publisher in
        ``publishers`` (e.g. ``info_pub`` or a test's own) is matched by a subscription, and we see the node's cloud
        publisher. Discovery matches each writer separately: a message sent by a writer not yet matched is lost even
        when it is reliable (volatile durability)."""
        def ready():
            if proc is not None and not proc.alive():
                raise RuntimeError(f"dpm_node exited early:\n{proc.log()}")
            subscribed = self.image_pub.get_subscription_count() + self.compressed_pub.get_subscription_count()
            others = all(pub.get_subscription_count() > 0 for pub in publishers)
            return subscribed > 0 and others and self.node.count_publishers(self.points_topic) > 0
        ok = self.wait_for(ready, timeout)
        time.sleep(0.5)
        return ok

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5)
