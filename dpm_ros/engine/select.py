"""The ``engine`` parameter (node, ``dpm replay``, ``dpm batch``) → an Engine: a model file (default the shipped
``engines/dpm_small.onnx``) or ``oracle:<synthetic bag>`` (ground truth through the Engine interface, for exactness
tests and demos). No ROS import: ament_index is only tried, lazily, to find the installed model."""
from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_ENGINE = "dpm_small.onnx"
ORACLE = "oracle:"
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def default_engine_path() -> Path:
    """engines/dpm_small.onnx from the installed share/dpm_ros (ament index, or this interpreter's prefix, e.g. the
    venv), else from the source tree."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("dpm_ros")) / "engines" / DEFAULT_ENGINE)
    except Exception:  # package not in AMENT_PREFIX_PATH, or ament_index missing: fall back to the checkout
        pass
    candidates.append(Path(sys.prefix) / "share" / "dpm_ros" / "engines" / DEFAULT_ENGINE)  # venv install
    candidates.append(SOURCE_ROOT / "engines" / DEFAULT_ENGINE)
    for c in candidates:
        if c.is_file():
            return c
    raise ValueError(f"no engine given and the shipped model was not found (looked at: "
                     f"{', '.join(map(str, candidates))}); set the 'engine' parameter to a model file or "
                     "'oracle:<synthetic bag>'")


def oracle_bag(spec: str | None) -> Path | None:
    """The synthetic bag an ``oracle:<bag>`` spec names (``~`` expanded), or None for a model-file spec."""
    spec = (spec or "").strip()
    return Path(os.path.expanduser(spec[len(ORACLE):])) if spec.startswith(ORACLE) else None


def engine_path(spec: str | None) -> Path:
    """The model file a spec names (``~`` expanded; empty = the shipped model, ``default_engine_path``). Not for
    an ``oracle:`` spec (ValueError: see ``oracle_bag``)."""
    spec = (spec or "").strip()
    if spec.startswith(ORACLE):
        raise ValueError(f"'{spec}' names the oracle engine, not a model file")
    return Path(os.path.expanduser(spec)) if spec else default_engine_path()


def open_engine(spec: str, backend: str = "auto", threads: int | None = None):
    """Engine for the parameter value ``spec`` (see module docstring); ``threads``: the network's CPU threads on
    onnxruntime (parameter ``engine_threads``; None/0 = onnxruntime's choice)."""
    path = oracle_bag(spec)
    if path is not None:
        if not path.exists():
            raise ValueError(f"oracle engine: synthetic bag '{path}' not found (write one with `dpm synth`)")
        from dpm_ros.engine.oracle import OracleEngine

        return OracleEngine.from_bag(path)
    path = engine_path(spec)
    if not path.exists():
        raise ValueError(f"engine file '{path}' not found (parameter 'engine')")
    from dpm_ros.engine import load_engine

    return load_engine(str(path), backend=backend, threads=threads or None)
