"""The parameter table of ``dpm_ros.config`` in rclpy's terms: a ParameterDescriptor per parameter (type, range,
read-only, description) and the handling of rclpy's parameter overrides. The table and its checks live in
``dpm_ros.config`` (ROS-free); the node validates through ``Config`` so it refuses what ``dpm replay`` refuses."""
from __future__ import annotations

from dpm_ros.config import BY_NAME, IGNORED, ParamSpec, unknown_names


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


def override_values(overrides: dict) -> dict:
    """name → value of rclpy's parameter overrides (``-p``, ``--params-file``, launch) for the table's parameters."""
    return {name: prm.value for name, prm in overrides.items() if name in BY_NAME}


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
    """'name (did you mean x?)' for each given parameter name dpm_node does not have (rclpy ignores them; a params
    file for several nodes may carry others' names, so the node warns where ``dpm replay`` refuses)."""
    return unknown_names(n for n in names if n not in IGNORED and not n.startswith("qos_overrides."))
