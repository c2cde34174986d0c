"""Every parameter of ``dpm_node``: name, default, unit, range, whether it may change at runtime, and what it does.

One table, used to declare the parameters (with ParameterDescriptors) and checked against ``config/dpm.yaml`` by a
test, so the file, the node and the docs cannot drift apart. Thresholds change at runtime; structural parameters
(topics, QoS, engine, frames, pairing) are read-only after start.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    unit: str
    description: str
    runtime: bool = False                 # changeable while running
    range: Optional[tuple] = None         # (min, max) inclusive, numbers only
    choices: Optional[tuple] = None       # allowed strings


PARAMS: tuple[ParamSpec, ...] = (
    # --- engine
    ParamSpec("engine", "", "path", "ONNX/engine file, or 'oracle:<synthetic bag>' (ground truth); empty = the "
              "shipped engines/dpm_small.onnx"),
    ParamSpec("backend", "auto", "-", "inference backend", choices=("auto", "torch", "onnxruntime", "tensorrt")),
    # --- input
    ParamSpec("image_transport", "raw", "-", "subscribe to 'image' (raw) or '<image>/compressed' (CompressedImage)",
              choices=("raw", "compressed")),
    ParamSpec("use_camera_info", True, "-", "use K from 'camera_info' when present (else the focal is estimated)"),
    ParamSpec("camera_info_sync", "exact", "-", "'exact': CameraInfo with the image's stamp; 'latest': the newest "
              "one (drivers that publish it rarely)", choices=("exact", "latest")),
    ParamSpec("camera_info_wait", 0.1, "s", "'exact': how long a pair waits for a CameraInfo that comes after its "
              "image before estimating K", range=(0.0, 5.0)),
    ParamSpec("qos_reliability", "best_effort", "-", "input QoS reliability (SensorDataQoS = best_effort)",
              choices=("best_effort", "reliable")),
    ParamSpec("qos_durability", "volatile", "-", "input QoS durability", choices=("volatile", "transient_local")),
    ParamSpec("qos_depth", 5, "messages", "input QoS history depth", range=(1, 1000)),
    # --- frames and TF
    ParamSpec("camera_frame", "", "frame", "optical frame of the outputs; empty = the input image's frame_id"),
    ParamSpec("odom_frame", "odom", "frame", "fixed frame of odometry and TF (the child frame's pose at start)"),
    ParamSpec("base_frame", "", "frame", "robot base; when set, odometry/TF are for it via /tf_static base→camera"),
    ParamSpec("publish_tf", True, "-", "broadcast odom_frame → base_frame (or camera) on /tf (REP 105)",
              runtime=True),
    # --- pairing and threading
    ParamSpec("pair_interval", 0.2, "s", "I2 = the buffered frame closest to t1 − pair_interval",
              range=(0.001, 10.0)),
    ParamSpec("max_pair_gap", 0.5, "s", "largest accepted t1 − t2; no pair beyond", range=(0.001, 60.0)),
    ParamSpec("buffer_size", 32, "frames", "ring buffer capacity", range=(2, 1000)),
    # --- pipeline (thresholds: runtime)
    ParamSpec("conf_threshold", 0.0, "-", "pixels with confidence below are ignored by the geometry",
              runtime=True, range=(0.0, 1e6)),
    ParamSpec("eps_rel", 0.02, "-", "motion threshold relative to the point's distance", runtime=True,
              range=(0.0, 1.0)),
    ParamSpec("eps_abs", 0.0, "m", "absolute motion threshold in metres (with a scale_source: converted by the fixed "
              "factor or the previous pair's); 0 = use eps_rel",
              runtime=True, range=(0.0, 100.0)),
    ParamSpec("min_object_pixels", 50, "pixels", "smaller moving components are not objects", runtime=True,
              range=(1, 10_000_000)),
    ParamSpec("object_max_gap", 0.05, "-", "3D split distance inside a moving component, as a fraction of the "
              "distance to the camera", runtime=True, range=(1e-4, 100.0)),
    ParamSpec("ego_method", "pixel_aligned", "-", "ego-motion estimator (pixel_aligned and matched need a symmetric "
              "engine, else pnp is used)", choices=("pixel_aligned", "matched", "seed", "pnp")),
    ParamSpec("use_learned_mask", False, "-", "use the network's motion probability instead of ε thresholds"),
    ParamSpec("metric", False, "-", "outputs are metres although scale_source is none or chain (a metric engine, or "
              "a chain started at a known fixed_scale); fixed and depth are metric anyway"),
    # --- metric scale (dpm_ros/scale.py)
    ParamSpec("scale_source", "none", "-", "metric scale: 'none' model units; 'fixed' × fixed_scale; 'depth' median "
              "ratio to the depth image of I1 on depth_topic (metres); 'chain' one consistent scale along the "
              "sequence from the frame consecutive pairs share (starts at fixed_scale; metres only if that is)",
              choices=("none", "fixed", "depth", "chain")),
    ParamSpec("fixed_scale", 1.0, "m/unit", "metres per model unit for 'fixed'; the first pair's factor for 'chain'",
              range=(1e-6, 1e6)),
    ParamSpec("depth_topic", "depth", "topic", "metric depth image for 'depth' (sensor_msgs/Image 32FC1 metres or "
              "16UC1 millimetres), matched to the camera image by stamp"),
    ParamSpec("depth_wait", 0.1, "s", "how long a pair waits for its depth image before falling back to the chain",
              range=(0.0, 5.0)),
    # --- outputs
    ParamSpec("cloud_stride", 1, "pixels", "keep every n-th row/column in /dpm/points", range=(1, 64)),
    ParamSpec("cloud_min_confidence", 0.0, "-", "points with lower confidence are NaN in /dpm/points",
              runtime=True, range=(0.0, 1e6)),
    ParamSpec("track_gate_abs", 0.3, "m", "object id matching radius (model units unless metric)", runtime=True,
              range=(0.0, 100.0)),
    ParamSpec("track_gate_rel", 0.5, "-", "matching radius as a multiple of the object's extent diagonal",
              runtime=True, range=(0.0, 100.0)),
    ParamSpec("track_max_age", 1.0, "s", "an object unseen this long gets a new id when it returns", runtime=True,
              range=(0.0, 3600.0)),
    ParamSpec("diagnostics_period", 1.0, "s", "period of /diagnostics", range=(0.05, 60.0)),
    ParamSpec("diag_max_drop_fraction", 0.25, "-", "/diagnostics WARN when more than this fraction of the pairs "
              "made since the last report were dropped (inference slower than the camera)", runtime=True,
              range=(0.0, 1.0)),
    ParamSpec("diag_max_latency", 1.0, "s", "/diagnostics WARN when the mean latency (arrival of I1 → outputs "
              "published) of recent pairs is above this", runtime=True, range=(0.001, 3600.0)),
    ParamSpec("diag_no_pair_timeout", 5.0, "s", "/diagnostics ERROR when images arrive but no pair has been "
              "published for this long", runtime=True, range=(0.1, 3600.0)),
)

BY_NAME = {p.name: p for p in PARAMS}


def descriptor(spec: ParamSpec):
    """rcl_interfaces ParameterDescriptor for ``spec`` (type from the default, ranges, read-only)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

    kinds = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
             float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
    text = f"{spec.description} [{spec.unit}]" if spec.unit != "-" else spec.description
    if spec.choices:
        text += f" (one of: {', '.join(spec.choices)})"
    d = ParameterDescriptor(name=spec.name, type=kinds[type(spec.default)], description=text,
                            read_only=not spec.runtime)
    if spec.range is not None and isinstance(spec.default, float):
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]), to_value=float(spec.range[1]))]
    elif spec.range is not None and isinstance(spec.default, int) and not isinstance(spec.default, bool):
        d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)]
    return d


