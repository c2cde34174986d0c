"""Offline replay: a rosbag2 with a camera topic in, a bag with dpm_node's outputs out, without DDS.

The very code of ``dpm_node`` runs, without ROS (no rclpy context, no DDS participant): the bag's images go
through the node's input half (``stream.inputs.FrameInput``: conversion, error counts by kind, pairing), and each
pair through the node's per-pair step, ``stream.step.PairProcessor`` (pipeline, metric scale, odometry, tracking)
and ``outputs.step_messages``, fed with the bag's CameraInfo, depth (``scale_source: depth``) and /tf_static in bag
order. Every message is serialised with ``rclpy.serialization`` (the bytes rclpy would send), its alignment padding
zeroed (rclpy leaves it uninitialised, see ``canonical_cdr``; so the same bag always replays to the same bytes) and
written with its schema, stamped with I1's header stamp. Unlike the live node, no pair is dropped (inference never falls
behind a bag) and /diagnostics (wall clock rates) is not written. The input bag is only read.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from dpm_ros.config import Config
from dpm_ros.ros.bag_player import (CAMERA_TYPES, camera_topics, iterate_messages, no_camera_message,
                                    open_reader, resolve_msg_class)
from dpm_ros.ros.bag_recorder import BagWriter, canonical_cdr


def msgtype_of(msg) -> str:
    """'pkg/msg/Name' of an rclpy message object."""
    return f"{type(msg).__module__.split('.')[0]}/msg/{type(msg).__name__}"


@dataclass
class ReplayStats:
    """Counts of one replay. ``counters``: the per-pair step's /diagnostics numbers (scale, odometry, CameraInfo);
    ``scales``: each written pair's factor (metres per model unit; 1.0 for scale_source none); ``skipped_images``:
    unusable input images by kind."""
    images: int = 0
    pairs: int = 0
    messages_written: int = 0
    wall_s: float = 0.0
    per_topic: dict = field(default_factory=dict)
    failed_pairs: int = 0
    first_error: str | None = None
    counters: dict = field(default_factory=dict)
    scales: list = field(default_factory=list)
    skipped_images: dict = field(default_factory=dict)
    pairing: dict = field(default_factory=dict)
    undecodable: dict = field(default_factory=dict)

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.wall_s if self.wall_s > 0 else 0.0


def pick_camera_topics(connections, image_topic: str | None, info_topic: str | None, path) -> tuple[str, str | None]:
    """The image topic (given, or the bag's only Image/CompressedImage topic) and its CameraInfo topic (given, or
    the sibling '<namespace>/camera_info' when present)."""
    cams = camera_topics(connections)
    infos = {c.topic for c in connections if c.msgtype == "sensor_msgs/msg/CameraInfo"}

    def sibling_info(topic: str) -> str:
        return topic.removesuffix("/compressed").rsplit("/", 1)[0] + "/camera_info"

    if image_topic is None:
        if not cams:
            raise ValueError(no_camera_message(path, connections))
        with_info = [t for t in cams if sibling_info(t) in infos]   # a camera, not e.g. a depth/label image
        if len(cams) > 1 and len(with_info) != 1:
            raise ValueError(f"bag '{path}' has several camera topics ({', '.join(cams)}); pick one with --image-topic")
        image_topic = with_info[0] if len(cams) > 1 else cams[0]
    elif image_topic not in cams:
        raise ValueError(f"--image-topic {image_topic} is not a camera topic of '{path}'; camera topics: "
                         f"{', '.join(cams) or 'none'}")
    if info_topic is None:
        info_topic = sibling_info(image_topic) if sibling_info(image_topic) in infos else None
    elif info_topic not in infos:
        raise ValueError(f"--camera-info-topic {info_topic} is not a CameraInfo topic of '{path}'")
    return image_topic, info_topic


def pick_depth_topic(connections, params: Config, path) -> str | None:
    """The depth Image topic for ``scale_source: depth`` (``depth_topic``, made absolute), else None."""
    if params.scale_source != "depth":
        return None
    topic = "/" + params.depth_topic.lstrip("/")
    images = sorted({c.topic for c in connections if c.msgtype == "sensor_msgs/msg/Image"})
    if topic not in images:
        raise ValueError(f"scale_source 'depth' needs depth images on {topic}, which '{path}' does not have; set "
                         f"-p depth_topic:=TOPIC (Image topics in the bag: {', '.join(images) or 'none'})")
    return topic


def explain_no_pairs(stats: ReplayStats, image_topic: str, params: Config) -> str:
    """Why a replay made no pair: which check dropped how many of the images read (pairing.FrameRing counters)."""
    if stats.images == 0:
        return f"the bag has no message on {image_topic}"
    c, reasons = stats.pairing, []
    if stats.skipped_images:
        reasons.append("unusable images: " + ", ".join(f"{n} {'undecodable' if k == 'decode' else k}"
                                                      for k, n in stats.skipped_images.items()))
    if c.get("duplicates"):
        reasons.append(f"{c['duplicates']} with the same header stamp as the previous image (ignored)")
    if c.get("stamp_jumps_back"):
        reasons.append(f"{c['stamp_jumps_back']} with a header stamp older than the previous image (out of order "
                       "or reversed: the pairing buffer restarts)")
    if c.get("resolution_changes"):
        reasons.append(f"{c['resolution_changes']} with another image size than the previous one")
    if c.get("no_partner"):
        reasons.append(f"{c['no_partner']} without an earlier image within max_pair_gap = "
                       f"{params.max_pair_gap} s (pair_interval {params.pair_interval} s)")
    if stats.failed_pairs:
        reasons.append(f"every one of {stats.failed_pairs} pairs failed in the pipeline, first error: "
                       f"{stats.first_error}")
    return f"{stats.images} images on {image_topic}; " + ("; ".join(reasons) or "no pairing check fired")


class _Replay:
    """One replay's state: the node's input half (``stream.inputs.FrameInput``) and per-pair step fed in bag order,
    each pair's messages written to ``writer``. A pair is run when the next image arrives (or at the end), so the
    CameraInfo and depth images recorded with its I1 have been read."""

    def __init__(self, params: Config, engine, writer, stats: ReplayStats, notices):
        from functools import partial

        from dpm_ros.ros.image_convert import prepare_pixels
        from dpm_ros.ros.static_tf import StaticTransforms
        from dpm_ros.stream.inputs import FrameInput
        from dpm_ros.stream.pairing import FrameRing
        from dpm_ros.stream.step import PairProcessor, frame_sizes

        engine_hw, out_hw = frame_sizes(engine)   # each image prepared on arrival as the node does
        prepare = partial(prepare_pixels, engine_hw=engine_hw, out_hw=out_hw)
        self.params, self.writer, self.stats, self.notices = params, writer, stats, notices
        self.static_tf = StaticTransforms()
        self.step = PairProcessor(params, engine, lambda cam: self.static_tf.lookup(params.base_frame, cam),
                                  notices, prepare)
        self.inputs = FrameInput(FrameRing(params.pair_interval, params.max_pair_gap, params.buffer_size),
                                 prepare, notices)
        self.pending = None

    def image(self, msg, compressed: bool) -> None:
        """One message of the image topic (None: its bytes did not decode)."""
        from dpm_ros.ros.image_convert import ImageFormatError, decode_compressed, image_pixels
        from dpm_ros.bag import header_ns
        from dpm_ros.ros.messages import stamp_to_sec
        from dpm_ros.stream.inputs import Reading

        self.flush()   # the previous pair, once CameraInfo/depth sent with its image have been read
        self.stats.images += 1

        def read() -> Reading:
            if msg is None:
                raise ImageFormatError("decode", "image message bytes are not valid CDR")
            px, enc = (decode_compressed(msg), "bgr8") if compressed else image_pixels(msg)
            return Reading(stamp_to_sec(msg.header.stamp), msg.header.frame_id, header_ns(msg), px,
                           enc)

        got = self.inputs.add(read)
        if got is not None and got.pair is not None:
            self.pending = got.pair

    def depth(self, msg, topic: str) -> None:
        from dpm_ros.ros.image_convert import depth_to_metres
        from dpm_ros.ros.messages import stamp_to_sec

        try:
            self.step.add_depth(stamp_to_sec(msg.header.stamp), lambda: depth_to_metres(msg))
        except ValueError as exc:
            self.notices("warn", "depth_image", f"skipped depth image on {topic}: {exc}")

    def flush(self) -> None:
        """Run the pending pair and write its messages (a failing pair is counted and told once, like the node's
        worker)."""
        from rclpy.serialization import serialize_message

        from dpm_ros.ros.outputs import step_messages

        pair, self.pending = self.pending, None
        if pair is None:
            return
        try:
            out = self.step.process(pair)
            messages = step_messages(out, self.params)
        except Exception as exc:  # like the node's worker: count, tell once, go on with the next pair
            self.stats.failed_pairs += 1
            if self.stats.first_error is None:
                self.stats.first_error = f"{type(exc).__name__}: {exc}"
                print(f"dpm replay: warning: a pair failed ({self.stats.first_error}); skipping such pairs",
                      file=sys.stderr, flush=True)
            return
        stamp_ns = pair.newest.stamp_ns
        for key, msg in messages:
            topic, msgtype = "/" + key, msgtype_of(msg)
            self.writer.add_topic(topic, msgtype)
            self.writer.write(topic, stamp_ns, canonical_cdr(serialize_message(msg), msgtype))
            self.stats.messages_written += 1
        self.stats.pairs += 1
        self.stats.scales.append(out.scale)


def replay_bag(in_path, out_path, params: Config, engine=None, image_topic: str | None = None,
               info_topic: str | None = None, copy_input: bool = False, progress: bool = True,
               overwrite: bool = False) -> ReplayStats:
    """Run the bag at ``in_path`` through dpm_node's code and write its outputs to ``out_path`` (see module doc).
    ``params``: the node's configuration (``dpm_ros.config.load_config``); ``engine``: an Engine, or None to open
    ``params.engine`` like the node does."""
    from rclpy.serialization import deserialize_message
    from tqdm import tqdm

    from dpm_ros.output_files import check_output
    from dpm_ros.engine.select import open_engine
    from dpm_ros.ros.messages import calibration
    from dpm_ros.stream.inputs import Notices

    check_output(out_path, overwrite, [in_path])   # before any work: never the input, only a bag with overwrite
    reader = open_reader(in_path)
    try:
        image_topic, info_topic = pick_camera_topics(reader.connections, image_topic, info_topic, in_path)
        depth_topic = pick_depth_topic(reader.connections, params, in_path)
        image_conn = next(c for c in reader.connections if c.topic == image_topic)
        compressed = image_conn.msgtype == CAMERA_TYPES[1]
        params = params.replace(image_transport="compressed" if compressed else "raw")
        engine = engine if engine is not None else open_engine(params.engine, params.backend,
                                                                 params.engine_threads)
        # each kind of problem told once (the node: at most every 5 s), all counted
        notices = Notices(lambda level, text: print(f"dpm replay: warning: {text}", file=sys.stderr, flush=True)
                          if level != "info" else None, period=None)
        wanted = {image_topic, info_topic, depth_topic, "/tf_static"} - {None}
        conns = reader.connections if copy_input else [c for c in reader.connections if c.topic in wanted]
        classes = {c.topic: resolve_msg_class(c.msgtype) for c in conns if c.topic in wanted}
        if classes.get(image_topic) is None:
            raise ValueError(f"cannot load the message class of {image_topic} ({image_conn.msgtype})")
        stats = ReplayStats()
        with BagWriter(out_path, overwrite=overwrite, keep_partial=False, inputs=[in_path]) as writer:
            run = _Replay(params, engine, writer, stats, notices)
            start = time.perf_counter()
            total = next(c.msgcount for c in reader.connections if c.topic == image_topic)
            with tqdm(total=total, unit="img", desc="dpm replay", file=sys.stderr, disable=not progress,
                      mininterval=1.0) as bar:
                for conn, stamp_ns, data in iterate_messages(reader, conns):
                    if copy_input:
                        writer.add_topic(conn.topic, conn.msgtype, [])
                        writer.write(conn.topic, stamp_ns, data)
                    if conn.topic not in wanted or classes.get(conn.topic) is None:
                        continue
                    try:
                        msg = deserialize_message(data, classes[conn.topic])
                    except Exception as exc:   # rclpy raises various errors on garbage bytes
                        msg = None
                        stats.undecodable[conn.topic] = stats.undecodable.get(conn.topic, 0) + 1
                        notices("warn", f"cdr:{conn.topic}", f"skipped a message on {conn.topic} whose bytes are "
                                f"not valid {classes[conn.topic].__name__} CDR ({type(exc).__name__}: {exc})")
                    if conn.topic == image_topic:
                        bar.update(1)
                        run.image(msg, compressed)
                    elif msg is None:
                        continue
                    elif conn.topic == info_topic:
                        run.step.add_camera_info(calibration(msg))
                    elif conn.topic == depth_topic:
                        run.depth(msg, depth_topic)
                    elif conn.topic == "/tf_static":
                        run.static_tf.add_message(msg)
                run.flush()
            stats.wall_s = time.perf_counter() - start
            stats.per_topic = dict(writer.counts)
            stats.pairing = run.inputs.pairing()
            stats.skipped_images = dict(run.inputs.errors)
            if stats.pairs == 0:   # raised inside the writer: no empty output is left
                raise ValueError(f"no pair written from '{in_path}': "
                                 + explain_no_pairs(stats, image_topic, params))
        stats.counters = run.step.counters()
        if params.scale_source != "none" and stats.scales:
            c = stats.counters
            print(f"dpm replay: scale ({params.scale_source}): {min(stats.scales):.4g}..{max(stats.scales):.4g} "
                  f"(median {float(np.median(stats.scales)):.4g}) per model unit over {len(stats.scales)} pairs; "
                  f"chain breaks {c['scale_chain_breaks']}, depth misses {c['scale_depth_misses']}, "
                  f"bad depth images {c['scale_depth_errors']}", file=sys.stderr, flush=True)
        return stats
    finally:
        reader.close()
