"""``dpm bench io``: the node's own per-frame input and per-pair output work at a camera resolution, before and after
issue 14, in CPU milliseconds of this process (``time.process_time``, OpenCV's worker threads included): what the
work costs, less sensitive to other processes on a loaded machine than wall time (reported too).

Per frame, "before": the serialised Image deserialised into a message, copied to full-resolution RGB, then resized
by the engine twice (each frame is I1 of one pair and I2 of the next) and sampled for the cloud's colours. "now":
the serialised bytes read in place (``parse_image_cdr``) and downscaled once (``prepare_pixels``). Per pair, every
per-pair output message built and serialised (``serialize_message``: the conversion a publish makes), "before" with
the former full-resolution mask and label arrays, "now" with eager (all subscribed) and lazy (none subscribed)
outputs. Every "now" message is checked byte-identical to its "before" counterpart.
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np


def _timed(fn, repeats: int) -> dict:
    fn()   # warm-up
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(1000.0 * (time.process_time() - c0))
        wall.append(1000.0 * (time.perf_counter() - w0))
    return {"cpu_ms": round(statistics.median(cpu), 3), "wall_ms": round(statistics.median(wall), 3)}


def run_io(height: int, width: int, repeats: int = 20, seed: int = 0, encoding: str = "rgb8") -> dict:
    """The JSON report (see module docstring) for a ``width`` × ``height`` camera in ``encoding``."""
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from dpm_ros.engine.pair_io import resize_image
    from dpm_ros.pipeline import DPMPipeline, Frame
    from dpm_ros.ros.bag_recorder import canonical_cdr
    from dpm_ros.engine.pair_io import resize_nearest
    from dpm_ros.engine.select import open_engine
    from dpm_ros.ros.image_convert import fill_image, image_pixels, image_to_rgb, parse_image_cdr, prepare_pixels
    from dpm_ros.ros.outputs import PAIR_TOPICS, pair_messages
    from dpm_ros.stream.step import frame_sizes
    from dpm_ros.synthetic import SyntheticSequence

    engine = open_engine("", "onnxruntime")
    engine_hw, out_hw = frame_sizes(engine)
    seq = SyntheticSequence(seed=seed, n_frames=2, fps=10.0, height=height, width=width, n_objects=3,
                            renderer="numpy")
    frames = [seq.frame(i)["image"] for i in range(2)]
    px = frames[0] if encoding == "rgb8" else np.ascontiguousarray(frames[0][..., ::-1])
    header = Header(frame_id="camera_optical")
    msg = fill_image(Image(header=header), px, "rgb8")
    msg.encoding = encoding
    data = serialize_message(msg)   # what the middleware hands a subscriber

    def before_frame():
        rgb = image_to_rgb(deserialize_message(data, Image))
        resize_image(rgb, *engine_hw)
        resize_image(rgb, *engine_hw)
        resize_nearest(rgb, *out_hw)

    def now_frame():
        prepare_pixels(*image_pixels(parse_image_cdr(data)), engine_hw, out_hw)

    result = DPMPipeline(engine).process(Frame(frames[0], 0.1, seq.K), Frame(frames[1], 0.0, seq.K))
    image1 = image_to_rgb(msg)
    colours = prepare_pixels(*image_pixels(msg), engine_hw, out_hw)[1]

    def old_masks() -> dict:
        m = resize_nearest(np.asarray(result.motion_mask1, bool), height, width)
        return {"dpm/motion_mask": fill_image(Image(header=header), np.where(m, np.uint8(255), np.uint8(0)), "mono8"),
                "dpm/object_labels": fill_image(Image(header=header),
                                                resize_nearest(np.asarray(result.labels1, np.uint16), height, width),
                                                "mono16")}

    def before_outputs():
        out = pair_messages(result, header, image1, wanted=set(PAIR_TOPICS) - {"dpm/motion_mask",
                                                                              "dpm/object_labels"})
        out.update(old_masks())
        return [serialize_message(m) for m in out.values()]

    def now_outputs(wanted=None):
        out = pair_messages(result, header, None, wanted=wanted, input_hw=(height, width), colours=colours)
        return [serialize_message(m) for m in out.values()]

    def cdr(m):
        return canonical_cdr(serialize_message(m), f"{type(m).__module__.split('.')[0]}/msg/{type(m).__name__}")

    old = pair_messages(result, header, image1, wanted=set(PAIR_TOPICS) - {"dpm/motion_mask", "dpm/object_labels"})
    old.update(old_masks())
    new = pair_messages(result, header, None, input_hw=(height, width), colours=colours)
    identical = all(cdr(old[t]) == cdr(new[t]) for t in PAIR_TOPICS)
    per_frame = {"before": _timed(before_frame, repeats), "now": _timed(now_frame, repeats)}
    per_pair = {"before_all": _timed(before_outputs, repeats), "now_all": _timed(now_outputs, repeats),
                "now_none": _timed(lambda: now_outputs(set()), repeats)}
    return {"target": "io", "camera": f"{width}x{height}", "encoding": encoding,
            "engine_input": f"{engine_hw[1]}x{engine_hw[0]}", "repeats": repeats,
            "per_frame": per_frame, "per_pair_outputs": per_pair, "outputs_identical": identical,
            "cpu_ms_per_second_at_30hz": {
                "before_all": round(30 * (per_frame["before"]["cpu_ms"] + per_pair["before_all"]["cpu_ms"]), 1),
                "now_all": round(30 * (per_frame["now"]["cpu_ms"] + per_pair["now_all"]["cpu_ms"]), 1),
                "now_none": round(30 * (per_frame["now"]["cpu_ms"] + per_pair["now_none"]["cpu_ms"]), 1)},
            "loadavg_1min": os.getloadavg()[0], "cpus": os.cpu_count()}
