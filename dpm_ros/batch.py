"""Many bags offline: every input bag is one task that runs ``replay.replay_bag`` (the code of ``dpm replay``) with
the same parameters and writes ``OUT_DIR/<name>.mcap``; the tasks run in local worker processes or on a Ray cluster.

- Workers (``batch_workers.py``): ``N`` long-lived processes (``multiprocessing`` spawn) or ``N`` Ray actors that
  declare their resources (``num_gpus`` when the backend needs a GPU, CPUs otherwise). A worker opens the engine
  once (a per-process cache) and runs one bag at a time; a TensorRT engine is built under a file lock in its cache
  folder, so workers sharing that folder build it once per GPU model and load it after.
- Isolation: a bag that raises is recorded as failed with its error; a worker that dies (crash, OOM kill) fails only
  the bag it held and is replaced.
- ``OUT_DIR/manifest.json`` (written atomically after each bag): per bag status (done / skipped / failed), pairs,
  images, seconds, node, worker pid, error. A re-run skips a bag whose output is complete and valid: recorded done
  by a run with the same settings (parameters, topics, engine file's sha256) on the same input (size, mtime), and
  the file is there with the recorded size and message count. Any other existing output is left alone (the bag
  fails with the reason) unless ``overwrite``.
- Outputs appear atomically: ``replay_bag`` stages each bag in a hidden sibling and moves it into place when
  complete (``output_files`` rules: an old output survives a failed run).
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dpm_ros.batch_workers import connect_ray, dead_worker_record, engine_on_gpu_here, run_local, run_ray
from dpm_ros.config import Config

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
BAG_SUFFIXES = (".mcap", ".db3")
COMPLETE = ("done", "skipped")


# ------------------------------------------------------------------------------------------------ inputs

def _is_bag_dir(path: Path) -> bool:
    return path.is_dir() and (path / "metadata.yaml").is_file()


def expand_inputs(items, out_dir: str | Path | None = None) -> list[Path]:
    """Bags named by ``items``: bag files (.mcap/.db3), rosbag2 folders (with metadata.yaml), folders holding bags
    (their bag files and rosbag2 sub-folders, not recursive) and glob patterns (non-bag matches ignored). Sorted,
    duplicates once; anything inside ``out_dir`` is left out (outputs are not inputs). Raises FileNotFoundError for
    an item that names nothing and ValueError for a file that is not a bag or two bags that would write the same
    output name."""
    out = Path(out_dir).resolve() if out_dir is not None else None
    found: list[Path] = []
    for item in map(str, items):
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not matches or not all(Path(m).exists() for m in matches):
            raise FileNotFoundError(f"input '{item}' matches no file or folder")
        for m in map(Path, matches):
            if m.is_file():
                if m.suffix not in BAG_SUFFIXES and glob.has_magic(item):
                    continue   # a pattern may match other files too
                if m.suffix not in BAG_SUFFIXES:
                    raise ValueError(f"input '{m}' is not a bag (expected .mcap, .db3 or a rosbag2 folder)")
                found.append(m)
            elif _is_bag_dir(m):
                found.append(m)
            elif m.is_dir():
                inner = sorted(p for p in m.iterdir()
                               if (p.is_file() and p.suffix in BAG_SUFFIXES and not p.name.startswith("."))
                               or _is_bag_dir(p))
                if not inner and glob.has_magic(item):
                    continue
                if not inner:
                    raise FileNotFoundError(f"folder '{m}' holds no bag (.mcap, .db3 or rosbag2 folder)")
                found.extend(inner)
    bags, seen = [], set()
    for p in found:
        r = p.resolve()
        if r in seen or (out is not None and (r == out or out in r.parents)):
            continue
        seen.add(r)
        bags.append(r)
    names: dict[str, Path] = {}
    for b in bags:
        n = output_name(b)
        if n in names:
            raise ValueError(f"bags '{names[n]}' and '{b}' would both write {n}; rename one or run them separately")
        names[n] = b
    return sorted(bags, key=output_name)


def output_name(bag: str | Path) -> str:
    """``<name>.mcap`` for a bag: the file's stem or the rosbag2 folder's name."""
    bag = Path(bag)
    return (bag.stem if bag.is_file() else bag.name) + ".mcap"


def input_fingerprint(bag: str | Path) -> list:
    """(name, bytes, mtime ns) of the bag's file(s): a re-run redoes a bag whose input changed."""
    bag = Path(bag)
    files = [bag] if bag.is_file() else sorted(p for p in bag.rglob("*") if p.is_file())
    return [[str(p.relative_to(bag.parent)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def config_digest(params: Config, image_topic, info_topic, copy_input: bool) -> str:
    """16 hex digits of everything that decides a bag's output besides the bag: the resolved node parameters, the
    topics, copy_input and the engine file's sha256 with its external weights (its path alone may point at new
    weights)."""
    from dpm_ros.engine.cache import default_cache_dir, file_sha256, remembered_sha256
    from dpm_ros.engine.select import engine_path, oracle_bag

    spec = params.engine.strip()
    src = oracle_bag(spec)
    if src is not None:
        engine_id = input_fingerprint(src) if src.exists() else spec
    else:
        path = engine_path(spec)
        if path.suffix == ".onnx" and path.is_file():   # with its external weights; remembered like the TRT cache
            from dpm_ros.engine.onnx_model import read_onnx_info

            engine_id = remembered_sha256(path, read_onnx_info(path).external_files, default_cache_dir(path))
        else:
            engine_id = file_sha256(path) if path.is_file() else spec
    doc = {"params": params.as_dict(), "image_topic": image_topic, "info_topic": info_topic,
           "copy_input": bool(copy_input), "engine": engine_id}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ driver

@dataclass
class BatchSummary:
    """One ``dpm batch`` run: counts by status, pairs of the bags run now, wall seconds."""
    bags: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    pairs: int = 0
    seconds: float = 0.0
    failures: dict = field(default_factory=dict)
    pool: dict = field(default_factory=dict)

    @property
    def bags_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0


def read_manifest(out_dir: str | Path) -> dict:
    """The manifest of ``out_dir`` ({} when there is none; ValueError when it is not ours / not JSON)."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); move it away to start a new manifest") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT or not isinstance(doc.get("bags"), dict):
        raise ValueError(f"{path} is not a dpm batch manifest (format {MANIFEST_FORMAT}); move it away")
    return doc


def write_manifest(out_dir: str | Path, doc: dict) -> None:
    from dpm_ros.engine.cache import atomic_write_bytes

    path = Path(out_dir) / MANIFEST
    atomic_write_bytes(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    os.chmod(path, 0o644)   # readable like the outputs (the atomic write's temporary file is private)


def message_count(path: Path) -> int | None:
    """Messages in the bag at ``path`` from its summary, or None when it cannot be opened."""
    from dpm_ros.bag import open_bag

    try:
        reader = open_bag(path)
    except (OSError, ValueError):
        return None
    try:
        return int(reader.message_count)
    finally:
        reader.close()


def why_not_complete(record: dict | None, out: Path, digest: str, fingerprint: list) -> str | None:
    """None when ``out`` is a complete, valid output of this run's settings for this input; else the reason."""
    if record is None:
        return "it is not in the manifest (not written by dpm batch into this folder)"
    if record.get("status") not in COMPLETE:
        return f"the manifest records it as {record.get('status')}"
    if record.get("config_digest") != digest:
        return "it was written with other settings (parameters, topics or engine)"
    if record.get("input_fingerprint") != fingerprint:
        return "the input bag changed since"
    if out.stat().st_size != record.get("output_bytes"):
        return f"its size {out.stat().st_size} B is not the recorded {record.get('output_bytes')} B"
    if message_count(out) != record.get("messages"):
        return "it does not open as a bag with the recorded message count"
    return None


@contextlib.contextmanager
def _out_dir_lock(out_dir: Path):
    fd = os.open(out_dir / ".dpm_batch.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another dpm batch is writing into '{out_dir}'") from None
        yield
    finally:
        os.close(fd)


def run_batch(bags: list[Path], out_dir: str | Path, params: Config, *, image_topic: str | None = None,
              info_topic: str | None = None, copy_input: bool = False, ray_address: str | None = None,
              workers: int | None = None, cpus_per_worker: float = 1.0, gpus_per_worker: float | None = None,
              overwrite: bool = False, progress: bool = True) -> BatchSummary:
    """Process ``bags`` into ``out_dir`` (created) in local worker processes, or on Ray when ``ray_address`` is
    given; keeps ``out_dir/manifest.json`` up to date after each bag. See the module docstring."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    from dpm_ros.output_files import check_output

    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary = BatchSummary(bags=len(bags))
    with _out_dir_lock(out_dir):
        manifest = read_manifest(out_dir) or {"format": MANIFEST_FORMAT, "bags": {}}
        digest = config_digest(params, image_topic, info_topic, copy_input)
        records = manifest["bags"]
        tasks = []
        for bag in bags:
            name = output_name(bag)
            out = out_dir / name
            fingerprint = input_fingerprint(bag)
            if out.exists():
                why = why_not_complete(records.get(name), out, digest, fingerprint)
                if why is None:
                    records[name] = dict(records[name], status="skipped")
                    summary.skipped += 1
                    continue
                if not overwrite:
                    records[name] = dead_worker_record(
                        {"input": str(bag), "output": str(out), "config_digest": digest,
                         "input_fingerprint": fingerprint},
                        f"output {out} exists and is not complete for this run: {why}; pass --overwrite to "
                        "replace it")
                    summary.failed += 1
                    summary.failures[name] = records[name]["error"]
                    continue
            try:   # --overwrite replaces only a bag, never the input (dpm_ros.output_files rules)
                check_output(out, True, [bag])
            except (ValueError, FileNotFoundError) as exc:
                records[name] = dead_worker_record(
                    {"input": str(bag), "output": str(out), "config_digest": digest,
                     "input_fingerprint": fingerprint}, str(exc))
                summary.failed += 1
                summary.failures[name] = records[name]["error"]
                continue
            tasks.append({"input": str(bag), "output": str(out), "params": params, "image_topic": image_topic,
                          "info_topic": info_topic, "copy_input": copy_input, "overwrite": overwrite,
                          "config_digest": digest, "input_fingerprint": fingerprint})
        manifest["config_digest"] = digest
        write_manifest(out_dir, manifest)
        bar = tqdm(total=len(bags), unit="bag", desc="dpm batch", file=sys.stderr, disable=not progress,
                   initial=summary.skipped + summary.failed, mininterval=0.5)

        def on_result(rec: dict) -> None:
            name = rec["output"]
            records[name] = rec
            if rec["status"] == "done":
                summary.done += 1
                summary.pairs += rec.get("pairs", 0)
            else:
                summary.failed += 1
                summary.failures[name] = rec["error"]
                bar.write(f"dpm batch: {name} failed: {rec['error']}", file=sys.stderr)
            write_manifest(out_dir, manifest)
            elapsed = time.perf_counter() - start
            bar.set_postfix(pairs=summary.pairs, pairs_s=f"{summary.pairs / max(elapsed, 1e-9):.1f}",
                            failed=summary.failed, refresh=False)
            bar.update(1)

        try:
            if not tasks:
                summary.pool = {"kind": "none (nothing to do)"}
            elif ray_address is None:
                # a GPU engine: local workers share the first GPU (Ray spreads them over GPUs): one by default
                n = workers or (1 if engine_on_gpu_here(params) else max(1, min(len(tasks), os.cpu_count() or 1)))
                run_local(tasks, n, on_result)
                summary.pool = {"kind": "local", "workers": max(1, min(n, len(tasks)))}
            else:
                ray, started = connect_ray(ray_address)
                try:
                    used = run_ray(tasks, ray, workers, cpus_per_worker, gpus_per_worker, params, on_result)
                    summary.pool = {"kind": "ray", "address": ray_address, "private_ray": started, **used}
                finally:
                    ray.shutdown()
        finally:
            bar.close()
            summary.seconds = time.perf_counter() - start
            manifest["last_run"] = {"bags": summary.bags, "done": summary.done, "skipped": summary.skipped,
                                    "failed": summary.failed, "pairs": summary.pairs,
                                    "seconds": round(summary.seconds, 3), "pool": summary.pool,
                                    "finished_unix": round(time.time(), 3)}
            write_manifest(out_dir, manifest)
    return summary
