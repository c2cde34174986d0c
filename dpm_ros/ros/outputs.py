"""One DPM result → the per-pair output messages of the node (pure; shared by ``dpm_node`` and ``dpm replay``).

Topic keys (relative to the node's namespace): ``dpm/points``, ``dpm/motion_mask``, ``dpm/object_labels``,
``dpm/depth``, ``dpm/camera_info``, ``dpm/objects``, ``dpm/objects/markers``. Ego-motion messages (odometry, TF)
need the accumulated trajectory: see ``odometry.py`` and ``messages.odometry_msg`` / ``messages.tf_msg``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from dpm_ros.pointcloud import build_cloud
from dpm_ros.ros import messages as M
from dpm_ros.ros.image_convert import resize_nearest


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


def pair_messages(result, header, image1: np.ndarray, ids: list[int] | None = None,
                  options: OutputOptions | None = None) -> dict:
    """Messages for one pair. header: I1's header (stamp, optical frame_id); image1: I1 as uint8 (H, W, 3) RGB at
    the INPUT resolution (masks are published at that size; the cloud is coloured from it at output size)."""
    opt = options or OutputOptions()
    H, W = image1.shape[:2]
    p = np.asarray(result.maps["p1_t1_pi1"], np.float32)
    h, w = p.shape[:2]
    conf = result.maps.get("conf_p1_t1_pi1")
    conf = np.ones((h, w), np.float32) if conf is None else np.asarray(conf, np.float32)
    labels = relabel(result.labels1, result.objects, ids)
    valid = np.isfinite(p).all(-1) & (p[..., 2] > 0) & (conf >= opt.cloud_min_confidence)
    cloud = build_cloud(p, resize_nearest(image1, h, w), conf, labels, point_velocity(result), valid,
                        stride=opt.cloud_stride)
    reps = object_reports(result, ids)
    depth = np.where(valid, p[..., 2], np.float32(np.nan))
    hd = M.copy_header(header)
    return {
        "dpm/points": M.pointcloud_msg(hd, cloud),
        "dpm/motion_mask": M.motion_mask_msg(hd, result.motion_mask1, H, W),
        "dpm/object_labels": M.labels_msg(hd, labels, H, W),
        "dpm/depth": M.depth_msg(hd, depth),
        "dpm/camera_info": M.camera_info_msg(hd, result.K, h, w),
        "dpm/objects": M.objects_msg(hd, reps, result.dt, opt.metric),
        "dpm/objects/markers": M.markers_msg(hd, reps, result.dt),
    }
