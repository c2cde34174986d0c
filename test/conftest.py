"""Test set-up shared by every test: DDS on loopback before anything imports rclpy, the source tree first on
sys.path (edits need no reinstall; generated messages still come from the venv), and paths to ../shared/data."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DPM_SHARED_DATA", ROOT.parent / "shared" / "data"))

# --- DDS stays on this machine (ros_env.md). Set before any rclpy import, also inherited by node subprocesses.
os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(ROOT / "config" / "fastdds_localhost.xml")
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SYSTEM_DEFAULT"
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 100 + 1))
os.environ["ROS_PYTHON_CHECK_FIELDS"] = "1"
venv = Path(sys.prefix)
os.environ.setdefault("AMENT_PREFIX_PATH", str(venv))

# --- source tree first, for this process and for the subprocesses tests start
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                          if p])


# --- helpers shared by the test modules (import them from here: no test module imports another)
def pad4(data: bytes) -> bytes:
    """The DDS transport pads a serialized payload with zeros to a multiple of 4 bytes (so does rosbag2's
    recorder); rclpy.serialize_message does not. Equal bytes "apart from the transport" means equal after this."""
    return data + b"\0" * (-len(data) % 4)


def dpm(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dpm_ros.cli", *map(str, args)], cwd=ROOT, env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"process timed out: {proc.args}\n{err}")
    return proc.returncode, err


def read_bag(path) -> list[tuple[str, int, bytes]]:
    """(topic, stamp ns, CDR bytes) of every message of a bag, in bag order."""
    from dpm_ros.bag import iterate_messages, open_bag

    reader = open_bag(path)
    try:
        return [(c.topic, t, d) for c, t, d in iterate_messages(reader, reader.connections)]
    finally:
        reader.close()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real third-party data with ground truth). Missing: skip, or fail under CI."""
    if not SHARED_DATA.is_dir():
        msg = f"real test data not found at {SHARED_DATA} (set DPM_SHARED_DATA)"
        if os.environ.get("DPM_REQUIRE_SHARED_DATA"):
            pytest.fail(msg)
        pytest.skip(msg)
    return SHARED_DATA


# --- The parts of this suite that also run in the other environments (README "Distributions"):
#   --part jazzy  in .venv-jazzy  (Python 3.12, ROS 2 Jazzy wheels, ONNX Runtime, no torch): scripts/test_jazzy.sh
#   --part py310  in .venv-py310  (Python 3.10, Humble/JetPack 6 minimum libraries, no ROS, no torch): test_py310.sh
# One list, no copies of tests: an entry is a file, or file::test (prefix of the node id, so a parametrised test
# counts with all its cases unless the id names one). Files not listed are not even imported there (they need torch).
PARTS = {
    "jazzy": [
        "test_node_integration.py",        # the node over DDS: oracle (exact) and the shipped ONNX model
        "test_node_stream.py::test_stream_faster_than_inference[onnx-camera]",   # a live stream on the ONNX model
        "test_node_parts.py",
        "test_messages.py",
        "test_convert_image.py",
        "test_replay.py",                   # dpm replay
        "test_replay_live.py",              # replay == the live node, byte for byte
        "test_play_record.py",              # dpm play / dpm record
        "test_launch.py",                   # the launch file: LaunchService, ros2 launch --show-args
        "test_launch_testing.py",           # launch_testing of dpm.launch.py (pytest and launch_test)
        # not test_ros2_tools.py (a `ros2 launch` session driven by ros2 node/param/topic): it passes alone in Jazzy
        # (6 of 6), but the whole part once hung near its end on the loaded machine; to add when that is understood
        "test_engine_reference.py",         # ONNX Runtime on the shipped model, torch never imported
    ],
    "py310": [
        "test_geometry_core.py",
        "test_geometry_motion.py",
        "test_geometry_fast_paths.py",
        "test_metrics.py",
        "test_pairing.py",
        "test_tracking.py",
        "test_pipeline.py",
        "test_config.py",
        "test_oracle.py",
        "test_pointcloud.py",
        "test_bag.py",
        "test_node_odometry.py",
        "test_engine_cache.py",
        "test_engine_reference.py",        # the ONNX Runtime engine on the shipped model
        "test_scale.py",
        "test_synthetic.py",
        "test_blas.py",
        "test_real_evo.py",                # real trajectories (../shared/data)
    ],
}


def pytest_addoption(parser):
    parser.addoption("--part", choices=sorted(PARTS), default=None,
                     help="run only the tests listed for this environment in test/conftest.py PARTS")


def _part(config):
    name = config.getoption("--part")
    return None if name is None else PARTS[name]


def _ignored_by_part(collection_path, config):
    part = _part(config)
    if part is not None and collection_path.is_file() and collection_path.name.startswith("test_"):
        if collection_path.name not in {e.split("::")[0] for e in part}:
            return True
    return None


def pytest_collection_modifyitems(config, items):
    part = _part(config)
    if part is None:
        return
    keep, drop = [], []
    for item in items:
        rel = item.nodeid.split("/")[-1]          # "test_x.py::test_y[case]"
        listed = any(rel == e or rel.startswith(e + "::") or rel.startswith(e + "[") for e in part)
        (keep if listed else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# --- `pytest -m "not ros"` runs the pure core alone: there rclpy and the ROS message packages cannot be imported,
# so a test that needs them and lacks the `ros` marker fails loudly instead of quietly starting DDS.
# (launch, launch_ros, launch_testing are left alone: the launch_testing pytest plugin loads them at collection.)
ROS_MODULES = ("rclpy", "rosidl_runtime_py", "rpyutils", "tf2_ros",
               "builtin_interfaces", "std_msgs", "sensor_msgs", "geometry_msgs", "nav_msgs", "tf2_msgs",
               "diagnostic_msgs", "visualization_msgs", "rcl_interfaces", "dpm_ros.msg")


class _NoRos:
    """sys.meta_path finder refusing the ROS Python packages (installed by pytest_configure under -m 'not ros')."""

    def find_spec(self, name, path=None, target=None):
        if any(name == m or name.startswith(m + ".") for m in ROS_MODULES):
            raise ImportError(f"{name}: ROS is not imported under -m 'not ros'; mark the test `ros` "
                              f"(pytestmark = pytest.mark.ros)", name=name)
        return None


def _pure_run(config) -> bool:
    return (config.option.markexpr or "").replace(" ", "") == "notros"


def pytest_configure(config):
    if _pure_run(config):
        loaded = [m for m in sys.modules if any(m == r or m.startswith(r + ".") for r in ROS_MODULES)]
        assert not loaded, f"ROS imported before the tests ran (a plugin or conftest): {loaded[:5]}"
        sys.meta_path.insert(0, _NoRos())


def pytest_ignore_collect(collection_path, config):
    """Files outside ``--part``; and under -m 'not ros' a module marked `ros` as a whole is not even imported
    (collection would import its ROS messages before -m deselects its tests)."""
    if _ignored_by_part(collection_path, config):
        return True
    if _pure_run(config) and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return "\npytestmark = pytest.mark.ros" in collection_path.read_text() or None
    return None


def pytest_sessionfinish(session, exitstatus):
    if _pure_run(session.config):
        loaded = [m for m in sys.modules if any(m == r or m.startswith(r + ".") for r in ROS_MODULES)]
        if loaded:   # e.g. an import error swallowed by a test
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            print(f"\nconftest: ROS modules were imported by a 'not ros' run: {loaded[:5]}", file=sys.stderr)
