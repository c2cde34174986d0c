"""The TensorRT engine cache: a key that pins an engine to the exact ONNX file, TensorRT version, GPU and build
settings, the metadata JSON stored beside each engine, and atomic file writes.

An engine is only valid for the TensorRT version and GPU that built it (name, compute capability, SM count and
memory: all Orin modules may report the same name), and for the build recipe (``tensorrt_build.BUILD_RECIPE``: a
fixed recipe rebuilds old engines), so a cached engine is used only when every field of its key matches; otherwise
it is rebuilt. Plain Python: tested without a GPU.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Callable

KEY_FIELDS = ("onnx_sha256", "tensorrt_version", "gpu_name", "compute_capability", "precision", "input_shapes",
              "recipe_version", "sm_count", "total_memory_mb")
CACHE_FORMAT = 2


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20, extra_files: tuple = ()) -> str:
    """Hex sha256 of a file's bytes, read in chunks (ONNX files can be GBs), followed by the bytes of
    ``extra_files`` (an ONNX model's external-data files: the weights are part of what an engine was built from)."""
    digest = hashlib.sha256()
    for name in (path, *extra_files):
        with open(name, "rb") as f:
            while block := f.read(chunk_bytes):
                digest.update(block)
    return digest.hexdigest()


def remembered_sha256(path: str | Path, extra_files: tuple = (), memo_dir: str | Path | None = None) -> str:
    """``file_sha256(path, extra_files=...)``, remembered in ``memo_dir/<stem>.sha256.json`` together with each
    file's size, mtime and inode: recomputed only when one of them changed (weights above 2 GB would otherwise be
    hashed on every start). Without ``memo_dir`` it always hashes."""
    files = [Path(path), *map(Path, extra_files)]
    stamp = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns, f.stat().st_ino] for f in files]
    memo = Path(memo_dir) / f"{Path(path).stem}.sha256.json" if memo_dir is not None else None
    if memo is not None:
        try:
            saved = json.loads(memo.read_text())
            if saved.get("files") == stamp and re.fullmatch(r"[0-9a-f]{64}", saved.get("sha256", "")):
                return saved["sha256"]
        except (OSError, ValueError, AttributeError):
            pass
    digest = file_sha256(path, extra_files=tuple(extra_files))
    if memo is not None:
        try:
            atomic_write_bytes(memo, json.dumps({"files": stamp, "sha256": digest}).encode())
        except OSError:  # a read-only cache folder: just hash next time too
            pass
    return digest


def engine_cache_key(onnx_sha256: str, tensorrt_version: str, gpu_name: str, compute_capability: tuple[int, int],
                     precision: str, input_shapes: dict[str, tuple[int, ...]], recipe_version: int = 0,
                     sm_count: int = 0, total_memory_mb: int = 0) -> dict:
    """The fields that decide whether a built engine may be reused, as a JSON-ready dict.

    ``input_shapes`` maps each network input name to its fixed shape, e.g. {"img1": (1, 3, 384, 512)};
    ``recipe_version``: the build recipe's version; ``sm_count`` / ``total_memory_mb``: the GPU's multiprocessors
    and memory (MiB).
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
        "recipe_version": int(recipe_version), "sm_count": int(sm_count), "total_memory_mb": int(total_memory_mb),
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


def file_mode(path: Path) -> int:
    """The permission bits a write to ``path`` should leave: the existing file's, else 0666 minus the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one, never a part
    (temporary file in the same directory, fsync, os.replace). The file keeps its mode (new: 0666 minus the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode(path))   # mkstemp makes 0600; the file keeps the mode a plain write would give
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


# engines built in this process whose cache file could not be written (read-only or full cache): path -> bytes
_IN_MEMORY: dict[str, bytes] = {}


def read_engine_bytes(path: str | Path) -> bytes:
    """The serialized engine at ``path``: from the file, or the in-memory copy kept when the cache could not be
    written (see ``get_or_build``)."""
    blob = _IN_MEMORY.get(str(path))
    return blob if blob is not None else Path(path).read_bytes()


class build_lock:
    """Exclusive lock ``<engine>.lock`` in the cache folder (fcntl.flock, released when the process dies), so that
    of several processes missing the same engine one builds it and the others wait and then use it. Where the
    lock file cannot be created (read-only cache) it is a no-op: each process builds for itself."""

    def __init__(self, engine_path: str | Path, log: Callable[[str], None] | None = None):
        self.path = Path(str(engine_path) + ".lock")
        self.log = log or (lambda text: None)
        self._fd = None

    def __enter__(self):
        import fcntl
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            self.log(f"cannot create the build lock {self.path} ({exc}); building without it")
            return self
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.log(f"another process is building {self.path.name[:-5]}; waiting for it")
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            import fcntl
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def get_or_build(cache_dir: str | Path, onnx_path: str | Path, key: dict, build: Callable[[], bytes], /,
                 force: bool = False, warn: Callable[[str], None] | None = None,
                 **meta_extra) -> tuple[Path, dict, bool]:
    """The cached engine for ``key`` or, on a miss (or ``force``), ``build()``'s bytes written to the cache under
    ``build_lock`` (re-checked after waiting: a process that waited uses the engine another one built).
    Returns (engine path, metadata, built now?). When the cache cannot be written (read-only, full) the engine
    built is kept in memory (``read_engine_bytes`` serves it) and ``warn`` says so: the build is not thrown away.
    ``meta_extra`` goes into the metadata as given (``onnx_path=`` included: the first four are positional-only)."""
    warn = warn or (lambda text: None)
    engine_path, meta_path = engine_paths(cache_dir, onnx_path, key)
    if not force and cached_engine(cache_dir, onnx_path, key) is not None:
        return engine_path, read_metadata(meta_path), False
    with build_lock(engine_path, warn):
        if not force and cached_engine(cache_dir, onnx_path, key) is not None:
            return engine_path, read_metadata(meta_path), False   # built by the process we waited for
        start = time.perf_counter()
        blob = build()
        seconds = round(time.perf_counter() - start, 3)
        meta = {"format": CACHE_FORMAT, "key": key, "created_unix": time.time(), "build_seconds": seconds,
                "engine_bytes": len(blob), **meta_extra}
        try:
            atomic_write_bytes(engine_path, blob)
            meta = write_metadata(meta_path, key, build_seconds=seconds, engine_bytes=len(blob), **meta_extra)
            _IN_MEMORY.pop(str(engine_path), None)
        except OSError as exc:
            _IN_MEMORY[str(engine_path)] = bytes(blob)
            warn(f"cannot write the engine cache {engine_path} ({exc}); using the engine built in memory (it is "
                 "built again by the next process)")
        return engine_path, meta, True
