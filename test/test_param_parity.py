"""dpm_node and ``dpm replay -p`` accept and refuse exactly the same parameter values, with the same message: each
value of the table goes to a real node (its own process, ``--ros-args -p``) and to ``dpm replay`` (the CLI). Before
the one ``Config``, replay accepted eps_rel:=5, cloud_stride:=1000 and max_pair_gap:=.inf that the node refused.
Also: a runtime ``ros2 param set`` the configuration refuses is refused with its reason and the node keeps running;
``-p`` text is typed as rcl itself types it."""
from __future__ import annotations

import math
import time

import pytest

from dpm_ros.config import parse_value
from dpm_ros.ros.harness import NodeProcess

from conftest import dpm, finish

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out

# (-p arguments, accepted, the reason both give when refused)
CASES = [
    (["eps_rel:=5"], False, "parameter 'eps_rel' = 5.0 is outside 0.0..1.0"),
    (["cloud_stride:=1000"], False, "parameter 'cloud_stride' = 1000 is outside 1..64 pixels"),
    (["max_pair_gap:=.inf"], False, "parameter 'max_pair_gap' = inf is not a finite number"),
    (["eps_rel:=.nan"], False, "parameter 'eps_rel' = nan is not a finite number"),
    (["eps_rel:=1.0000001"], False, "parameter 'eps_rel' = 1.0000001 is outside 0.0..1.0"),  # rclpy's tolerance
    (["max_pair_gap:=0.1"], False, "max_pair_gap (0.1 s) must be ≥ pair_interval (0.2 s)"),
    (["cloud_stride:=2.0"], False, "parameter 'cloud_stride' must be int, got 2.0"),
    (["ego_method:=icp"], False, "parameter 'ego_method' = 'icp' is not one of: pixel_aligned, matched, seed, pnp"),
    (["publish_tf:=1"], False, "parameter 'publish_tf' must be bool, got 1"),
    (["eps_rel:=1_000"], False, "parameter 'eps_rel' must be float, got '1_000'"),   # a string to rcl, not 1000
    (["eps_rel:=1.0", "cloud_stride:=64", "pair_interval:=10", "max_pair_gap:=60", "qos_depth:=1000",
      "track_max_age:=3600"], True, None),                                           # upper edges
    (["eps_rel:=0", "conf_threshold:=0", "fixed_scale:=1e-6", "depth_wait:=0", "camera_info_wait:=0",
      "pair_interval:=0.001", "min_object_pixels:=1"], True, None),                  # lower edges, int for float
    (["eps_rel:=1e-2", "publish_tf:=yes", "max_pair_gap:=0x1"], True, None),        # C double, YAML bool, hex int
]


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    from dpm_ros.bag import write_sequence
    from dpm_ros.synthetic import SyntheticSequence

    seq = SyntheticSequence(seed=4, n_frames=3, fps=10.0, height=48, width=64, n_objects=1, renderer="numpy")
    return write_sequence(seq, tmp_path_factory.mktemp("parity") / "seq.mcap")


def _node_verdict(bag, args, log) -> tuple[bool, str]:
    """(accepted, error text) of a dpm_node started with ``-p args``: accepted = it says ready; refused = it exits."""
    ros_args = ["--ros-args", "-p", f"engine:=oracle:{bag}"] + [a for p in args for a in ("-p", p)]
    with NodeProcess(ros_args, log) as node:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and node.alive() and "dpm_node ready" not in node.log():
            time.sleep(0.1)
        text = node.log()
        alive = node.alive()
        code = node.stop()
    assert "Traceback" not in text, text
    if "dpm_node ready" in text:
        assert alive, text
        return True, ""
    assert not alive and code == 1, text
    line = next(line for line in text.splitlines() if line.startswith("dpm_node: error: "))
    return False, line.removeprefix("dpm_node: error: ")


def _replay_verdict(bag, args, out) -> tuple[bool, str]:
    proc = dpm("replay", bag, "--out", out, "--engine", f"oracle:{bag}", "--no-progress",
               *[a for p in args for a in ("-p", p)])
    rc, err = finish(proc, timeout=120)
    assert "Traceback" not in err, err
    if rc == 0:
        return True, ""
    assert rc == 1, err
    return False, next(line for line in err.splitlines() if line.startswith("dpm replay: error: ")).removeprefix(
        "dpm replay: error: ")


