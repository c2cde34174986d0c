"""pip install of the pure-Python core (no ROS messages, no node) for users without ROS:

    pip install .        # then: dpm --help, `from dpm_ros.geometry import umeyama`, ...

The full package (messages, dpm_node, launch and config in share/) is built by CMake: scripts/setup.sh or colcon.
Never `pip install .` into a venv that the CMake build installed into: pip would delete the generated messages.
"""
from setuptools import find_packages, setup

setup(
    name="dpm_ros",
    version="0.1.0",
    description="Dynamic Point Maps: 4D geometry from a single moving camera (pure-Python core of dpm_ros)",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["dpm_ros", "dpm_ros.*"], exclude=["dpm_ros.ros", "dpm_ros.ros.*"]),
    install_requires=["numpy", "scipy", "opencv-python-headless", "tqdm", "rosbags", "rosbags-image"],
    extras_require={"model": ["torch", "safetensors", "onnx", "onnxruntime"], "render": ["moderngl"],
                    "fleet": ["ray>=2.60,<3"]},   # dpm batch --ray (requirements-fleet.txt)
    entry_points={"console_scripts": ["dpm = dpm_ros.cli:main"]},
)
