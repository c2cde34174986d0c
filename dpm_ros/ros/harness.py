"""Drive ``dpm_node`` from another process: start it, feed it images, collect what it publishes.

Used by the integration tests, ``dpm soak`` and benchmarks. ``NodeProcess`` runs the node as a subprocess (DDS on
loopback: the caller's environment must already carry the variables of ``scripts/ros_env.sh``). ``Probe`` is an
rclpy node in its own context and executor thread that publishes inputs with reliable QoS and records every output
message with its arrival time.
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
    """Publishes inputs and records outputs. ``outputs``: topic → list of (arrival monotonic time, message)."""

    def __init__(self, namespace: str = "", image_topic: str = "/camera/image_raw",
                 camera_info_topic: str = "/camera/camera_info"):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image
        from tf2_msgs.msg import TFMessage

        from dpm_ros.ros.node import OUTPUT_TYPES

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("dpm_probe", context=self.context)
        self.outputs: dict[str, list] = defaultdict(list)
        self._lock = threading.Lock()
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.node.create_publisher(Image, image_topic, reliable)
        self.compressed_pub = self.node.create_publisher(CompressedImage, image_topic + "/compressed", reliable)
        self.info_pub = self.node.create_publisher(CameraInfo, camera_info_topic, reliable)
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
        for key, (topic, typ) in topics.items():
            self.node.create_subscription(typ, topic, self._recorder(key), reliable)
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
            with self._lock:
                self.outputs[key].append((time.monotonic(), msg))
        return record

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
