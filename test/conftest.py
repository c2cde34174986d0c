"""Test set-up shared by every test: DDS on loopback before anything imports rclpy, the source tree first on
sys.path (edits need no reinstall; generated messages still come from the venv), and paths to ../shared/data."""
from __future__ import annotations

import os
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
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real third-party data with ground truth). Missing: skip, or fail under CI."""
    if not SHARED_DATA.is_dir():
        msg = f"real test data not found at {SHARED_DATA} (set DPM_SHARED_DATA)"
        if os.environ.get("DPM_REQUIRE_SHARED_DATA"):
            pytest.fail(msg)
        pytest.skip(msg)
    return SHARED_DATA
