"""Many bags offline: every input bag is one task that runs ``replay.replay_bag`` (the code of ``dpm replay``) with
the same parameters and writes ``OUT_DIR/<name>.mcap``; the tasks run in local worker processes or on a Ray cluster.

- Workers: ``N`` long-lived processes (``multiprocessing`` spawn) or ``N`` Ray actors that declare their resources
  (``num_gpus`` when the backend needs a GPU, CPUs otherwise). A worker opens the engine once (``worker_engine``,
  a per-process cache) and runs one bag at a time; a TensorRT engine is built under a file lock in its cache folder,
  so workers sharing that folder build it once per GPU model and load it after.
- Isolation: a bag that raises is recorded as failed with its error; a worker that dies (crash, OOM kill) fails only
  the bag it held and is replaced.
- ``OUT_DIR/manifest.json`` (written atomically after each bag): per bag status (done / skipped / failed), pairs,
  images, seconds, node, worker pid, error. A re-run skips a bag whose output is complete and valid: recorded done
  by a run with the same settings (parameters, topics, engine file's sha256) on the same input (size, mtime), and
  the file is there with the recorded size and message count. Any other existing output is left alone (the bag
  fails with the reason) unless ``overwrite``.
- Outputs appear atomically: each bag is written to a hidden temporary sibling, renamed into place when complete.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
BAG_SUFFIXES = (".mcap", ".db3")
COMPLETE = ("done", "skipped")


# ------------------------------------------------------------------------------------------------ inputs

def _is_bag_dir(path: Path) -> bool:
    return path.is_dir() and (path / "metadata.yaml").is_file()


def expand_inputs(items, out_dir: str | Path | None = None) -> list[Path]:
    """Bags named by ``items``: bag files (.mcap/.db3), rosbag2 folders (with metadata.yaml), folders holding bags
    (their bag files and rosbag2 sub-folders, not recursive) and glob patterns (their non-bag matches ignored). Sorted, duplicates once; anything
    inside ``out_dir`` is left out (outputs are not inputs). Raises FileNotFoundError for an item that names nothing
    and ValueError for a file that is not a bag or two bags that would write the same output name."""
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


def config_digest(params: dict, image_topic, info_topic, copy_input: bool) -> str:
    """16 hex digits of everything that decides a bag's output besides the bag: the resolved node parameters, the
    topics, copy_input and the engine file's sha256 (its path alone may point at new weights)."""
    from dpm_ros.engine.cache import file_sha256
    from dpm_ros.ros.engine_select import default_engine_path

    spec = (params.get("engine") or "").strip()
    if spec.startswith("oracle:"):
        src = Path(os.path.expanduser(spec[len("oracle:"):]))
        engine_id = input_fingerprint(src) if src.exists() else spec
    else:
        path = Path(os.path.expanduser(spec)) if spec else default_engine_path()
        engine_id = file_sha256(path) if path.is_file() else spec
    doc = {"params": params, "image_topic": image_topic, "info_topic": info_topic, "copy_input": bool(copy_input),
           "engine": engine_id}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ worker side

_ENGINES: dict = {}
ENGINE_LOADS = 0


@contextlib.contextmanager
def _engine_build_lock(spec: str, backend: str):
    """Hold an exclusive lock on ``<engine cache folder>/.dpm_engine_build.lock`` when ``spec`` will run on
    TensorRT, so that workers sharing the cache folder (one node's, or a shared path's) build a missing engine
    once and the others load it from the cache; a no-op for every other backend."""
    from dpm_ros.ros.engine_select import default_engine_path

    fd = None
    try:
        if backend in ("auto", "tensorrt") and not spec.startswith("oracle:"):
            path = Path(os.path.expanduser(spec)) if spec else default_engine_path()
            from dpm_ros.engine.loader import choose_backend

            if path.suffix == ".onnx" and choose_backend(path, backend)[0] == "tensorrt":
                from dpm_ros.engine.cache import default_cache_dir

                folder = default_cache_dir(path)
                folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(folder / ".dpm_engine_build.lock", os.O_CREAT | os.O_RDWR, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:   # unwritable cache folder: the engine loader reports its own error when it needs one
        fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)   # closing releases the lock


def worker_engine(params: dict):
    """The Engine for ``params['engine']`` / ``params['backend']``, opened once per process (the way ``dpm
    replay`` opens it: ``engine_select.open_engine``) and reused for every later bag of this worker."""
    global ENGINE_LOADS
    from dpm_ros.ros.engine_select import open_engine

    key = (params["engine"], params["backend"])
    if key not in _ENGINES:
        with _engine_build_lock(*key):
            _ENGINES[key] = open_engine(*key)
        ENGINE_LOADS += 1
    return _ENGINES[key]