def check_choice(name: str, value) -> Optional[str]:
    """An error message when ``value`` is not one of the parameter's choices, else None."""
    spec = BY_NAME.get(name)
    if spec is not None and spec.choices and value not in spec.choices:
        return f"parameter '{name}' = '{value}' is not one of: {', '.join(spec.choices)}"
    return None


def coerce_overrides(overrides: dict) -> dict:
    """rclpy Parameter overrides with an integer given for a double parameter (``-p pair_interval:=1``) turned into
    that double (rclpy would refuse the type); others unchanged. Returns the new dict."""
    from rclpy.parameter import Parameter

    out = dict(overrides)
    for name, prm in overrides.items():
        spec = BY_NAME.get(name)
        if spec is not None and isinstance(spec.default, float) and prm.type_ == Parameter.Type.INTEGER:
            out[name] = Parameter(name, Parameter.Type.DOUBLE, float(prm.value))
    return out


def unknown_overrides(names) -> list[str]:
    """'name (did you mean x?)' for each given parameter name dpm_node does not have (rclpy ignores them)."""
    import difflib

    out = []
    for name in sorted(names):
        if name in BY_NAME or name == "use_sim_time" or name.startswith("qos_overrides."):
            continue
        close = difflib.get_close_matches(name, BY_NAME, n=1)
        out.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return out
