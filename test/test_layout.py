"""The floor plan, checked from the source (ast, nothing imported): only ``dpm_ros/ros/`` imports rclpy at module
level, the commands offered without ROS never reach it, and each command's help line lives in one place."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpm_ros import cli

PKG = Path(__file__).resolve().parents[1] / "dpm_ros"
ROS_ROOTS = {"rclpy", "rclpy_message_converter", "launch", "launch_ros", "tf2_ros", "message_filters"}
ROS_MESSAGES = {"std_msgs", "sensor_msgs", "geometry_msgs", "nav_msgs", "tf2_msgs", "visualization_msgs",
                "diagnostic_msgs", "builtin_interfaces", "rcl_interfaces"}

# Modules outside dpm_ros/ros/ (the commands aside, which import it lazily by design) that import rclpy, or the ROS
# layer dpm_ros.ros, inside a function. Never add to these lists: new ROS code goes under dpm_ros/ros/.
RCLPY_ALLOWED: set[str] = set()
ROS_LAYER_ALLOWED = RCLPY_ALLOWED | {
    "dpm_ros.batch_workers",   # a worker of `dpm batch` (a NEEDS_ROS command) runs dpm_ros.ros.replay.replay_bag
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(name: str, module_level_only: bool) -> set[str]:
    """Absolute names imported by module ``name`` (each dotted prefix too): at module level only (what importing
    it runs), or anywhere in it (function-level imports included)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if module_level_only and isinstance(node, (ast.If, ast.Try)):   # `try: import x` at module level
            nodes.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    out = set()
    for n in found:
        parts = n.split(".")
        out |= {".".join(parts[:k]) for k in range(1, len(parts) + 1)}
    return out


def _reaches(start: str, module_level_only: bool) -> set[str]:
    """Everything imported from ``start`` through dpm_ros modules (transitively)."""
    seen, todo, out = set(), [start], set()
    while todo:
        m = todo.pop()
        if m in seen or m not in MODULES:
            continue
        seen.add(m)
        imported = _imports(m, module_level_only)
        out |= imported
        todo.extend(imported)
    return out


def _imports_ros(names: set[str]) -> bool:
    return any(n.split(".")[0] in ROS_ROOTS for n in names)


def test_walker_sees_a_planted_module_level_rclpy_import(tmp_path):
    path = MODULES["dpm_ros.stream.pairing"]
    tree = ast.parse("import numpy as np\ntry:\n    from rclpy.node import Node\nexcept ImportError:\n    pass\n")
    MODULES["dpm_ros.stream.pairing"] = tmp_path / "pairing.py"
    (tmp_path / "pairing.py").write_text(ast.unparse(tree))
    try:
        assert _imports_ros(_imports("dpm_ros.stream.pairing", True))
    finally:
        MODULES["dpm_ros.stream.pairing"] = path


def _outside_ros(name: str) -> bool:
    return not name.startswith(("dpm_ros.ros", "dpm_ros.commands"))


def test_no_module_outside_dpm_ros_ros_imports_ros_at_module_level():
    offenders = {m for m in MODULES if not m.startswith("dpm_ros.ros") and _imports_ros(_imports(m, True))}
    assert not offenders, f"import rclpy lazily (inside the function that needs it) or move to dpm_ros/ros/: " \
                          f"{sorted(offenders)}"


def test_only_dpm_ros_ros_imports_rclpy():
    offenders = {m for m in MODULES if _outside_ros(m) and _imports_ros(_imports(m, False))}
    assert offenders <= RCLPY_ALLOWED, f"rclpy imported outside dpm_ros/ros/: {sorted(offenders - RCLPY_ALLOWED)}"
    assert offenders == RCLPY_ALLOWED, f"remove from RCLPY_ALLOWED: {sorted(RCLPY_ALLOWED - offenders)}"


