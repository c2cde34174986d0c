"""Static extrinsics from /tf_static (base → camera) without tf2_ros (not installable everywhere).

``StaticTransforms`` is pure: it stores parent→child transforms and looks up a chain between two frames of the tree.
``subscribe_tf_static(node, store)`` feeds it from /tf_static with the latched QoS tf2 uses (reliable,
transient-local). ``tf2_lookup(node, target)`` uses tf2_ros instead where it is importable (a real ROS install).
"""
from __future__ import annotations

from collections import deque
from typing import Optional

import numpy as np

from dpm_ros.ros.messages import transform_to_matrix
from dpm_ros.geometry.procrustes import invert_se3


class StaticTransforms:
    """Edges parent → child (4×4 pose of child in parent); lookups walk the tree in either direction."""

    def __init__(self) -> None:
        self._edges: dict[tuple[str, str], np.ndarray] = {}

    def add(self, parent: str, child: str, T_parent_child: np.ndarray) -> None:
        self._edges[(parent.lstrip("/"), child.lstrip("/"))] = np.asarray(T_parent_child, float)

    def add_message(self, msg) -> None:
        """All transforms of a tf2_msgs/TFMessage."""
        for ts in msg.transforms:
            self.add(ts.header.frame_id, ts.child_frame_id, transform_to_matrix(ts.transform))

    def lookup(self, target: str, source: str) -> Optional[np.ndarray]:
        """4×4 T_target_source (p_target = T p_source), or None while the frames are not connected."""
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            return np.eye(4)
        nbrs: dict[str, list[tuple[str, np.ndarray]]] = {}
        for (p, c), T in self._edges.items():
            nbrs.setdefault(p, []).append((c, T))          # T_p_c: from c to p
            nbrs.setdefault(c, []).append((p, invert_se3(T)))  # T_c_p
        # breadth-first from target, accumulating T_target_frame
        seen = {target: np.eye(4)}
        queue = deque([target])
        while queue:
            f = queue.popleft()
            for g, T_f_g in nbrs.get(f, []):
                if g not in seen:
                    seen[g] = seen[f] @ T_f_g
                    if g == source:
                        return seen[g]
                    queue.append(g)
        return None


def subscribe_tf_static(node, store: StaticTransforms, callback=None):
    """Subscribe ``node`` to /tf_static (reliable, transient-local, depth 100) feeding ``store``."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from tf2_msgs.msg import TFMessage

    qos = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)

    def on_msg(msg):
        store.add_message(msg)
        if callback is not None:
            callback()

    return node.create_subscription(TFMessage, "/tf_static", on_msg, qos)


def tf2_lookup(node, target: str):
    """A ``lookup(source) -> 4×4 T_target_source or None`` backed by tf2_ros (Buffer + TransformListener), or None
    when tf2_ros is not importable (then ``StaticTransforms`` + ``subscribe_tf_static`` do the job)."""
    try:
        import tf2_ros
        from rclpy.time import Time
    except ImportError:
        return None
    buffer = tf2_ros.Buffer()
    listener = tf2_ros.TransformListener(buffer, node, spin_thread=False)

    def lookup(source: str) -> Optional[np.ndarray]:
        try:
            ts = buffer.lookup_transform(target, source, Time())
        except (tf2_ros.LookupException, tf2_ros.ConnectivityException, tf2_ros.ExtrapolationException):
            return None
        return transform_to_matrix(ts.transform)

    lookup.listener = listener  # keep it alive with the lookup
    return lookup
