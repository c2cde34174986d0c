"""The TensorRT engine cache: a key that pins an engine to the exact ONNX file, TensorRT version, GPU and build
settings, the metadata JSON stored beside each engine, and atomic file writes.

An engine is only valid for the TensorRT version and GPU (compute capability) that built it, so a cached engine is
used only when every field of its key matches; otherwise it is rebuilt. Plain Python: tested without a GPU.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

KEY_FIELDS = ("onnx_sha256", "tensorrt_version", "gpu_name", "compute_capability", "precision", "input_shapes")
CACHE_FORMAT = 1


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20, extra_files: tuple = ()) -> str:
    """Hex sha256 of a file's bytes, read in chunks (ONNX files can be GBs), followed by the bytes of
    ``extra_files`` (an ONNX model's external-data files: the weights are part of what an engine was built from)."""
    digest = hashlib.sha256()
    for name in (path, *extra_files):
        with open(name, "rb") as f:
            while block := f.read(chunk_bytes):
                digest.update(block)
    return digest.hexdigest()


def engine_cache_key(onnx_sha256: str, tensorrt_version: str, gpu_name: str, compute_capability: tuple[int, int],
                     precision: str, input_shapes: dict[str, tuple[int, ...]]) -> dict:
    """The fields that decide whether a built engine may be reused, as a JSON-ready dict.

    ``input_shapes`` maps each network input name to its fixed shape, e.g. {"img1": (1, 3, 384, 512)}.
    """
    if not re.fullmatch(r"[0-9a-f]{64}", onnx_sha256):
        raise ValueError(f"onnx_sha256 must be 64 lowercase hex digits, got {onnx_sha256!r}")
    if precision not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
    if len(compute_capability) != 2:
        raise ValueError(f"compute_capability must be (major, minor), got {compute_capability!r}")
    return {
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": str(tensorrt_version),
        "gpu_name": str(gpu_name),
        "compute_capability": [int(c) for c in compute_capability],
        "precision": precision,
        "input_shapes": {name: [int(d) for d in shape] for name, shape in sorted(input_shapes.items())},
    }


def key_digest(key: dict) -> str:
    """16 hex digits identifying a key (sha256 of its canonical JSON): part of the engine file name."""
    canonical = json.dumps({f: key[f] for f in KEY_FIELDS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def default_cache_dir(onnx_path: str | Path) -> Path:
    """Where engines for ``onnx_path`` are cached: ``$DPM_ENGINE_CACHE`` when set, else the ONNX file's folder
    when writable (``engines/`` in a checkout), else ``$XDG_CACHE_HOME/dpm_ros/engines`` (an installed, read-only
    share/ folder)."""
    if os.environ.get("DPM_ENGINE_CACHE"):
        return Path(os.environ["DPM_ENGINE_CACHE"])
    folder = Path(onnx_path).resolve().parent
    if os.access(folder, os.W_OK):
        return folder
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dpm_ros" / "engines"


def engine_paths(cache_dir: str | Path, onnx_path: str | Path, key: dict) -> tuple[Path, Path]:
    """(engine file, metadata JSON) for ``onnx_path`` under ``cache_dir``: ``<stem>.<digest>.engine[.json]``."""
    stem = Path(onnx_path).stem
    engine = Path(cache_dir) / f"{stem}.{key_digest(key)}.engine"
    return engine, engine.with_name(engine.name + ".json")


def timing_cache_path(cache_dir: str | Path, tensorrt_version: str, gpu_name: str,
                      compute_capability: tuple[int, int]) -> Path:
    """Where the TensorRT timing cache for this TensorRT version and GPU lives (shared by all models)."""
    tag = hashlib.sha256(f"{tensorrt_version}|{gpu_name}|{tuple(compute_capability)}".encode()).hexdigest()[:12]
    return Path(cache_dir) / f"timing_{tag}.timing"


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one, never a part
    (temporary file in the same directory, fsync, os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_metadata(path: str | Path, key: dict, **extra) -> dict:
    """Write the metadata JSON of a built engine (its key plus ``extra``, e.g. build seconds) atomically."""
    meta = {"format": CACHE_FORMAT, "key": key, "created_unix": time.time(), **extra}
    atomic_write_bytes(path, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return meta


def read_metadata(path: str | Path) -> dict | None:
    """The metadata dict at ``path``, or None when it is missing or unreadable (a cache miss, not an error)."""
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and isinstance(meta.get("key"), dict) else None


def mismatched_fields(key: dict, meta: dict | None) -> list[str]:
    """Key fields in which ``meta`` (from read_metadata) differs from ``key``; ["missing"] when there is no
    metadata. Empty list: the cached engine may be used."""
    if meta is None:
        return ["missing"]
    if meta.get("format") != CACHE_FORMAT:
        return ["format"]
    cached = meta["key"]
    return [f for f in KEY_FIELDS if cached.get(f) != key.get(f)]


def cached_engine(cache_dir: str | Path, onnx_path: str | Path, key: dict) -> Path | None:
    """The cached engine file for ``key`` if it exists, is non-empty and its metadata matches the key exactly."""
    engine, meta_path = engine_paths(cache_dir, onnx_path, key)
    if not engine.is_file() or engine.stat().st_size == 0:
        return None
    return engine if not mismatched_fields(key, read_metadata(meta_path)) else None
