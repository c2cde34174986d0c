"""``dpm bench geometry``: time of each geometry step and of the whole default post-processing for one pair.

The pair is synthetic ground truth (``make_pair``, ~30% moving pixels) standing in for engine outputs at the
engine's output resolution. The default post-processing is what ``DPMPipeline`` runs after inference with its
defaults: pixel-aligned ego-motion (stride 4), then blocked passes for the two object flows, the motion masks
thresholded on them and the two scene flows (``flows_and_masks``), then the object split + per-object fits;
``default_post_processing_parts_ms`` splits its time into these three parts. Everything runs on one thread (numpy's
and OpenCV's OpenBLAS included). Nearest-neighbour correspondences (only the seed form needs them) are reported
separately.
"""
from __future__ import annotations

import os
import platform
import time

TARGET_MS = 5.0


def _pair(height: int, width: int, seed: int) -> dict:
    import numpy as np

    from dpm_ros import ALL_POINT_MAP_NAMES
    from dpm_ros.synthetic import make_pair

    for s in range(seed, seed + 40):                           # a pair with 25–45% moving pixels
        p = make_pair(s, height, width, 4, object_radius=(0.8, 1.2))
        if 0.25 <= p["moving1"][p["valid1"]].mean() <= 0.45:
            break
    for n in ALL_POINT_MAP_NAMES:
        p["conf_" + n] = np.ones((height, width), np.float32)
    return p


def run_geometry(height: int = 384, width: int = 512, repeats: int = 50, seed: int = 0,
                 keep_heap_memory: bool = True) -> dict:
    """Benchmark report (a JSON-able dict); timings in ms on one thread."""
    from dpm_ros.benchmarks import keep_heap, single_thread, time_call
    from dpm_ros.blas import limit_openblas_threads

    threads = single_thread()
    heap = keep_heap() if keep_heap_memory else False
    import numpy as np

    from dpm_ros import geometry as g
    from dpm_ros.geometry.flow import flows_and_masks
    from dpm_ros.pipeline import DPMPipeline, Frame

    threads["openblas"] = limit_openblas_threads(1)
    p = _pair(height, width, seed)
    pipe = DPMPipeline(engine=None)
    f1 = Frame(p["img1"], 0.0)
    f2 = Frame(p["img2"], float(p["t2"] - p["t1"]))
    few = max(1, min(repeats, 5))
    m1 = g.motion_mask(p["p1_t1_pi1"], p["p1_t2_pi1"])
    of = g.object_flow(p)

    def masks():
        return (g.motion_mask(p["p1_t1_pi1"], p["p1_t2_pi1"], pipe.config.eps_rel),
                g.motion_mask(p["p2_t1_pi1"], p["p2_t2_pi1"], pipe.config.eps_rel))

    parts = {"ego_motion": [], "flows_and_masks": [], "objects": []}      # ms of each part inside the full run

    def default_post_processing():          # what DPMPipeline.derive runs after the intrinsics
        t0 = time.perf_counter()
        _, _, s = g.ego_motion_pixel_aligned(p, stride=pipe.ego_stride)
        t1 = time.perf_counter()
        # object flows, both masks, the scene flows (π2 maps scaled by the fitted s, ≠ 1 in floats), ‖P1(t1,π1)‖²
        _, mask1, _, r2 = flows_and_masks(p, pipe.config.eps_rel, pipe.config.eps_abs or None, pass2_scale=s)
        t2 = time.perf_counter()
        pipe._objects(p, mask1, r2)
        t3 = time.perf_counter()
        for name, a, b in (("ego_motion", t0, t1), ("flows_and_masks", t1, t2), ("objects", t2, t3)):
            parts[name].append(1000.0 * (b - a))

    steps = {
        "motion_mask_one": (lambda: g.motion_mask(p["p1_t1_pi1"], p["p1_t2_pi1"]), repeats),
        "motion_masks_both": (masks, repeats),
        "ego_pixel_aligned_stride4": (lambda: g.ego_motion_pixel_aligned(p, stride=pipe.ego_stride), repeats),
        "ego_pixel_aligned_full": (lambda: g.ego_motion_pixel_aligned(p), few),
        "split_objects": (lambda: g.split_objects(m1, p["p1_t1_pi1"], pipe.config.min_object_pixels,
                                                  pipe.config.object_max_gap), repeats),
        "objects_split_and_fit": (lambda: pipe._objects(p, m1), repeats),
        "object_flow": (lambda: g.object_flow(p), repeats),
        "motion_masks_from_object_flows": (lambda: (g.displacement_mask(of["forward"], p["p1_t1_pi1"]),
                                                    g.displacement_mask(of["backward"], p["p2_t1_pi1"])), repeats),
        "scene_flow": (lambda: g.scene_flow(p), repeats),
        "flows_and_masks": (lambda: flows_and_masks(p, pipe.config.eps_rel, pipe.config.eps_abs or None,
                                                    pass2_scale=1.01), repeats),
        "default_post_processing": (default_post_processing, repeats),
        "focal_stride4": (lambda: g.estimate_focal(p["p1_t1_pi1"], stride=4), repeats),
        "focal_full": (lambda: g.estimate_focal(p["p1_t1_pi1"]), few),
        "pipeline_derive_all": (lambda: pipe.derive(p, f1, f2), repeats),
        "ego_pnp": (lambda: g.ego_motion_pnp(p, p["K"]), few),
        "ego_matched_incl_nn": (lambda: g.ego_motion_matched(p), few),
        "nearest_neighbours": (lambda: g.nearest_neighbours(p["p2_t1_pi1"], p["p1_t1_pi1"]), few),
    }
    results = {name: time_call(fn, n) for name, (fn, n) in steps.items()}
    total = results["default_post_processing"]["median_ms"]
    return {
        "target": "geometry", "height": height, "width": width, "repeats": repeats, "seed": int(p["seed"]),
        "moving_fraction": round(float(p["moving1"][p["valid1"]].mean()), 3),
        "objects": int(len(pipe._objects(p, m1)[1])),
        "threads": 1, "thread_limits": threads, "keep_heap": heap,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_average_1min": round(os.getloadavg()[0], 2), "python": platform.python_version(),
                    "numpy": np.__version__},
        "default_post_processing_ms": total, "target_ms": TARGET_MS, "meets_target": bool(total <= TARGET_MS),
        "default_post_processing_parts_ms": {k: round(float(np.median(v[-repeats:])), 4) for k, v in parts.items()},
        "nearest_neighbours_ms": results["nearest_neighbours"]["median_ms"],
        "steps": results,
    }
