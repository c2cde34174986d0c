# Source this before anything that starts rclpy: DDS stays on loopback (Fast DDS profile: shared memory + UDP on
# 127.0.0.1, unicast discovery to 127.0.0.1 only), and a ROS_DOMAIN_ID of its own unless the caller set one.
_dpm_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export FASTDDS_DEFAULT_PROFILES_FILE="$_dpm_root/config/fastdds_localhost.xml"
export ROS_AUTOMATIC_DISCOVERY_RANGE=SYSTEM_DEFAULT
export RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( ($$ % 100) + 1 ))}
_dpm_venv=${DPM_VENV:-$_dpm_root/.venv}   # the venv whose share/ the ament index sees (.venv-jazzy for the Jazzy part)
if [ -d "$_dpm_venv" ]; then export AMENT_PREFIX_PATH="$_dpm_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"; fi
unset _dpm_root _dpm_venv