def test_the_core_does_not_call_into_dpm_ros_ros():
    offenders = {m for m in MODULES if _outside_ros(m) and any(n.startswith("dpm_ros.ros") for n in _imports(m, False))}
    assert offenders <= ROS_LAYER_ALLOWED, f"core importing dpm_ros.ros: {sorted(offenders - ROS_LAYER_ALLOWED)}"
    assert offenders == ROS_LAYER_ALLOWED, f"remove from ROS_LAYER_ALLOWED: {sorted(ROS_LAYER_ALLOWED - offenders)}"


# Commands offered without ROS although one of their targets needs it (that target fails without ROS).
MIXED = {"bench": "the `io` target (dpm_ros.ros.io_bench)"}


@pytest.mark.parametrize("command", sorted(cli.SUBCOMMANDS))
def test_commands_offered_without_ros_never_reach_it(command):
    """Every import the command can run (function-level included), transitively: a pure command reaches neither
    rclpy nor dpm_ros.ros (left out by `pip install .`); a NEEDS_ROS command does (else it is hidden for nothing)."""
    reached = _reaches(cli._module_name(command), False)
    needs = _imports_ros(reached) or any(n.startswith("dpm_ros.ros") for n in reached)
    if command in MIXED:
        assert needs and command not in cli.NEEDS_ROS, command
        return
    assert needs == (command in cli.NEEDS_ROS), (command, sorted(n for n in reached if n.startswith("dpm_ros.ros")))


def test_each_help_line_lives_in_cli_only():
    for command in cli.SUBCOMMANDS:
        path = MODULES[cli._module_name(command)]
        tree = ast.parse(path.read_text())
        names = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "HELP" not in names, f"{path.name}: the help line is cli.SUBCOMMANDS[{command!r}]"
        assert {"add_arguments", "run"} <= functions, path.name
    assert set(cli.NEEDS_ROS) <= set(cli.SUBCOMMANDS)


# Run as `python -c`: rclpy and dpm_ros.ros cannot be imported (as after a plain `pip install .`); then the dpm command.
_WITHOUT_ROS = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "rclpy" or name == "dpm_ros.ros" or name.startswith("dpm_ros.ros."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Hide())
from dpm_ros import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def _dpm_without_ros(*args, cwd):
    return subprocess.run([sys.executable, "-c", _WITHOUT_ROS, *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ), cwd=cwd)


def test_without_ros_dpm_offers_only_the_pure_commands_and_they_run(tmp_path):
    help_ = _dpm_without_ros("--help", cwd=tmp_path)
    assert help_.returncode == 0, help_.stderr
    listed = {line.split()[0] for line in help_.stdout.splitlines() if line.startswith("    ") and line.split()}
    pure = set(cli.SUBCOMMANDS) - cli.NEEDS_ROS
    assert pure <= listed and not (listed & cli.NEEDS_ROS), listed
    assert _dpm_without_ros("replay", "--help", cwd=tmp_path).returncode == 2     # not offered: argparse error
    synth = _dpm_without_ros("synth", "--out", str(tmp_path / "s.mcap"), "--frames", "2", "--height", "32",
                             "--width", "48", "--renderer", "numpy", cwd=tmp_path)
    assert synth.returncode == 0, synth.stderr
    assert (tmp_path / "s.mcap").stat().st_size > 10_000


STREAM = sorted(m for m in MODULES if m == "dpm_ros.stream" or m.startswith("dpm_ros.stream."))


@pytest.mark.parametrize("module", STREAM)
def test_the_stream_core_reaches_nothing_ros(module):
    """dpm_ros/stream/ (the per-pair core under the node and dpm replay): no rclpy, no ROS message package, no
    dpm_ros.ros, through any import it can run (function-level included, transitively)."""
    reached = _reaches(module, False)
    ros = sorted(n for n in reached if n.split(".")[0] in ROS_ROOTS | ROS_MESSAGES
                 or n.startswith(("dpm_ros.ros", "dpm_ros.msg")))
    assert not ros, f"{module} reaches {ros}"
