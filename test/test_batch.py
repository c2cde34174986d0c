"""`dpm batch`: four small `dpm synth` bags, one of them corrupt, through a local Ray cluster on 127.0.0.1 and through
local worker processes. The three good outputs are byte-identical to `dpm replay`'s, the manifest names the corrupt
bag with its error, a second run skips the done bags, each worker opens the engine once, and no Ray process binds
beyond loopback or outlives its test."""
from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import dpm, finish

FRAMES, HEIGHT, WIDTH = 5, 48, 64
GOOD = ("alpha", "bravo", "charlie")
LOOPBACK_V4, LOOPBACK_V6 = "0100007F", "0000000000000000FFFF00000100007F"   # /proc/net/tcp{,6} spelling


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    """Three good synthetic bags and a corrupt one (a good bag cut in half) in one folder."""
    pytest.importorskip("dpm_ros.pipeline")
    folder = tmp_path_factory.mktemp("batch_in")
    procs = [dpm("synth", "--out", folder / f"{name}.mcap", "--frames", FRAMES, "--height", HEIGHT, "--width", WIDTH,
                 "--objects", 1, "--seed", seed, "--renderer", "numpy") for seed, name in enumerate(GOOD)]
    for p in procs:
        rc, err = finish(p, timeout=180)
        assert rc == 0, err
    data = (folder / "alpha.mcap").read_bytes()
    (folder / "corrupt.mcap").write_bytes(data[: len(data) // 2])
    return folder


@pytest.fixture(scope="module")
def reference(bags, tmp_path_factory):
    """`dpm replay` of each good bag (shipped ONNX model), the bytes batch must reproduce."""
    out = tmp_path_factory.mktemp("batch_ref")
    procs = [dpm("replay", bags / f"{name}.mcap", "--out", out / f"{name}.mcap", "-p", "camera_info_sync:=latest",
                 "--no-progress") for name in GOOD]
    for p in procs:
        rc, err = finish(p, timeout=240)
        assert rc == 0, err
    return {name: (out / f"{name}.mcap").read_bytes() for name in GOOD}


def _children(root: int) -> set[int]:
    """``root`` and every process descended from it (from /proc/*/stat)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, grew = {root}, True
    while grew:
        new = {p for p, pp in parent.items() if pp in found} - found
        grew = bool(new)
        found |= new
    return found


def _listening(pids: set[int]) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp) of the TCP sockets in LISTEN state that ``pids`` hold."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            pass
    addrs = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:
                addrs.append(f[1].rsplit(":", 1)[0])
    return addrs


def _alive(pids: set[int], marker: str) -> list[str]:
    """Processes of ``pids`` still running, and any process whose command line names ``marker``."""
    left = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (int(d.name) in pids or marker in cmd):
            left.append(f"{d.name}: {cmd[:120]}")
    return left


HEAD = """
import sys, ray
ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=2, num_gpus=0, _temp_dir=sys.argv[1])
print(ray.get_runtime_context().gcs_address, sorted({n["NodeManagerAddress"] for n in ray.nodes()}), flush=True)
sys.stdin.read()   # the test closes stdin when done
ray.shutdown()
"""


@pytest.fixture(scope="module")
def ray_cluster():
    """A one-node Ray cluster on 127.0.0.1 (head started by ray.init in a child process, no dashboard, no usage
    stats), stopped at the end; checks its listening sockets are loopback and that none of it is left running."""
    if importlib.util.find_spec("ray") is None:   # not imported here: Ray reads its settings at import
        pytest.skip("ray is not installed (requirements-fleet.txt; scripts/setup.sh installs it)")
    # loopback only (Ray's switch for a one-machine cluster), no usage stats, and a token of this test's own
    # (token authentication as Ray 2.60 does by default for ray.init, without touching ~/.ray)
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    temp = tempfile.mkdtemp(prefix="dpmray", dir="/tmp")   # short: Ray's unix sockets live under it
    head = subprocess.Popen([sys.executable, "-c", HEAD, temp], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids: set[int] = {head.pid}
    try:
        line = head.stdout.readline()
        assert line, head.communicate(timeout=30)[1]
        address, nodes = line.split(" ", 1)
        assert address.startswith("127.0.0.1:") and nodes.strip() == "['127.0.0.1']", line
        yield address, env, head
        pids = _children(head.pid)
        addrs = _listening(pids)
        assert addrs and all(a in (LOOPBACK_V4, LOOPBACK_V6) for a in addrs), addrs
    finally:
        head.stdin.close()
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        deadline = time.monotonic() + 20
        while _alive(pids, temp) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _alive(pids, temp)
        shutil.rmtree(temp, ignore_errors=True)
    assert not left, f"Ray processes left running: {left}"


def _check_first_run(out: Path, reference: dict, err: str, workers: int) -> dict:
    for name in GOOD:
        assert (out / f"{name}.mcap").is_file(), err
        assert (out / f"{name}.mcap").read_bytes() == reference[name], name
    assert not (out / "corrupt.mcap").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".dpm_batch.lock"]
    doc = json.loads((out / "manifest.json").read_text())
    bad = doc["bags"]["corrupt.mcap"]
    assert bad["status"] == "failed" and "cannot be read" in bad["error"] and "corrupt.mcap" in bad["error"], bad
    good = [doc["bags"][f"{n}.mcap"] for n in GOOD]
    assert all(r["status"] == "done" and r["error"] is None for r in good), good
    assert [r["pairs"] for r in good] == [FRAMES - 1] * 3
    assert all(r["seconds"] > 0 and r["node"] and r["engine"] == "onnxruntime/cpu" for r in good)
    pids = {r["worker_pid"] for r in good}
    assert 1 <= len(pids) <= workers
    assert all(r["worker_engine_loads"] == 1 for r in good)          # the engine is opened once per worker
    assert doc["last_run"] | {} and (doc["last_run"]["done"], doc["last_run"]["failed"]) == (3, 1)
    assert "4 bags: 3 done, 0 skipped (complete), 1 failed" in err
    return doc


def test_batch_on_a_local_ray_cluster(bags, reference, ray_cluster, tmp_path):
    address, env, _ = ray_cluster
    out = tmp_path / "out"

    def batch():
        p = subprocess.Popen([sys.executable, "-m", "dpm_ros.cli", "batch", str(bags / "*.mcap"), "--out-dir",
                              str(out), "--ray", address, "--workers", "2", "-p", "camera_info_sync:=latest",
                              "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return finish(p, timeout=300)

    rc, err = batch()
    assert rc == 1, err                                           # one bag failed: non-zero exit
    doc = _check_first_run(out, reference, err, workers=2)
    assert doc["last_run"]["pool"]["kind"] == "ray" and doc["last_run"]["pool"]["workers"] == 2
    mtimes = {n: (out / f"{n}.mcap").stat().st_mtime_ns for n in GOOD}

    rc, err = batch()                                             # again: the done bags are skipped
    assert rc == 1, err
    assert "4 bags: 0 done, 3 skipped (complete), 1 failed" in err
    doc = json.loads((out / "manifest.json").read_text())
    assert [doc["bags"][f"{n}.mcap"]["status"] for n in GOOD] == ["skipped"] * 3
    assert {n: (out / f"{n}.mcap").stat().st_mtime_ns for n in GOOD} == mtimes
    assert doc["bags"]["corrupt.mcap"]["status"] == "failed"


def test_batch_in_local_processes_leaves_foreign_files_alone(bags, reference, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "charlie.mcap").write_bytes(b"not ours")               # an output batch did not write
    args = ("batch", bags, "--out-dir", out, "--workers", "2", "-p", "camera_info_sync:=latest", "--no-progress")
    rc, err = finish(dpm(*args), timeout=300)
    assert rc == 1, err
    assert (out / "charlie.mcap").read_bytes() == b"not ours"
    doc = json.loads((out / "manifest.json").read_text())
    assert "not in the manifest" in doc["bags"]["charlie.mcap"]["error"] and "--overwrite" in err
    assert doc["last_run"]["pool"] == {"kind": "local", "workers": 2}
    for name in GOOD[:2]:
        assert (out / f"{name}.mcap").read_bytes() == reference[name], name
        assert doc["bags"][f"{name}.mcap"]["worker_engine_loads"] == 1
    rc, err = finish(dpm(*args, "--overwrite"), timeout=300)      # not a bag: --overwrite leaves it too (#12)
    assert rc == 1, err
    assert "4 bags: 0 done, 2 skipped (complete), 2 failed" in err and "is not one" in err
    assert (out / "charlie.mcap").read_bytes() == b"not ours"
    (out / "charlie.mcap").write_bytes(reference["alpha"])            # a bag, but not this run's: replaced
    rc, err = finish(dpm(*args, "--overwrite"), timeout=300)      # the done ones are still skipped
    assert rc == 1, err
    assert "4 bags: 1 done, 2 skipped (complete), 1 failed" in err
    _ = [(out / f"{n}.mcap").read_bytes() == reference[n] or pytest.fail(n) for n in GOOD]


CRASHY_ACTOR = """
import json, os, sys
from dpm_ros.batch_workers import connect_ray, run_ray

class Crashy:   # dies (like a segfault) on the bag named 'crash'; defined in __main__, so Ray ships it by value
    def run(self, task):
        if task["input"].endswith("crash.mcap"):
            os._exit(3)
        return {"input": task["input"], "output": os.path.basename(task["output"]), "status": "done",
                "error": None, "worker_pid": os.getpid()}

ray, _ = connect_ray(sys.argv[1])
tasks = [{"input": f"/in/{n}.mcap", "output": f"/out/{n}.mcap", "config_digest": "d", "input_fingerprint": []}
         for n in ("a", "crash", "b", "c")]
got = []
try:
    used = run_ray(tasks, ray, 2, 1.0, 0.0, {"engine": "", "backend": "onnxruntime"}, got.append, worker_cls=Crashy)
finally:
    ray.shutdown()
print(json.dumps({"records": got, "used": used}))
"""


def test_a_dying_ray_actor_fails_only_its_bag(ray_cluster):
    address, env, _ = ray_cluster
    p = subprocess.run([sys.executable, "-c", CRASHY_ACTOR, address], env=env, capture_output=True, text=True,
                       timeout=180)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    status = {r["output"]: r["status"] for r in out["records"]}
    assert status == {"a.mcap": "done", "crash.mcap": "failed", "b.mcap": "done", "c.mcap": "done"}, out
    crash = next(r for r in out["records"] if r["output"] == "crash.mcap")
    assert crash["error"].startswith("Ray worker failed: Actor"), crash   # ActorDied / ActorUnavailable
    assert out["used"]["workers"] == 2


def _crashy_worker(conn) -> None:
    """A local worker that dies (like a segfault) on the bag named 'crash', else echoes a done record."""
    while (task := conn.recv()) is not None:
        if Path(task["input"]).stem == "crash":
            os._exit(3)
        conn.send({"input": task["input"], "output": Path(task["output"]).name, "status": "done", "pairs": 1,
                   "error": None, "worker_pid": os.getpid()})


def test_a_dying_local_worker_fails_only_its_bag():
    from dpm_ros.batch_workers import run_local

    tasks = [{"input": f"/in/{n}.mcap", "output": f"/out/{n}.mcap", "config_digest": "d", "input_fingerprint": []}
             for n in ("crash", "a", "b")]
    got = []
    run_local(tasks, 1, got.append, target=_crashy_worker)   # one worker: a and b need its replacement
    assert {r["output"]: r["status"] for r in got} == {"crash.mcap": "failed", "a.mcap": "done", "b.mcap": "done"}
    crash = next(r for r in got if r["output"] == "crash.mcap")
    assert crash["error"] == "worker process died (exit code 3)"


def test_expand_inputs(tmp_path):
    from dpm_ros.batch import expand_inputs

    root = tmp_path / "in"
    root.mkdir()
    (root / "a.mcap").write_bytes(b"x")
    (root / "b.db3").write_bytes(b"x")
    (root / "notes.txt").write_text("x")
    (root / "folder_bag").mkdir()
    (root / "folder_bag" / "metadata.yaml").write_text("x")
    (root / "out").mkdir()
    (root / "out" / "a_old.mcap").write_bytes(b"x")
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.mcap").write_bytes(b"x")
    names = lambda bags: [p.name for p in bags]  # noqa: E731
    assert names(expand_inputs([root], root / "out")) == ["a.mcap", "b.db3", "folder_bag"]
    assert names(expand_inputs([root / "folder_bag"])) == ["folder_bag"]           # a rosbag2 folder is one bag
    assert names(expand_inputs([str(root / "*.mcap"), root / "a.mcap"])) == ["a.mcap"]   # once
    assert names(expand_inputs([str(root / "*")], root / "out")) == ["a.mcap", "b.db3", "folder_bag"]
    with pytest.raises(ValueError, match="would both write a.mcap"):
        expand_inputs([root / "a.mcap", other / "a.mcap"])
    with pytest.raises(ValueError, match="not a bag"):
        expand_inputs([root / "notes.txt"])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_inputs([str(root / "*.bag")])


@pytest.mark.ros
def test_a_task_stages_its_output_once_and_keeps_the_old_one_on_failure(tmp_path, monkeypatch):
    """run_task hands the output path and --overwrite to replay_bag, whose writer stages it (no second hidden
    sibling of its own); a bag that fails leaves the old output as it was and nothing beside it."""
    from dpm_ros import batch_workers
    from dpm_ros.bag import write_sequence
    from dpm_ros.config import load_config
    from dpm_ros.ros.bag_recorder import BagWriter
    from dpm_ros.synthetic import SyntheticSequence

    src = write_sequence(SyntheticSequence(seed=3, n_frames=3, height=32, width=32), tmp_path / "in.mcap")
    opened = []
    init = BagWriter.__init__
    monkeypatch.setattr(BagWriter, "__init__",
                        lambda self, path, **kw: opened.append(Path(path)) or init(self, path, **kw))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "in.mcap"
    task = {"input": str(src), "output": str(out), "params": load_config(None, {"engine": f"oracle:{src}"}),
            "image_topic": None, "info_topic": None, "copy_input": False, "overwrite": False, "config_digest": "d",
            "input_fingerprint": []}
    rec = batch_workers.run_task(task)
    assert rec["status"] == "done" and rec["pairs"] == 2, rec
    assert opened == [out] and rec["output_bytes"] == out.stat().st_size > 0
    old = out.read_bytes()
    (tmp_path / "cut.mcap").write_bytes(src.read_bytes()[:2000])
    rec = batch_workers.run_task(dict(task, input=str(tmp_path / "cut.mcap"), overwrite=True))
    assert rec["status"] == "failed" and out.read_bytes() == old
    assert [p.name for p in out_dir.iterdir()] == ["in.mcap"]
