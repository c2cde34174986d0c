"""The robot path: the same package builds with colcon (as on a system ROS 2 install) and its executables run from
the colcon install space. Here the venv (PyPI ROS 2 wheels) plays the part of /opt/ros/<distro>."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout: cannot tell the package's files")
    return [f for f in out.stdout.splitlines() if (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory):
    colcon = shutil.which("colcon", path=str(VENV / "bin"))
    if colcon is None:
        pytest.fail("colcon is not installed in the venv (scripts/setup.sh installs colcon-common-extensions)")
    ws = tmp_path_factory.mktemp("ws")
    for rel in _tracked_files():  # a clean copy of the package, as `git clone` into src/ would give
        dst = ws / "src" / "dpm_ros" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(VENV), CMAKE_PREFIX_PATH=str(VENV),
               PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    build = subprocess.run([colcon, "build", "--packages-select", "dpm_ros", "--cmake-args",
                            f"-DPython3_EXECUTABLE={VENV / 'bin' / 'python'}", "-DBUILD_TESTING=OFF"],
                           cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return ws / "install", env


def test_colcon_discovers_only_dpm_ros(colcon_install):
    """ros_deps/tf2_msgs (the PyPI-only stand-in) must not shadow the system tf2_msgs on a robot."""
    install, _ = colcon_install
    assert sorted(p.name for p in install.iterdir() if p.is_dir() and (p / "share").is_dir()) == ["dpm_ros"]


def test_install_space_has_executables_messages_and_share(colcon_install):
    install, _ = colcon_install
    pkg = install / "dpm_ros"
    for exe in ("dpm", "dpm_node"):
        path = pkg / "lib" / "dpm_ros" / exe
        assert path.is_file() and os.access(path, os.X_OK), f"{path} missing: `ros2 run dpm_ros {exe}` would fail"
    for rel in ("launch/dpm.launch.py", "config/dpm.yaml", "config/fastdds_localhost.xml", "engines/dpm_small.onnx",
                "msg/ObjectMotion.msg", "msg/ObjectMotionArray.msg", "package.xml"):
        assert (pkg / "share" / "dpm_ros" / rel).is_file(), rel
    site = next((pkg / "lib").glob("python3*/site-packages/dpm_ros"))
    assert (site / "msg" / "_object_motion_array.py").is_file(), "generated messages missing"
    assert (site / "ros" / "node.py").is_file() and (site / "__init__.py").read_text().startswith('"""dpm_ros')


def test_node_runs_from_the_install_space(colcon_install):
    """Sourcing install/setup.bash is enough: the installed dpm_node starts and reports a bad engine clearly."""
    install, env = colcon_install
    script = (f". {install / 'setup.bash'} && python -c 'import dpm_ros.msg, dpm_ros.ros.node' && "
              f"{install / 'dpm_ros' / 'lib' / 'dpm_ros' / 'dpm_node'} --ros-args -p engine:=/nonexistent.onnx")
    run = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd="/")
    assert run.returncode != 0
    assert "engine file '/nonexistent.onnx' not found" in run.stdout + run.stderr, run.stdout + run.stderr
