"""dpm_node's parameters: the one table (name, default, unit, range, whether it may change at runtime, what it does)
and ``Config``, the typed, frozen value built from it and checked by one function, ``problems``. ROS-free.

Every consumer takes a ``Config``: the node (``ros/node.py``: launch/CLI parameters at start, ``ros2 param set`` at
runtime), ``dpm replay`` / ``dpm batch`` (``--params`` YAML and ``-p NAME:=VALUE``, read here as rcl reads them) and
``DPMPipeline``; so they accept and reject the same values with the same message. ``config/dpm.yaml`` lists every
parameter (a test holds it to this table); ``ros/params.py`` turns the table into rclpy ParameterDescriptors.
Thresholds change at runtime; structural parameters (topics, QoS, engine, frames, pairing) are read-only after start.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional


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
    ParamSpec("engine_threads", 1, "threads", "CPU threads of the network on onnxruntime's CPU provider (they "
              "sleep, never spin, between calls); 0 = onnxruntime's choice, one per core. 1 leaves the other core of "
              "a 2-core robot to frame conversion and publishing; same outputs either way", range=(0, 256)),
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
    ParamSpec("max_pair_gap", 0.5, "s", "largest accepted t1 − t2; no pair beyond (≥ pair_interval)",
              range=(0.001, 60.0)),
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
    # --- metric scale (dpm_ros/stream/scale.py)
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
IGNORED = ("use_sim_time",)   # rclpy's own parameter: accepted everywhere, not part of the configuration


class ConfigError(ValueError):
    """Invalid dpm_node parameters; the message names each one and why."""


def problems(values: Mapping[str, Any]) -> list[str]:
    """Every reason why ``values`` (parameter name → value, one for each parameter of the table) is not a valid
    configuration; [] when it is. Checks, per parameter: the type of its default (bool, int, float, str; an int is
    not a float here, ``Config.from_mapping`` converts it first), finite numbers, the choices, the range (inclusive);
    then across parameters: max_pair_gap ≥ pair_interval, and a depth_topic for scale_source 'depth'."""
    out = []
    for spec in PARAMS:
        v, kind = values[spec.name], type(spec.default)
        if type(v) is not kind:
            out.append(f"parameter '{spec.name}' must be {kind.__name__}, got {v!r}")
        elif kind is float and not math.isfinite(v):
            out.append(f"parameter '{spec.name}' = {v} is not a finite number")
        elif spec.choices and v not in spec.choices:
            out.append(f"parameter '{spec.name}' = '{v}' is not one of: {', '.join(spec.choices)}")
        elif spec.range is not None and not spec.range[0] <= v <= spec.range[1]:
            unit = "" if spec.unit == "-" else f" {spec.unit}"
            out.append(f"parameter '{spec.name}' = {v} is outside {spec.range[0]}..{spec.range[1]}{unit}")
    if out:
        return out
    if values["max_pair_gap"] < values["pair_interval"]:
        out.append(f"max_pair_gap ({values['max_pair_gap']} s) must be ≥ pair_interval "
                   f"({values['pair_interval']} s)")
    if values["scale_source"] == "depth" and not values["depth_topic"].strip("/ "):
        out.append("scale_source 'depth' needs a depth_topic (empty)")
    return out


def _default(name: str):
    return BY_NAME[name].default


@dataclass(frozen=True)
class Config:
    """The parameters of one dpm_node / ``dpm replay`` run (names, units and defaults: ``PARAMS``). Frozen and valid
    by construction: ``__post_init__`` runs ``problems`` and raises ConfigError; ``replace`` makes a changed copy
    (checked again, cross-parameter rules included). Build one with ``Config()`` (the defaults),
    ``Config.from_mapping`` (names → values, e.g. the node's overrides) or ``load_config`` (a params file and
    ``-p`` overrides)."""
    engine: str = _default("engine")
    backend: str = _default("backend")
    engine_threads: int = _default("engine_threads")
    image_transport: str = _default("image_transport")
    use_camera_info: bool = _default("use_camera_info")
    camera_info_sync: str = _default("camera_info_sync")
    camera_info_wait: float = _default("camera_info_wait")
    qos_reliability: str = _default("qos_reliability")
    qos_durability: str = _default("qos_durability")
    qos_depth: int = _default("qos_depth")
    camera_frame: str = _default("camera_frame")
    odom_frame: str = _default("odom_frame")
    base_frame: str = _default("base_frame")
    publish_tf: bool = _default("publish_tf")
    pair_interval: float = _default("pair_interval")
    max_pair_gap: float = _default("max_pair_gap")
    buffer_size: int = _default("buffer_size")
    conf_threshold: float = _default("conf_threshold")
    eps_rel: float = _default("eps_rel")
    eps_abs: float = _default("eps_abs")
    min_object_pixels: int = _default("min_object_pixels")
    object_max_gap: float = _default("object_max_gap")
    ego_method: str = _default("ego_method")
    use_learned_mask: bool = _default("use_learned_mask")
    metric: bool = _default("metric")
    scale_source: str = _default("scale_source")
    fixed_scale: float = _default("fixed_scale")
    depth_topic: str = _default("depth_topic")
    depth_wait: float = _default("depth_wait")
    cloud_stride: int = _default("cloud_stride")
    cloud_min_confidence: float = _default("cloud_min_confidence")
    track_gate_abs: float = _default("track_gate_abs")
    track_gate_rel: float = _default("track_gate_rel")
    track_max_age: float = _default("track_max_age")
    diagnostics_period: float = _default("diagnostics_period")
    diag_max_drop_fraction: float = _default("diag_max_drop_fraction")
    diag_max_latency: float = _default("diag_max_latency")
    diag_no_pair_timeout: float = _default("diag_no_pair_timeout")

    def __post_init__(self) -> None:
        errors = problems(self.__dict__)
        if errors:
            raise ConfigError("; ".join(errors))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: Optional[Config] = None) -> Config:
        """``base`` (default: the table's defaults) with ``values`` (name → value) applied. An int given for a float
        parameter is that float (``-p pair_interval:=1``, as the node takes it); an unknown name, or any value
        ``problems`` rejects, raises ConfigError (every invalid value in one message). ``use_sim_time`` is ignored."""
        unknown = unknown_names(n for n in values if n not in IGNORED)
        if unknown:
            raise ConfigError(f"unknown dpm_node parameter(s): {', '.join(unknown)} (see config/dpm.yaml)")
        given = {}
        for name, value in values.items():
            if name in IGNORED:
                continue
            if isinstance(BY_NAME[name].default, float) and type(value) is int:
                value = float(value)
            given[name] = value
        return dataclasses.replace(base if base is not None else cls(), **given)

    def replace(self, **changes) -> Config:
        """A copy with ``changes`` (name=value) applied and checked as ``from_mapping`` does."""
        return self.from_mapping(changes, base=self)

    def as_dict(self) -> dict:
        """name → value, in the table's order (for JSON, e.g. ``dpm batch``'s manifest)."""
        return {spec.name: getattr(self, spec.name) for spec in PARAMS}


_fields = [(f.name, f.type) for f in dataclasses.fields(Config)]
if _fields != [(p.name, type(p.default).__name__) for p in PARAMS]:   # the class is the table's typed view
    raise AssertionError(f"Config's fields differ from PARAMS: {_fields}")


def unknown_names(names) -> list[str]:
    """'name (did you mean x?)' for each name that is not a parameter of the table, sorted."""
    out = []
    for name in sorted(names):
        if name in BY_NAME:
            continue
        close = difflib.get_close_matches(name, BY_NAME, n=1)
        out.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return out


# --- reading values as rcl does (``-p NAME:=VALUE`` and --params-file of dpm_node) --------------------------------

_TRUE = {"y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"}
_FALSE = {"n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"}
_INT = re.compile(r"[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\Z")
_FLOAT = re.compile(r"[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf|infinity|nan|\.inf|\.nan)\Z", re.IGNORECASE)


def scalar_value(text: str, quoted: bool = False):
    """A YAML scalar as rcl's parameter parser (rcl_yaml_param_parser, what dpm_node reads ``-p`` and params files
    with) types it: quoted → str; the YAML 1.1 booleans (y/yes/true/on and n/no/false/off, three casings) → bool;
    a C integer (decimal, 0x hex, 0 octal) → int; a C double (1e3, .5, inf, nan, .inf) → float; anything else → str.
    PyYAML differs (1e3 and inf are strings there, 1_000 and 12:30 integers, ~ is None), hence this."""
    if quoted:
        return text
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    if _INT.match(text):
        sign, body = (-1, text[1:]) if text[0] == "-" else (1, text.lstrip("+"))
        base = 16 if body[:2] in ("0x", "0X") else 8 if len(body) > 1 and body[0] == "0" else 10
        return sign * int(body, base)
    if _FLOAT.match(text):
        return float(text.replace(".", "", 1) if re.search(r"\.(inf|nan)", text, re.IGNORECASE) else text)
    return text


def _node_value(node):
    import yaml

    if isinstance(node, yaml.MappingNode):
        return {_node_value(k): _node_value(v) for k, v in node.value}
    if isinstance(node, yaml.SequenceNode):
        return [_node_value(v) for v in node.value]
    return scalar_value(node.value, quoted=node.style is not None)


def parse_value(text: str):
    """The value of ``-p NAME:=VALUE`` as dpm_node gets it (YAML, typed by ``scalar_value``); ValueError when empty
    (rcl refuses ``-p NAME:=``)."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ValueError(f"'{text}' is not a YAML value: {exc}") from None
    if node is None:
        raise ValueError("empty value (-p NAME:=VALUE)")
    return _node_value(node)