@pytest.mark.parametrize("args, accepted, reason", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_node_and_replay_accept_and_refuse_the_same_values(bag, tmp_path, args, accepted, reason):
    node = _node_verdict(bag, args, tmp_path / "node.log")
    replay = _replay_verdict(bag, args, tmp_path / "out.mcap")
    assert node == replay                                         # same verdict, same message
    assert node[0] is accepted
    if not accepted:
        assert reason in node[1], node[1]


def test_a_refused_runtime_change_says_why_and_the_node_runs_on(bag, tmp_path):
    """eps_rel = 1.0000001 passes rclpy's descriptor (its edge tolerance) but not the configuration: refused with
    the reason, the value stays, the node goes on and takes a valid change."""
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import GetParameters, SetParameters

    from dpm_ros.ros.harness import Probe

    probe = Probe()
    try:
        with NodeProcess(["--ros-args", "-p", f"engine:=oracle:{bag}"], tmp_path / "node.log") as node:
            assert probe.wait_for(lambda: "dpm_node ready" in node.log() or not node.alive(), 90), node.log()
            setter = probe.node.create_client(SetParameters, "/dpm_node/set_parameters")
            getter = probe.node.create_client(GetParameters, "/dpm_node/get_parameters")
            assert setter.wait_for_service(timeout_sec=30) and getter.wait_for_service(timeout_sec=30)

            def call(client, request):
                fut = client.call_async(request)
                assert probe.wait_for(fut.done, 30)
                return fut.result()

            def set_eps(value):
                pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
                return call(setter, SetParameters.Request(parameters=[Parameter(name="eps_rel", value=pv)]))
            refused = set_eps(1.0000001).results[0]
            out_of_range = set_eps(5.0).results[0]                  # refused by rclpy's descriptor already
            value = call(getter, GetParameters.Request(names=["eps_rel"])).values[0].double_value
            ok = set_eps(0.5).results[0]
            after = call(getter, GetParameters.Request(names=["eps_rel"])).values[0].double_value
            alive = node.alive()
            log = node.log()
    finally:
        probe.close()
    assert not refused.successful and "parameter 'eps_rel' = 1.0000001 is outside 0.0..1.0" in refused.reason
    assert not out_of_range.successful and "eps_rel" in out_of_range.reason
    assert value == 0.02 and ok.successful and after == 0.5 and alive, log
    assert "Traceback" not in log, log


def test_p_values_are_typed_as_rcl_types_them(tmp_path, bag):
    """dpm replay reads -p text with dpm_ros.config.parse_value; rclpy's own parser (rcl_yaml_param_parser) must
    give the same typed values: compared on a node that got them all as overrides."""
    texts = ["1e3", ".inf", "inf", "0x10", "010", "+5", "1_000", "yes", "on", "y", "Off", ".5", "5.", "'5'",
             '"x"', "~", "null", "12:30", "0o10", "0b11", "08", "-0", ".nan", "abc"]
    script = tmp_path / "overrides.py"
    script.write_text(
        "import sys, rclpy\n"
        "rclpy.init(args=sys.argv)\n"
        "node = rclpy.create_node('typing_probe')\n"
        "for name, p in sorted(node._parameter_overrides.items(), key=lambda kv: int(kv[0][1:])):\n"
        "    print(repr(p.value))\n"
        "node.destroy_node()\n"
        "rclpy.shutdown()\n")
    import subprocess
    import sys
    args = [a for i, t in enumerate(texts) for a in ("-p", f"v{i}:={t}")]
    got = subprocess.run([sys.executable, str(script), "--ros-args", *args], capture_output=True, text=True,
                         timeout=60)
    assert got.returncode == 0, got.stderr
    rcl = [eval(line, {"__builtins__": {}, "inf": math.inf, "nan": math.nan}) for line in got.stdout.splitlines()]   # noqa: S307
    assert len(rcl) == len(texts)
    for text, theirs in zip(texts, rcl):
        ours = parse_value(text)
        assert type(ours) is type(theirs) and (ours == theirs or (ours != ours and theirs != theirs)), text
