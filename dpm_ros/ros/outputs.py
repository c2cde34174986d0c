"""One pair's typed result (``stream.step.PairResult``) → every output message of the node (shared by ``dpm_node``
and ``dpm replay``): the only place that assembles them.

Topic keys (relative to the node's namespace): ``dpm/points``, ``dpm/motion_mask``, ``dpm/object_labels``,
``dpm/depth``, ``dpm/camera_info``, ``dpm/objects``, ``dpm/objects/markers``, ``dpm/odometry``, and ``tf`` for /tf.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from dpm_ros.engine.pair_io import crop_image, resize_nearest
from dpm_ros.pointcloud import build_cloud
from dpm_ros.ros import messages as M


@dataclass
class OutputOptions:
    """cloud_stride: keep every n-th pixel in /dpm/points; cloud_min_confidence: points with lower confidence of
    P1(t1,π1) are NaN; metric: positions are metres (ObjectMotionArray.metric)."""
    cloud_stride: int = 1
    cloud_min_confidence: float = 0.0
    metric: bool = False


def object_reports(result, ids: list[int] | None = None) -> list:
    """``result.objects`` (pipeline ObjectMotion) with ``ids`` (stable ids) replacing their per-pair ids."""
    if ids is None:
        return list(result.objects)
    return [replace(o, id=int(new)) for o, new in zip(result.objects, ids)]


def relabel(labels: np.ndarray, objects, ids: list[int] | None) -> np.ndarray:
    """Replace the pipeline's per-pair object ids in ``labels`` (uint16 h×w) with stable ``ids`` (vectorised)."""
    labels = np.asarray(labels)
    if ids is None or not len(objects):
        return labels.astype(np.uint16)
    lut = np.zeros(max(int(labels.max(initial=0)), max(int(o.id) for o in objects)) + 1, np.uint16)
    for o, new in zip(objects, ids):
        lut[int(o.id)] = new
    return lut[labels]


def point_velocity(result) -> np.ndarray:
    """(P1(t2,π1) − P1(t1,π1)) / (t2 − t1): per-pixel velocity in camera 1's frame, per second (h, w, 3)."""
    a, b = result.maps["p1_t1_pi1"], result.maps["p1_t2_pi1"]
    if result.dt == 0:
        return np.zeros_like(a, dtype=np.float32)
    return ((b - a) / np.float32(result.dt)).astype(np.float32)


PAIR_TOPICS = ("dpm/points", "dpm/motion_mask", "dpm/object_labels", "dpm/depth", "dpm/camera_info", "dpm/objects",
               "dpm/objects/markers")


def cloud_colours(image1: np.ndarray, height: int, width: int) -> np.ndarray:
    """The cloud's colours: I1 (uint8 (H, W, C) at the input resolution, any channel order) sampled at the output
    grid's pixel centres (nearest neighbour) over the engine's centre crop."""
    return resize_nearest(crop_image(image1, height, width), height, width)


def pair_messages(result, header, image1: np.ndarray | None, ids: list[int] | None = None,
                  options: OutputOptions | None = None, wanted=None, input_hw: tuple[int, int] | None = None,
                  colours: np.ndarray | None = None, timings: dict | None = None,
                  velocities: list | None = None) -> dict:
    """Messages for one pair. header: I1's header (stamp, optical frame_id); image1: I1 as uint8 (H, W, 3) RGB at
    the INPUT resolution (masks are published at that size; the cloud is coloured from it at output size).
    A node that prepared I1 on arrival passes ``input_hw`` (H, W) and ``colours`` (``cloud_colours`` of I1) instead
    (``image1`` may then be the small engine input or None). ``wanted``: the topic keys to build (None = all of
    ``PAIR_TOPICS``); the others are neither computed nor converted (lazy outputs: a topic nobody subscribes to) and
    each built message's bytes equal the eager ones. ``timings``: when a dict, each built message's conversion time
    in ms is stored under its topic key. ``velocities``: (linear, angular) per object when known (else computed)."""
    opt = options or OutputOptions()
    H, W = input_hw if input_hw is not None else image1.shape[:2]
    want = set(PAIR_TOPICS) if wanted is None else set(wanted)
    out: dict = {}
    tick = time.perf_counter()

    def done(topic: str, msg) -> None:
        nonlocal tick
        out[topic] = msg
        now = time.perf_counter()
        if timings is not None:
            timings[topic] = 1000.0 * (now - tick)
        tick = now

    p = np.asarray(result.maps["p1_t1_pi1"], np.float32)
    h, w = p.shape[:2]
    hd = M.copy_header(header)
    labels = valid = reps = None
    if want & {"dpm/points", "dpm/object_labels"}:
        labels = relabel(result.labels1, result.objects, ids)
    if want & {"dpm/points", "dpm/depth"}:
        conf = result.maps.get("conf_p1_t1_pi1")
        conf = np.ones((h, w), np.float32) if conf is None else np.asarray(conf, np.float32)
        valid = np.isfinite(p).all(-1) & (p[..., 2] > 0) & (conf >= opt.cloud_min_confidence)
    if "dpm/points" in want:
        rgb = colours if colours is not None else cloud_colours(image1, h, w)
        cloud = build_cloud(p, rgb, conf, labels, point_velocity(result), valid, stride=opt.cloud_stride)
        done("dpm/points", M.pointcloud_msg(hd, cloud))
    if "dpm/motion_mask" in want:
        done("dpm/motion_mask", M.motion_mask_msg(hd, result.motion_mask1, H, W))
    if "dpm/object_labels" in want:
        done("dpm/object_labels", M.labels_msg(hd, labels, H, W))
    if "dpm/depth" in want:
        done("dpm/depth", M.depth_msg(hd, np.where(valid, p[..., 2], np.float32(np.nan))))
    if "dpm/camera_info" in want:
        done("dpm/camera_info", M.camera_info_msg(hd, result.K, h, w))
    if want & {"dpm/objects", "dpm/objects/markers"}:
        reps = object_reports(result, ids)
    if "dpm/objects" in want:
        done("dpm/objects", M.objects_msg(hd, reps, result.dt, opt.metric, velocities))
    if "dpm/objects/markers" in want:
        done("dpm/objects/markers", M.markers_msg(hd, reps, result.dt, velocities=velocities))
    return out


def step_messages(out, config, wanted=None, timings: dict | None = None) -> list:
    """Every message of one pair, (topic key, message) in publication order, from the step's typed result ``out``
    (``stream.step.PairResult``) and the node's ``dpm_ros.config.Config``: the per-pair topics of ``wanted`` (None =
    all), then odometry and TF (always, once the extrinsic is known). ``timings``: ms per message under its topic
    key (odometry with TF)."""
    opts = OutputOptions(config.cloud_stride, config.cloud_min_confidence, out.metric)
    header = M.header_at(out.frame.stamp_ns, out.frame_id)
    i1 = out.frame
    messages = list(pair_messages(out.result, header, i1.image, out.ids, opts, wanted=wanted, input_hw=i1.hw,
                                  colours=i1.colours, timings=timings, velocities=out.velocities).items())
    state = out.odometry
    if state is not None:
        tick = time.perf_counter()
        messages.append(("dpm/odometry", M.odometry_msg(header.stamp, config.odom_frame, out.child_frame,
                                                        state.T_odom_child, state.linear, state.angular)))
        if config.publish_tf:
            messages.append(("tf", M.tf_msg(header.stamp, config.odom_frame, out.child_frame,
                                            state.T_odom_child)))
        if timings is not None:
            timings["dpm/odometry"] = 1000.0 * (time.perf_counter() - tick)   # with TF
    return messages