def run_task(task: dict) -> dict:
    """One bag, in a worker: ``replay_bag`` into a hidden temporary sibling of the output, renamed into place when
    complete. Never raises for a bad bag: returns its record (status done/failed, counts, error, node, pid)."""
    from dpm_ros.replay import replay_bag

    out = Path(task["output"])
    tmp = out.with_name(f".{out.stem}.{uuid.uuid4().hex[:8]}.partial.mcap")
    rec = {"input": task["input"], "output": out.name, "status": "failed", "error": None}
    start = time.perf_counter()
    try:
        engine = worker_engine(task["params"])
        stats = replay_bag(task["input"], tmp, task["params"], engine=engine, image_topic=task["image_topic"],
                           info_topic=task["info_topic"], copy_input=task["copy_input"], progress=False)
        os.replace(tmp, out)
        rec.update(status="done", images=stats.images, pairs=stats.pairs, failed_pairs=stats.failed_pairs,
                   messages=stats.messages_written, output_bytes=out.stat().st_size,
                   engine=engine.info().backend + "/" + engine.info().device)
        if stats.failed_pairs:
            rec["error"] = f"{stats.failed_pairs} pair(s) failed; first: {stats.first_error}"
    except Exception as exc:  # a bad bag fails alone; its message goes to the manifest
        rec["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        tmp.unlink(missing_ok=True)
    rec.update(seconds=round(time.perf_counter() - start, 3), node=socket.gethostname(), worker_pid=os.getpid(),
               worker_engine_loads=ENGINE_LOADS, config_digest=task["config_digest"],
               input_fingerprint=task["input_fingerprint"], finished_unix=round(time.time(), 3))
    return rec


def _local_worker_main(conn) -> None:
    """A local worker process: tasks in over the pipe, records out, until a None task."""
    while (task := conn.recv()) is not None:
        conn.send(run_task(task))


class BatchWorker:
    """A Ray actor around ``run_task`` (one engine per actor)."""

    def run(self, task: dict) -> dict:
        return run_task(task)


# ------------------------------------------------------------------------------------------------ pools

def dead_worker_record(task: dict, why: str) -> dict:
    return {"input": task["input"], "output": Path(task["output"]).name, "status": "failed", "error": why,
            "seconds": None, "node": None, "worker_pid": None, "config_digest": task["config_digest"],
            "input_fingerprint": task["input_fingerprint"], "finished_unix": round(time.time(), 3)}


def run_local(tasks: list[dict], workers: int, on_result, target=_local_worker_main) -> None:
    """Run ``tasks`` in ``workers`` spawned processes (each runs ``target(conn)``, by default tasks through
    ``run_task``); ``on_result(record)`` in this process as each finishes. A worker that dies fails only its bag and
    is replaced."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    queue = list(reversed(tasks))
    pool: list[dict] = []

    def start() -> dict:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=target, args=(child,), daemon=True, name="dpm-batch-worker")
        proc.start()
        child.close()
        return {"proc": proc, "conn": parent, "task": None}

    try:
        pool = [start() for _ in range(max(1, min(workers, len(tasks))))]
        while queue or any(w["task"] is not None for w in pool):
            for w in pool:
                if w["task"] is None and queue:
                    w["task"] = queue.pop()
                    w["conn"].send(w["task"])
            busy = [w for w in pool if w["task"] is not None]
            ready = wait([w["conn"] for w in busy] + [w["proc"].sentinel for w in busy])
            for i, w in enumerate(pool):
                if w["task"] is None or (w["conn"] not in ready and w["proc"].sentinel not in ready):
                    continue
                try:
                    rec = w["conn"].recv() if w["conn"].poll() else None
                except (EOFError, OSError):
                    rec = None
                if rec is not None:
                    w["task"] = None
                    on_result(rec)
                    continue
                w["proc"].join(5)
                on_result(dead_worker_record(w["task"], f"worker process died (exit code {w['proc'].exitcode})"))
                w["conn"].close()
                pool[i] = start()
    finally:
        for w in pool:
            with contextlib.suppress(OSError, BrokenPipeError):
                w["conn"].send(None)
        for w in pool:
            w["proc"].join(10)
            if w["proc"].is_alive():
                w["proc"].terminate()
                w["proc"].join(5)


def _private_ray_wanted(address: str) -> bool:
    """``auto`` with no cluster to join (no RAY_ADDRESS, no `ray start` on this machine): a private one."""
    if address != "auto" or os.environ.get("RAY_ADDRESS"):
        return False
    return not Path(os.environ.get("RAY_TMPDIR", "/tmp"), "ray", "ray_current_cluster").is_file()


def connect_ray(address: str):
    """``ray`` initialised for ``address``: a cluster's ``HOST:PORT`` (or ``ray://``), or ``auto``: the cluster of
    RAY_ADDRESS or of ``ray start`` on this machine, else a private single-node Ray for this run, bound to
    127.0.0.1, without dashboard. Usage statistics stay off unless RAY_USAGE_STATS_ENABLED says otherwise.
    Returns (ray module, True when this call started the Ray it must shut down)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    private = _private_ray_wanted(address)
    if private:   # Ray's own switch for "this machine only": every Ray process binds to the loopback address
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray: pip install 'dpm_ros[fleet]' (or -r requirements-fleet.txt)") from None
    import logging

    kw = dict(logging_level=logging.WARNING, log_to_driver=True)
    if private:
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, **kw)
    else:
        try:
            ray.init(address=address, **kw)
        except ConnectionError as exc:
            raise ValueError(f"cannot reach the Ray cluster at '{address}': {exc}") from None
    return ray, private


