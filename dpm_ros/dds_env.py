"""Keep DDS on this machine: the Python equivalent of ``scripts/ros_env.sh`` for the tools that start ROS processes
of their own (``dpm demo``, ``dpm soak``). Fast DDS otherwise multicasts discovery out of the network interface."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import MutableMapping, Optional

SOURCE_ROOT = Path(__file__).resolve().parents[1]


def localhost_profile() -> Path:
    """config/fastdds_localhost.xml of the source tree, else of the installed share/dpm_ros. ValueError if neither."""
    candidates = [SOURCE_ROOT / "config", Path(sys.prefix) / "share" / "dpm_ros" / "config"]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("dpm_ros")) / "config")
    except Exception:  # not in the ament index
        pass
    for folder in candidates:
        if (folder / "fastdds_localhost.xml").is_file():
            return folder / "fastdds_localhost.xml"
    raise ValueError(f"Fast DDS loopback profile not found (looked in {', '.join(map(str, candidates))}); "
                     "refusing to start DDS on the network")


def loopback_env(env: Optional[MutableMapping[str, str]] = None, domain_id: Optional[int] = None,
                 domain_base: int = 1) -> MutableMapping[str, str]:
    """Set the loopback-only DDS variables in ``env`` (default ``os.environ``; call before rclpy starts) and return it.

    ``domain_id``: ROS_DOMAIN_ID to use; default ``domain_base + pid % 100`` (tests draw from 1..100, the soak from
    101..200, so concurrent runs do not cross streams). Child processes started with ``env`` use the same source
    tree as this process (PYTHONPATH), with generated messages from the venv.
    """
    env = os.environ if env is None else env
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(localhost_profile())
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SYSTEM_DEFAULT"
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env["ROS_DOMAIN_ID"] = str(domain_id if domain_id is not None else domain_base + os.getpid() % 100)
    paths = [str(SOURCE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(SOURCE_ROOT)]
    if (SOURCE_ROOT / "package.xml").is_file():  # a source checkout, not site-packages
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env
