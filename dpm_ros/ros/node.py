"""``dpm_node``: camera frames in; point clouds, motion masks, ego-motion (odometry + TF), object motions and
diagnostics out. Thin glue: conversions live in ``messages``/``outputs``, pairing in ``dpm_ros.stream``, geometry in
``dpm_ros.pipeline``. Callbacks take a view onto the image bytes, downscale it once to what the engine needs and
enqueue; one worker thread runs the pipeline (latest pair wins) and builds only the outputs someone subscribes to
(checked per pair; odometry and TF always). /diagnostics carries each stage's latency (``stage_*_ms_mean/max``).

Run: ``dpm_node --ros-args -r image:=/camera/image_raw -r camera_info:=/camera/camera_info -p engine:=...``
Metric outputs from an RGB-D camera: ``-p scale_source:=depth -r depth:=/camera/depth/image_raw`` (32FC1 m or 16UC1
mm, same stamps as the images); ``scale_source`` fixed / chain need no extra topic (see config/dpm.yaml).
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from functools import partial
from typing import Optional

import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import InvalidParameterValueException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from dpm_ros.bag import header_ns
from dpm_ros.blas import limit_openblas_threads
from dpm_ros.config import PARAMS, Config, ConfigError
from dpm_ros.ros import messages as M
from dpm_ros.ros.diagnostics import NodeHealth
from dpm_ros.engine.select import open_engine
from dpm_ros.ros.image_convert import (ImageFormatError, decode_compressed, depth_to_metres, image_pixels,
                                       parse_image_cdr, prepare_pixels)
from dpm_ros.ros.outputs import step_messages
from dpm_ros.ros.params import coerce_overrides, descriptor, override_values, unknown_overrides
from dpm_ros.ros.static_tf import StaticTransforms, subscribe_tf_static, tf2_lookup
from dpm_ros.stream.inputs import FrameInput, Notices, Reading
from dpm_ros.stream.pairing import FramePair, FrameRing, LatestSlot
from dpm_ros.stream.step import PairProcessor, frame_sizes

try:  # rclpy ≥ Humble; the class moved between releases
    from rclpy._rclpy_pybind11 import RCLError
except ImportError:  # pragma: no cover
    RCLError = RuntimeError

OUTPUT_TYPES = {"dpm/points": "PointCloud2", "dpm/motion_mask": "Image", "dpm/object_labels": "Image",
                "dpm/depth": "Image", "dpm/camera_info": "CameraInfo", "dpm/objects": "ObjectMotionArray",
                "dpm/objects/markers": "MarkerArray"}


NO_INPUT_WARN_S = 4.0     # console warning when no image arrived this long after start ...
NO_INPUT_REPEAT_S = 20.0  # ... repeated at most this often while none arrives


def _input_qos(c: Config) -> QoSProfile:
    return QoSProfile(depth=c.qos_depth, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE if c.qos_reliability == "reliable"
                      else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if c.qos_durability == "transient_local"
                      else DurabilityPolicy.VOLATILE)


class DpmNode(Node):
    """The DPM perception node (see module docstring and config/dpm.yaml for parameters)."""

    def __init__(self, **kwargs):
        super().__init__("dpm_node", **kwargs)
        # an integer given for a double (-p pair_interval:=1) is that double; unknown names are said, not ignored
        self._parameter_overrides = coerce_overrides(self._parameter_overrides)
        unknown = unknown_overrides(self._parameter_overrides)
        if unknown:
            self.get_logger().warning(f"ignoring unknown parameter(s): {', '.join(unknown)} (see config/dpm.yaml)")
        # every value is checked by the one function `dpm replay` uses (dpm_ros.config), before rclpy's descriptor
        # checks: both refuse the same values with the same message (ConfigError: main says it and exits 1)
        self.config = Config.from_mapping(override_values(self._parameter_overrides))
        for spec in PARAMS:
            self.declare_parameter(spec.name, spec.default, descriptor(spec))
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.engine = open_engine(self.config.engine, self.config.backend, self.config.engine_threads)
        self.engine_info = self.engine.info()
        # each frame is made ready for the engine once, on arrival (engines that resize with pair_io.resize_image):
        # the small engine input and the cloud's colours; the full-resolution frame is not kept
        engine_hw, out_hw = frame_sizes(self.engine, self.engine_info)
        prepare = partial(prepare_pixels, engine_hw=engine_hw, out_hw=out_hw)

        self.health = NodeHealth()
        self.notices = Notices(self._log)   # each kind of problem logged at most every 5 s (all are counted)
        # the input half, shared with `dpm replay`: decoding errors by kind, the pairing ring, stamps going back
        self.inputs = FrameInput(FrameRing(self.config.pair_interval, self.config.max_pair_gap,
                                           self.config.buffer_size), prepare, self.notices, on_error=self.health.error)
        self.slot: LatestSlot[FramePair] = LatestSlot()
        self.static_tf = StaticTransforms()
        self._tf2_lookup = None
        if self.config.base_frame:
            self._tf2_lookup = tf2_lookup(self, self.config.base_frame)   # tf2_ros where importable
            if self._tf2_lookup is None:
                subscribe_tf_static(self, self.static_tf)
        # the per-pair work, shared with `dpm replay` (pipeline, scale, odometry, tracking; messages: step_messages)
        self.step = PairProcessor(self.config, self.engine, self._extrinsic, self.notices, prepare)

        self._make_publishers()
        qos = _input_qos(self.config)
        if self.config.image_transport == "compressed":
            # image_transport convention: <resolved image topic>/compressed, so remapping 'image' is enough
            self.input_topic = self.resolve_topic_name("image").rstrip("/") + "/compressed"
            self.create_subscription(CompressedImage, self.input_topic, self._on_compressed, qos)
        else:
            self.input_topic = self.resolve_topic_name("image")
            # raw: the serialised bytes, read in place (parse_image_cdr) instead of deserialised into a message
            self.create_subscription(Image, "image", self._on_image, qos, raw=True)
        if self.config.use_camera_info:
            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos)
        if self.config.scale_source == "depth":
            self.depth_topic = self.resolve_topic_name(self.config.depth_topic)
            self.create_subscription(Image, self.config.depth_topic, self._on_depth, qos)
        self.create_timer(self.config.diagnostics_period, self._publish_diagnostics)
        self._started = time.monotonic()
        self.create_timer(1.0, self._check_input_arrives)

        self._worker = threading.Thread(target=self._work, name="dpm_worker", daemon=True)
        self._worker.start()
        info = self.engine_info
        self.get_logger().info(f"dpm_node ready: {self.input_topic} → {self.get_namespace().rstrip('/')}/dpm/*, "
                               f"engine {info.backend} on {info.device} ({info.precision}, "
                               f"{info.width}×{info.height}), pair_interval {self.config.pair_interval} s, "
                               f"input QoS {self.config.qos_reliability}, scale {self.config.scale_source}")

    # --- set-up ---------------------------------------------------------------------------------------------------

    def _make_publishers(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import Odometry
        from sensor_msgs.msg import PointCloud2
        from tf2_msgs.msg import TFMessage
        from visualization_msgs.msg import MarkerArray

        from dpm_ros.msg import ObjectMotionArray

        types = {"PointCloud2": PointCloud2, "Image": Image, "CameraInfo": CameraInfo,
                 "ObjectMotionArray": ObjectMotionArray, "MarkerArray": MarkerArray}
        self.pubs = {topic: self.create_publisher(types[kind], topic, 5) for topic, kind in OUTPUT_TYPES.items()}
        self.odom_pub = self.create_publisher(Odometry, "dpm/odometry", 10)
        self.tf_pub = self.create_publisher(TFMessage, "/tf", 100)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

    def _on_set_parameters(self, params) -> SetParametersResult:
        """A runtime change (rclpy has checked type, range, read-only): the whole new configuration is checked as at
        start (finite numbers, cross-parameter rules); refused with the reason, or handed to the step."""
        try:
            config = self.config.replace(**{prm.name: prm.value for prm in params})
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.config = config
        self.step.set_config(config)
        return SetParametersResult(successful=True)

    # --- callbacks (never block) ----------------------------------------------------------------------------------

    def _on_image(self, data: bytes) -> None:
        def read() -> Reading:
            try:
                msg = parse_image_cdr(data)
            except ImageFormatError:   # bytes this reader does not take (e.g. another CDR encapsulation): rclpy's
                from rclpy.serialization import deserialize_message
                try:
                    msg = deserialize_message(data, Image)
                except Exception as exc:   # rclpy raises various errors on garbage bytes
                    raise ImageFormatError("decode", f"image message could not be deserialised ({exc})") from None
            return Reading(M.stamp_to_sec(msg.header.stamp), msg.header.frame_id,
                           header_ns(msg), *image_pixels(msg))
        self._enqueue(read)

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._enqueue(lambda: Reading(M.stamp_to_sec(msg.header.stamp), msg.header.frame_id,
                                      header_ns(msg), decode_compressed(msg), "bgr8"))

    def _enqueue(self, read) -> None:
        """One input frame: ``read()`` → a ``Reading`` (header, a view onto its pixels, encoding); downscaled once to
        what the engine needs, into the ring (``stream.inputs.FrameInput``). Stages: "receive" (I1's stamp → this
        callback on the node's clock: camera, transport and the middleware, when the camera stamps with this
        machine's clock), "deserialize" (reading the bytes; decoding for compressed input) and "convert_resize"."""
        now_ns = self.get_clock().now().nanoseconds
        # While the worker is behind (a pair waits untaken, so pairs are being dropped) the downscale is left to the
        # worker, which makes it only for frames of pairs it runs; otherwise it is made here, in parallel with the
        # worker's pair. Same bytes either way.
        defer = self.slot.pending
        got = self.inputs.add(read, defer)
        if got is None:   # unusable: counted by kind (health.error) and logged, throttled
            self.health.frame_in()
            return
        self.health.frame_arrived({"receive": 1e-6 * (now_ns - got.frame.stamp_ns),
                                   "deserialize": got.read_ms, **({} if defer else {"convert_resize": got.prepare_ms})},
                                  deferred=defer)
        if got.pair is not None:
            self.slot.put(got.pair)

    def _log(self, level: str, text: str) -> None:
        # one call site per severity: rclpy refuses a second severity from the same line ("Logger severity cannot
        # be changed between calls"), which killed the worker thread on its first pipeline error
        if level == "info":
            self.get_logger().info(text)
        elif level == "error":
            self.get_logger().error(text)
        else:
            self.get_logger().warning(text)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        if not self.step.add_camera_info(M.calibration(msg)):   # counted (camera_info_rejected), told by the step
            self.health.error("camera_info", self.step.camera_info_problem)

    def _on_depth(self, msg: Image) -> None:
        try:
            self.step.add_depth(M.stamp_to_sec(msg.header.stamp), lambda: depth_to_metres(msg))
        except ImageFormatError as exc:
            self.health.error(exc.kind, str(exc))
            self.notices("warn", exc.kind, f"skipped depth image on {self.depth_topic}: {exc}")

    def _extrinsic(self, camera_frame: str) -> Optional[np.ndarray]:
        """Pose of the camera optical frame in base_frame from /tf_static (tf2_ros where importable), or None."""
        tf2 = self._tf2_lookup
        return tf2(camera_frame) if tf2 is not None else self.static_tf.lookup(self.config.base_frame, camera_frame)

    # --- worker ---------------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self.slot.closed:
            pair = self.slot.take(timeout=0.5)
            if pair is None or self.slot.closed:
                continue
            try:
                self._process(pair)
            except Exception as exc:  # one bad pair must not stop the node: count, log, go on
                if self.slot.closed or not rclpy.ok():  # RCLError / ExternalShutdownException while shutting down
                    return
                self.health.error("pipeline", f"{type(exc).__name__}: {exc}")
                self.notices("error", "pipeline", f"pipeline failed on a pair: {type(exc).__name__}: {exc}")

    def _wanted_outputs(self) -> set:
        """The per-pair topics someone subscribes to now (lazy outputs, as image_pipeline: the others are neither
        computed nor converted nor published); odometry and TF are always published."""
        return {topic for topic, pub in self.pubs.items() if pub.get_subscription_count() > 0}

    def _process(self, pair: FramePair) -> None:
        queue_ms = 1000.0 * (time.monotonic() - pair.newest.received)
        t0 = time.perf_counter()
        wanted = self._wanted_outputs()
        out = self.step.process(pair, depth_wait=self.config.depth_wait,
                                camera_info_wait=self.config.camera_info_wait)
        convert: dict = {}
        messages = step_messages(out, self.config, wanted, convert)
        out.stages.update({f"convert:{k}": v for k, v in convert.items()})
        for topic, msg in messages:
            tick = time.perf_counter()
            self._publisher(topic).publish(msg)
            out.stages[f"publish:{topic}"] = (out.stages.get(f"publish:{topic}", 0.0)
                                              + 1000.0 * (time.perf_counter() - tick))
        output_ms = 1000.0 * (time.perf_counter() - t0) - out.inference_ms   # scale, tracking, messages, publish
        latency_ms = 1000.0 * (time.monotonic() - pair.newest.received)
        self.health.pair_done(out.inference_ms, latency_ms, queue_ms, output_ms)
        self.health.pair_stages(dict(out.stages, queue=queue_ms, total=latency_ms),
                                skipped=len(self.pubs) - len(wanted))
        self._last_timings = out.timings

    def _publisher(self, topic: str):
        if topic == "tf":
            return self.tf_pub
        if topic == "dpm/odometry":
            return self.odom_pub
        return self.pubs[topic]

    def _check_input_arrives(self) -> None:
        """No image NO_INPUT_WARN_S after start: say so on the console (every NO_INPUT_REPEAT_S), naming the resolved
        input topic and the image topics that do exist in the graph."""
        waited = time.monotonic() - self._started
        if self.health.input_rate.total or waited < NO_INPUT_WARN_S:
            return
        wanted = "sensor_msgs/msg/CompressedImage" if self.config.image_transport == "compressed" else \
            "sensor_msgs/msg/Image"
        found = sorted((name for name, types in self.get_topic_names_and_types()   # not a dpm node's outputs
                        if wanted in types and name != self.input_topic and "/dpm/" not in name + "/"),
                       key=lambda n: ("depth" in n or "label" in n or "mask" in n, "image" not in n, n))
        publishers = self.count_publishers(self.input_topic)
        if publishers:
            hint = (f"; it has {publishers} publisher(s): check their QoS against qos_reliability="
                    f"{self.config.qos_reliability} / qos_durability={self.config.qos_durability}")
        elif found:
            guess = found[0].removesuffix("/compressed") if wanted.endswith("CompressedImage") else found[0]
            hint = f"; image topics in the graph: {', '.join(found)} (did you mean -r image:={guess} ?)"
        else:
            hint = f"; no {wanted.split('/')[-1]} topic exists in the graph (is the camera driver running?)"
        self.notices("warn", "no_input", f"no image received on {self.input_topic} after {waited:.0f} s{hint}",
                     period=NO_INPUT_REPEAT_S)

    # --- diagnostics and shutdown ---------------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        counters = {f"pairing_{k}": v for k, v in self.inputs.pairing().items()}
        counters.update(self.step.counters())
        level, text, values = self.health.report(counters, self.slot.replaced, self.config.diag_max_drop_fraction,
                                                 self.config.diag_max_latency, self.config.diag_no_pair_timeout)
        if values["frames_in"] == 0:
            level, text = "warn", (f"no images received on {getattr(self, 'input_topic', 'image')} yet (check the "
                                   f"topic remapping and QoS: qos_reliability={self.config.qos_reliability})")
        info = self.engine_info
        values.update({f"pipeline_{k}_ms": float(v) for k, v in getattr(self, "_last_timings", {}).items()})
        values.update(engine_backend=info.backend, engine_device=info.device, engine_precision=info.precision,
                      engine_resolution=f"{info.width}x{info.height}")
        stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(M.diagnostics_msg(stamp, f"{self.get_name()}: pipeline", info.device, level, text,
                                                values))

    def destroy_node(self) -> None:
        if hasattr(self, "slot"):  # also called by rclpy on a node whose __init__ failed
            self.slot.close()
        if hasattr(self, "_worker") and self._worker.is_alive():
            self._worker.join(timeout=10.0)
        super().destroy_node()


def main(argv: Optional[list[str]] = None) -> int:
    """Spin ``DpmNode`` until Ctrl-C or shutdown (the ``dpm_node`` executable enters through ``node_help.main``)."""
    from dpm_ros.ros.node_help import help_text, wants_help

    argv = list(argv if argv is not None else sys.argv)
    if wants_help(argv):
        print(help_text())
        return 0
    try:
        rclpy.init(args=argv)
    except Exception as exc:  # e.g. UnknownROSArgsError: one line, not a traceback
        what = "unknown ROS arguments" if type(exc).__name__ == "UnknownROSArgsError" else type(exc).__name__
        print(f"dpm_node: error: {what}: {exc} (dpm_node --help lists the topics and parameters)", file=sys.stderr)
        return 2
    limit_openblas_threads(1)   # geometry's small BLAS calls on the worker thread; the network has its own pool
    node = None
    code = 0
    try:
        node = DpmNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RCLError as exc:  # context invalidated during Ctrl-C
        if rclpy.ok():
            raise
        del exc
    except (ValueError, InvalidParameterValueException) as exc:  # bad parameters or engine: one clear line
        print(f"dpm_node: error: {exc}", file=sys.stderr)
        code = 1
    finally:
        # Ctrl-C in a terminal running `ros2 launch` reaches the node twice: from the terminal (the whole process
        # group) and from launch, which forwards it. A second SIGINT during clean-up must not turn a clean exit into
        # a KeyboardInterrupt traceback (exit -2); SIGTERM/SIGKILL still end a clean-up that hangs.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
