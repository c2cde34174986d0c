"""The worker side of ``dpm batch`` (``batch.py``): ``run_task`` (one bag through ``replay.replay_bag``, which
stages the output and moves it into place when complete), the per-process engine cache, and the two pools that run
tasks: spawned local processes (``run_local``) and Ray actors (``connect_ray`` / ``run_ray``). A bag that raises
becomes a failed record; a worker that dies fails only the bag it held and is replaced."""
from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sys
import time
from pathlib import Path

from dpm_ros.config import Config

_ENGINES: dict = {}
ENGINE_LOADS = 0


def engine_backend(spec: str, backend: str) -> str:
    """The backend ``open_engine(spec, backend)`` will use on this machine ("oracle" for ground truth)."""
    from dpm_ros.engine.loader import choose_backend
    from dpm_ros.engine.select import engine_path, oracle_bag

    if oracle_bag(spec) is not None:
        return "oracle"
    return choose_backend(engine_path(spec), backend)[0]


def engine_on_gpu_here(params: Config) -> bool:
    """Whether the engine would run on a GPU of this machine (TensorRT, or torch with CUDA)."""
    try:
        chosen = engine_backend(params.engine, params.backend)
    except ValueError:
        return False   # each bag reports the engine's own error
    if chosen == "torch":
        import torch
        return torch.cuda.is_available()
    return chosen == "tensorrt"


def worker_engine(params: Config):
    """The Engine for ``params.engine`` / ``params.backend``, opened once per process (the way ``dpm replay``
    opens it: ``engine.select.open_engine``) and reused for every later bag of this worker. Workers that share an
    engine cache build a missing TensorRT engine once: ``engine.cache.get_or_build`` holds its ``build_lock``
    while building."""
    global ENGINE_LOADS
    from dpm_ros.engine.select import open_engine

    key = (params.engine, params.backend)
    if key not in _ENGINES:
        _ENGINES[key] = open_engine(*key)
        ENGINE_LOADS += 1
    return _ENGINES[key]


def run_task(task: dict) -> dict:
    """One bag, in a worker: ``replay_bag`` straight to the output, which it stages in a hidden sibling and moves
    into place when complete (``output_files`` rules; ``task['overwrite']``: the user's ``--overwrite``). Never
    raises for a bad bag: returns its record (status done/failed, counts, error, node, pid)."""
    from dpm_ros.ros.replay import replay_bag

    out = Path(task["output"])
    rec = {"input": task["input"], "output": out.name, "status": "failed", "error": None}
    start = time.perf_counter()
    try:
        engine = worker_engine(task["params"])
        stats = replay_bag(task["input"], out, task["params"], engine=engine, image_topic=task["image_topic"],
                           info_topic=task["info_topic"], copy_input=task["copy_input"], progress=False,
                           overwrite=task["overwrite"])
        info = engine.info()
        rec.update(images=stats.images, pairs=stats.pairs, failed_pairs=stats.failed_pairs,
                   messages=stats.messages_written, output_bytes=out.stat().st_size,
                   engine=f"{info.backend}/{info.device}")
        if stats.failed_pairs:
            rec["error"] = f"{stats.failed_pairs} pair(s) failed; first: {stats.first_error}"
        rec["status"] = "done"
    except Exception as exc:  # a bad bag fails alone; its message goes to the manifest
        rec["error"] = f"{type(exc).__name__}: {exc}"
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
    127.0.0.1, without dashboard, with a token of its own. Usage statistics stay off unless RAY_USAGE_STATS_ENABLED
    says otherwise. Returns (ray module, True when this call started the Ray it must shut down)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    private = _private_ray_wanted(address)
    if private:   # Ray's own switch for "this machine only": every Ray process binds to the loopback address
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        if "RAY_AUTH_MODE" not in os.environ:   # token authentication with a token of this run only (Ray's
            os.environ["RAY_AUTH_MODE"] = "token"   # default would save a lasting one in ~/.ray)
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
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


def gpus_needed(params: Config, cluster_gpus: float) -> bool:
    """Whether the engine runs on a GPU: tensorrt always, onnxruntime (CPU here) and the oracle never, auto/torch
    when the cluster has GPUs (auto picks TensorRT there, torch picks CUDA)."""
    from dpm_ros.engine.select import oracle_bag

    if oracle_bag(params.engine) is not None or params.backend == "onnxruntime":
        return False
    return params.backend == "tensorrt" or cluster_gpus > 0


def run_ray(tasks: list[dict], ray, workers: int | None, cpus: float, gpus: float | None, params: Config,
            on_result, worker_cls=BatchWorker) -> dict:
    """Run ``tasks`` on ``workers`` actors (default: as many as the cluster's CPUs or GPUs fit), each declaring
    ``cpus`` CPUs and ``gpus`` GPUs (default 1 when the engine needs a GPU, else 0). An actor that dies fails its
    bag and restarts. ``worker_cls``: the actor class (a ``run(task) -> record`` method). Returns what was used:
    workers, cpus, gpus per worker, cluster resources."""
    from ray.exceptions import RayError

    resources = ray.cluster_resources()
    have_gpus = float(resources.get("GPU", 0))
    if gpus is None:
        gpus = 1.0 if gpus_needed(params, have_gpus) else 0.0
    if gpus > 0 and have_gpus <= 0:
        raise ValueError(f"backend '{params.backend}' needs a GPU per worker but the Ray cluster has none "
                         f"(resources: {resources}); start GPU workers or use --backend onnxruntime")
    fit = max(1, int(have_gpus / gpus if gpus > 0 else float(resources.get("CPU", 0)) / cpus))
    if workers is not None and workers > fit:   # actors that cannot be placed would hold their bags forever
        print(f"dpm batch: the Ray cluster fits {fit} worker(s) of {cpus:g} CPU / {gpus:g} GPU, not {workers}; "
              f"using {fit}", file=sys.stderr, flush=True)
    workers = max(1, min(workers or fit, fit, len(tasks)))
    actor_cls = ray.remote(worker_cls).options(num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=0)
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
