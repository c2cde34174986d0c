"""The configuration contract (ROS-free): ``Config`` is the parameter table's typed view, frozen, and valid by
construction; ``problems`` refuses wrong types, non-finite numbers, unknown choices, values out of range and broken
cross-parameter rules; values are typed from text as rcl types them (``-p`` and params files); config/dpm.yaml is
the defaults. The node and ``dpm replay`` agreeing on each value is test_param_parity.py."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from dpm_ros.config import (BY_NAME, PARAMS, Config, ConfigError, load_config, parse_value, problems,
                            read_params_file, scalar_value)

ROOT = Path(__file__).resolve().parents[1]


def test_config_is_the_tables_typed_view_with_its_defaults():
    fields = dataclasses.fields(Config)
    assert [f.name for f in fields] == [p.name for p in PARAMS]
    c = Config()
    for p in PARAMS:
        assert getattr(c, p.name) == p.default and type(getattr(c, p.name)) is type(p.default), p.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.eps_rel = 0.5
    assert c.as_dict() == {p.name: p.default for p in PARAMS}


def test_config_yaml_is_the_defaults():
    """config/dpm.yaml, read as dpm replay and the node read it (rcl typing), is exactly Config()."""
    assert load_config(ROOT / "config" / "dpm.yaml") == Config()
    assert set(read_params_file(ROOT / "config" / "dpm.yaml")) == set(BY_NAME)


@pytest.mark.parametrize("values, why", [
    (dict(eps_rel=5.0), "parameter 'eps_rel' = 5.0 is outside 0.0..1.0"),
    (dict(eps_rel=1.0000001), "is outside 0.0..1.0"),               # inside rclpy's 1e-6 edge tolerance: still out
    (dict(eps_rel=-1e-9), "is outside 0.0..1.0"),
    (dict(cloud_stride=1000), "parameter 'cloud_stride' = 1000 is outside 1..64 pixels"),
    (dict(cloud_stride=0), "is outside 1..64"),
    (dict(max_pair_gap=math.inf), "parameter 'max_pair_gap' = inf is not a finite number"),
    (dict(eps_rel=math.nan), "parameter 'eps_rel' = nan is not a finite number"),
    (dict(cloud_stride=2.0), "parameter 'cloud_stride' must be int, got 2.0"),
    (dict(publish_tf=1), "parameter 'publish_tf' must be bool, got 1"),
    (dict(min_object_pixels=True), "parameter 'min_object_pixels' must be int, got True"),
    (dict(eps_rel="0.1"), "parameter 'eps_rel' must be float, got '0.1'"),
    (dict(engine=5), "parameter 'engine' must be str, got 5"),
    (dict(ego_method="icp"), "parameter 'ego_method' = 'icp' is not one of: pixel_aligned, matched, seed, pnp"),
    (dict(max_pair_gap=0.1), "max_pair_gap (0.1 s) must be ≥ pair_interval (0.2 s)"),
    (dict(scale_source="depth", depth_topic=""), "scale_source 'depth' needs a depth_topic"),
    (dict(pair_intervall=0.3), "unknown dpm_node parameter(s): pair_intervall (did you mean pair_interval?)"),
])
def test_invalid_values_are_refused_with_the_reason(values, why):
    with pytest.raises(ConfigError) as err:
        Config.from_mapping(values)
    assert why in str(err.value)


@pytest.mark.parametrize("values", [
    dict(eps_rel=1.0, cloud_stride=64, max_pair_gap=60.0, pair_interval=10.0, qos_depth=1000, buffer_size=2),
    dict(eps_rel=0.0, cloud_stride=1, pair_interval=0.001, max_pair_gap=0.001, fixed_scale=1e-6, depth_wait=0.0),
    dict(max_pair_gap=0.2),                                           # = pair_interval: the rule is ≥
    dict(use_sim_time=True),                                          # rclpy's own: ignored
])
def test_edge_values_are_accepted(values):
    c = Config.from_mapping(values)
    for name, value in values.items():
        if name in BY_NAME:
            assert getattr(c, name) == value


def test_an_int_is_taken_for_a_float_and_every_problem_is_told_at_once():
    c = Config.from_mapping({"pair_interval": 1, "max_pair_gap": 2})
    assert c.pair_interval == 1.0 and type(c.pair_interval) is float
    with pytest.raises(ConfigError) as err:
        Config.from_mapping({"eps_rel": 5.0, "cloud_stride": 0, "ego_method": "icp"})
    assert all(f"'{n}'" in str(err.value) for n in ("eps_rel", "cloud_stride", "ego_method"))
    assert problems(Config().as_dict()) == []


def test_replace_checks_the_whole_configuration_again():
    c = Config(pair_interval=0.1, max_pair_gap=0.15)
    assert c.replace(eps_rel=0.5).eps_rel == 0.5 and c.eps_rel == Config().eps_rel   # a copy; c is unchanged
    with pytest.raises(ConfigError, match="must be ≥ pair_interval"):
        c.replace(pair_interval=0.3)
    with pytest.raises(ConfigError, match="not a finite number"):
        c.replace(track_max_age=math.nan)


# (text, value as rcl_yaml_param_parser types it: checked against rclpy itself in test_param_parity.py)
RCL_TYPED = [
    ("1e3", 1000.0), (".inf", math.inf), ("-.inf", -math.inf), ("inf", math.inf), ("0x10", 16), ("010", 8),
    ("+5", 5), ("5", 5), ("-0", 0), ("5.", 5.0), (".5", 0.5), ("1.5e+3", 1500.0), ("1_000", "1_000"),
    ("yes", True), ("on", True), ("TRUE", True), ("y", True), ("no", False), ("Off", False), ("'5'", "5"),
    ('"x"', "x"), ("~", "~"), ("null", "null"), ("12:30", "12:30"), ("0o10", "0o10"), ("0b11", "0b11"),
    ("[1, 2]", [1, 2]), ("abc", "abc"),
]


@pytest.mark.parametrize("text, value", RCL_TYPED)
def test_values_are_typed_as_rcl_types_them(text, value):
    got = parse_value(text)
    assert got == value and type(got) is type(value)


def test_nan_and_empty_values():
    assert math.isnan(parse_value(".nan")) and math.isnan(parse_value("NaN"))
    assert scalar_value("1e3", quoted=True) == "1e3"
    with pytest.raises(ValueError, match="empty"):
        parse_value("")


def test_params_file_sections_typing_and_errors(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("/**:\n  ros__parameters:\n    eps_rel: 1e-2\n    engine: '5'\n"
                 "dpm_node:\n  ros__parameters:\n    cloud_stride: 4\nother_node:\n  ros__parameters:\n    x: 1\n")
    assert read_params_file(f) == {"eps_rel": 0.01, "engine": "5", "cloud_stride": 4}
    c = load_config(f, {"cloud_stride": 8})                           # -p overrides the file
    assert (c.eps_rel, c.engine, c.cloud_stride) == (0.01, "5", 8)
    f.write_text("/**:\n  ros__parameters:\n    eps_rel: 5\n")
    with pytest.raises(ConfigError, match="'eps_rel' = 5.0 is outside"):
        load_config(f)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
    f.write_text("/**: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(f)