NODE_SECTIONS = ("/**", "dpm_node", "/dpm_node", "/**/dpm_node")


def read_params_file(path) -> dict:
    """name → value of dpm_node's section(s) (``/**``, ``dpm_node`` → ``ros__parameters``) of a ROS 2 params file,
    values typed as rcl types them (``scalar_value``). FileNotFoundError / ValueError for a missing or unreadable
    file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file '{path}' does not exist")
    try:
        node = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ValueError(f"params file '{path}' is not valid YAML: {exc}") from exc
    doc = _node_value(node) if node is not None else {}
    given: dict = {}
    for key in NODE_SECTIONS:
        section = doc.get(key) if isinstance(doc, dict) else None
        if isinstance(section, dict) and isinstance(section.get("ros__parameters"), dict):
            given.update(section["ros__parameters"])
    return given


def load_config(params_file=None, overrides: Optional[Mapping[str, Any]] = None) -> Config:
    """dpm_node's configuration as ``dpm replay`` / ``dpm batch`` build it: the table's defaults, then a ROS 2
    params file (``read_params_file``), then ``overrides`` (name → value, e.g. parsed ``-p``). Unknown names and
    invalid values raise ConfigError, as the node refuses them."""
    given = dict(read_params_file(params_file)) if params_file is not None else {}
    given.update(overrides or {})
    return Config.from_mapping(given)
