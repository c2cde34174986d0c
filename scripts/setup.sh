#!/usr/bin/env bash
# Set up dpm_ros on a fresh machine: .venv with every dependency, tf2_msgs and our messages built with
# rosidl into the venv, and dpm_ros installed through its CMake build (one installer per venv).
# Idempotent: a second run only re-installs what changed (a few seconds).
# Usage: scripts/setup.sh            (venv at ./.venv; DPM_VENV=/path overrides)
# Other environments reuse this script: DPM_BUILD (build folder), DPM_REQUIREMENTS (requirements file) and PYTHON
# (interpreter), e.g. scripts/setup_jazzy.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${DPM_VENV:-$ROOT/.venv}
BUILD=${DPM_BUILD:-$ROOT/build}
REQ=${DPM_REQUIREMENTS:-$ROOT/requirements.txt}
PY=${PYTHON:-python3}
log() { printf '[setup] %s\n' "$*"; }
t0=$(date +%s)

# 1. venv + Python packages (skipped when requirements.txt is unchanged since the last install)
[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PY" -m venv "$VENV"; }
req_hash=$(sha256sum "$REQ" | cut -c1-16)
if [ "$(cat "$VENV/.dpm_requirements" 2>/dev/null)" != "$req_hash" ]; then
  log "installing Python packages from $(basename "$REQ")"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ" 2>&1 | { grep -v "^WARNING: Location" || true; }
  # TensorRT's API signatures (.pyi) for the backend's API check; --no-deps: its `tensorrt` dependency needs a GPU
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps 'tensorrt-stubs==10.13.*' 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
  echo "$req_hash" > "$VENV/.dpm_requirements"
  rm -f "$VENV/.dpm_cmake_fixed"
fi

# cuda-python's runtime bindings: the TensorRT backend's CUDA path when torch has no CUDA (Jetson), API-checked by
# test_tensorrt_api.py here (imports without a GPU). Checked on its own so existing venvs get it too.
"$VENV/bin/python" -c 'import cuda.bindings.runtime' 2>/dev/null || {
  log "installing cuda-bindings (cuda-python runtime bindings, 12.x)"
  "$VENV/bin/pip" install -q --disable-pip-version-check 'cuda-bindings==12.9.*' 2>&1 | { grep -v "^WARNING: Location" || true; }
}

# TensorRT 10.3 (JetPack 6) and 11.4 Python binding wheels, never installed (they need a GPU): test_tensorrt_api.py
# checks every TensorRT name the backend uses against the names compiled into both (~2.4 MB, --no-deps).
TRTW="$VENV/tensorrt-bindings"
for v in 10.3.0 11.4.0.106; do
  ls "$TRTW"/tensorrt_cu12_bindings-"$v"-*.whl >/dev/null 2>&1 || {
    log "downloading tensorrt-cu12-bindings $v (API check only)"
    "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps -d "$TRTW" "tensorrt-cu12-bindings==$v" 2>&1 \
      | { grep -v "^WARNING: Location" || true; } || log "could not download tensorrt-cu12-bindings $v (its API test skips)"
  }
done

# The fleet extra (Ray, for `dpm batch --ray` and its tests): optional for users, installed here so CI runs
# those tests (20–40 s measured on the loaded 2-core machine: one 80 MB wheel, a few small dependencies).
fleet_hash=$(sha256sum "$ROOT/requirements-fleet.txt" | cut -c1-16)
if [ "$(cat "$VENV/.dpm_requirements_fleet" 2>/dev/null)" != "$fleet_hash" ]; then
  log "installing the fleet extra (Ray)"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/requirements-fleet.txt" 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
  echo "$fleet_hash" > "$VENV/.dpm_requirements_fleet"
fi

# 2. The wheels' exported CMake files hard-code the wheel builder's include dirs; point them at this venv.
if [ ! -f "$VENV/.dpm_cmake_fixed" ]; then
  PYINC=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("include"))')
  NPINC=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
  { grep -rl '/opt/python/cp3' "$VENV"/share/*/cmake/ 2>/dev/null || true; } | xargs -r sed -i -E \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$NPINC#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$PYINC#g"
  touch "$VENV/.dpm_cmake_fixed"
fi

export CMAKE_PREFIX_PATH="$VENV" AMENT_PREFIX_PATH="$VENV"
cmake_install() {  # name src: configure once, then build + install (ninja makes repeats cheap)
  local name=$1 src=$2 b=$BUILD/$1
  if [ ! -f "$b/build.ninja" ]; then
    log "configuring $name"
    cmake -S "$src" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
      -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VENV/bin/python" > "$b.configure.log" 2>&1 \
      || { cat "$b.configure.log"; exit 1; }
  fi
  cmake --build "$b" -j"$(nproc)" > "$b.build.log" 2>&1 || { cat "$b.build.log"; exit 1; }
  cmake --install "$b" > "$b.install.log" 2>&1 || { cat "$b.install.log"; exit 1; }
}
mkdir -p "$BUILD"

# 3. tf2_msgs (no wheel on PyPI): only TFMessage, same type hash as the real package.
if ! "$VENV/bin/python" -c 'import tf2_msgs.msg' 2>/dev/null; then
  log "building tf2_msgs into the venv"
  cmake_install tf2_msgs "$ROOT/ros_deps/tf2_msgs"
fi

# 4. dpm_ros itself (messages + Python + executables + share/).
cmake_install dpm_ros "$ROOT"
"$VENV/bin/python" -c 'import dpm_ros.msg, dpm_ros.cli' || { log "dpm_ros did not install"; exit 1; }

# 5. The real ROS 2 Python tools (launch, launch_ros, launch_testing, ros2cli, sensor_msgs_py) where the vendored
#    sources sit beside this clone (../shared/ros/vendor; DPM_ROS_VENDOR overrides). Not on PyPI (and PyPI's
#    `launch` is an unrelated package): without them the tests that need them skip, saying why. Re-installed only
#    when the vendored sources change (stamp = hash of their MANIFEST + installer).
VENDOR=${DPM_ROS_VENDOR:-$ROOT/../shared/ros/vendor}
if [ -x "$VENDOR/install_ros_tools.sh" ]; then
  vendor_hash=$(cat "$VENDOR/MANIFEST.txt" "$VENDOR/install_ros_tools.sh" | sha256sum | cut -c1-16)
  if [ "$(cat "$VENV/.dpm_ros_tools" 2>/dev/null)" != "$vendor_hash" ] \
     || ! "$VENV/bin/python" -c 'import launch_ros, launch_testing, ros2cli, sensor_msgs_py' 2>/dev/null; then
    log "installing the vendored ROS 2 tools (launch, launch_testing, ros2cli, sensor_msgs_py) from $VENDOR"
    BUILD_DIR="$BUILD/ros_tools" "$VENDOR/install_ros_tools.sh" "$VENV" > "$BUILD/ros_tools.log" 2>&1 \
      || { cat "$BUILD/ros_tools.log"; exit 1; }
    echo "$vendor_hash" > "$VENV/.dpm_ros_tools"
  fi
fi
log "ready in $(( $(date +%s) - t0 )) s: $VENV"