def gpus_needed(params: dict, cluster_gpus: float) -> bool:
    """Whether the engine runs on a GPU: tensorrt always, onnxruntime (CPU here) and the oracle never, auto/torch
    when the cluster has GPUs (auto picks TensorRT there, torch picks CUDA)."""
    if (params.get("engine") or "").startswith("oracle:") or params["backend"] == "onnxruntime":
        return False
    return params["backend"] == "tensorrt" or cluster_gpus > 0


def run_ray(tasks: list[dict], ray, workers: int | None, cpus: float, gpus: float | None, params: dict,
            on_result) -> dict:
    """Run ``tasks`` on ``workers`` actors (default: as many as the cluster's CPUs or GPUs fit), each declaring
    ``cpus`` CPUs and ``gpus`` GPUs (default 1 when the engine needs a GPU, else 0). An actor that dies fails its
    bag and restarts. Returns what was used: workers, cpus, gpus per worker, cluster resources."""
    from ray.exceptions import RayError

    resources = ray.cluster_resources()
    have_gpus = float(resources.get("GPU", 0))
    if gpus is None:
        gpus = 1.0 if gpus_needed(params, have_gpus) else 0.0
    if gpus > 0 and have_gpus <= 0:
        raise ValueError(f"backend '{params['backend']}' needs a GPU per worker but the Ray cluster has none "
                         f"(resources: {resources}); start GPU workers or use --backend onnxruntime")
    if workers is None:
        fit = have_gpus / gpus if gpus > 0 else float(resources.get("CPU", 1)) / max(cpus, 1e-9)
        workers = max(1, int(fit))
    workers = max(1, min(workers, len(tasks)))
    actor_cls = ray.remote(BatchWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=0)
    actors = [actor_cls.remote() for _ in range(workers)]
    queue = list(reversed(tasks))
    flying: dict = {}   # object ref -> (actor, task)
    try:
        while queue or flying:
            busy = {id(a) for a, _ in flying.values()}
            for a in actors:
                if queue and id(a) not in busy:
                    task = queue.pop()
                    flying[a.run.remote(task)] = (a, task)
            done, _ = ray.wait(list(flying), num_returns=1)
            for ref in done:
                _, task = flying.pop(ref)
                try:
                    on_result(ray.get(ref))
                except RayError as exc:   # the actor died (crash, OOM kill, node lost): this bag only; it restarts
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    on_result(dead_worker_record(task, f"Ray worker failed: {type(exc).__name__}: {first}"))
    finally:
        for a in actors:
            ray.kill(a)
    return {"workers": workers, "cpus_per_worker": cpus, "gpus_per_worker": gpus,
            "cluster": {k: v for k, v in resources.items() if k in ("CPU", "GPU")}}


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

    atomic_write_bytes(Path(out_dir) / MANIFEST, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


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


def run_batch(bags: list[Path], out_dir: str | Path, params: dict, *, image_topic: str | None = None,
              info_topic: str | None = None, copy_input: bool = False, ray_address: str | None = None,
              workers: int | None = None, cpus_per_worker: float = 1.0, gpus_per_worker: float | None = None,
              overwrite: bool = False, progress: bool = True) -> BatchSummary:
    """Process ``bags`` into ``out_dir`` (created) in local worker processes, or on Ray when ``ray_address`` is
    given; keeps ``out_dir/manifest.json`` up to date after each bag. See the module docstring."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
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
            tasks.append({"input": str(bag), "output": str(out), "params": params, "image_topic": image_topic,
                          "info_topic": info_topic, "copy_input": copy_input, "config_digest": digest,
                          "input_fingerprint": fingerprint})
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
                n = workers or max(1, min(len(tasks), os.cpu_count() or 1))
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
