"""Issue #12: no code runs from data, no output is destroyed before its replacement exists, nothing fails silently.
Each test plants the fault the issue found and checks the outcome (see README "Reliability")."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dpm_ros.training import evaluate as ev

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out

N, H, W = 2, 32, 48


class _Exploit:
    """Unpickling this runs ``touch MARKER`` (what a planted cache file could do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_eval_cache_never_unpickles_a_planted_file(tmp_path, monkeypatch):
    """(1) A pickle planted under every name the eval cache uses (old .pkl, new .npz) must not run; the set is
    regenerated, written as .npz + verified JSON, and read back equal without pickle."""
    marker = tmp_path / "pwned"
    cache = tmp_path / "cache"
    cache.mkdir()
    stem = f"eval_{N}_{H}x{W}_seed{ev.EVAL_SEED_BASE}_{ev.generator_version()}"
    for name in (stem + ".pkl", stem + ".npz"):
        (cache / name).write_bytes(pickle.dumps(_Exploit(marker)))
    samples = ev.load_eval_set(N, H, W, cache, progress=False)
    assert not marker.exists(), "loading the eval cache ran code from a planted pickle"
    assert len(samples) == N and samples[0]["img1"].shape == (H, W, 3)
    meta = json.loads((cache / (stem + ".npz.json")).read_text())
    assert meta["n"] == N and len(meta["sha256"]) == 64
    again = ev.load_eval_set(N, H, W, cache, progress=False)             # from the verified cache
    fresh = ev.load_eval_set(N, H, W, None, progress=False)
    for a, b in zip(again, fresh):
        assert np.array_equal(a["p1_t2_pi1"], b["p1_t2_pi1"], equal_nan=True)
        assert a["object_motions"].keys() == b["object_motions"].keys()
        assert all(np.allclose(a["object_motions"][k], b["object_motions"][k]) for k in a["object_motions"])
        assert a["kind"] == b["kind"]
    # a tampered cache (bytes changed after the JSON was written) is not trusted
    data = bytearray((cache / (stem + ".npz")).read_bytes())
    data[-100] ^= 0xFF
    (cache / (stem + ".npz")).write_bytes(bytes(data))
    assert np.array_equal(ev.load_eval_set(N, H, W, cache, progress=False)[1]["img2"], fresh[1]["img2"])


def test_eval_cache_default_is_per_user(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ev.default_eval_cache_dir() == tmp_path / "xdg" / "dpm_ros" / "eval"
    ev.load_eval_set(1, H, W, progress=False)
    assert list((tmp_path / "xdg" / "dpm_ros" / "eval").glob("*.npz"))


# ---------------------------------------------------------------------------------------------------------- (2)
def _dpm(*args, cwd=None, timeout=120):
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "dpm_ros.cli", *map(str, args)], cwd=cwd or root,
                          env=os.environ.copy(), capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stderr


def _tiny_sequence(frames=4, **kw):
    from dpm_ros.synthetic import SyntheticSequence
    return SyntheticSequence(seed=1, n_frames=frames, height=24, width=32, n_objects=1, renderer="numpy", **kw)


def _tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory):
    from dpm_ros.bag import write_sequence
    return write_sequence(_tiny_sequence(6), tmp_path_factory.mktemp("bags") / "seq.mcap")


def test_overwrite_never_deletes_an_unrelated_folder_the_working_folder_or_the_input(tmp_path, small_bag):
    """(2) `--overwrite` pointed at a folder of unrelated files, at '.', or at the input leaves all of them."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    rc, err = _dpm("synth", "--out", victim, "--frames", 2, "--height", 24, "--width", 32, "--renderer", "numpy",
                   "--overwrite")
    assert rc == 1 and "is not one" in err and "Traceback" not in err, err
    assert (victim / "thesis.tex").read_text() == "years of work"
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("keep")
    rc, err = _dpm("replay", small_bag, "--out", ".", "--engine", f"oracle:{small_bag}", "--overwrite",
                   "--no-progress", cwd=work)
    assert rc == 1 and (work / "notes.txt").read_text() == "keep", err
    before = small_bag.read_bytes()
    rc, err = _dpm("replay", small_bag, "--out", small_bag, "--engine", f"oracle:{small_bag}", "--overwrite",
                   "--no-progress")
    assert rc == 1 and "input" in err and small_bag.read_bytes() == before, err
    rc, err = _dpm("replay", small_bag, "--out", small_bag.parent / "inside.mcap", "--engine", f"oracle:{small_bag}",
                   "--no-progress")   # (a file beside the input is fine)
    assert rc == 0, err
    (small_bag.parent / "inside.mcap").unlink()
    frames = tmp_path / "frames"                  # `dpm import` follows the same rules
    frames.mkdir()
    import cv2
    for i in range(2):
        cv2.imwrite(str(frames / f"{i:03d}.png"), np.full((24, 32, 3), 40 * i, np.uint8))
    rc, err = _dpm("import", frames, "--out", victim, "--overwrite", "--no-progress")
    assert rc == 1 and "is not one" in err and (victim / "thesis.tex").read_text() == "years of work", err
    rc, err = _dpm("import", frames, "--out", frames, "--overwrite", "--no-progress")
    assert rc == 1 and "input" in err and len(list(frames.iterdir())) == 2, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "victim", "work"]


def test_overwrite_keeps_the_old_output_until_the_new_one_is_complete(tmp_path, monkeypatch):
    """(2) A write that fails half-way (here: frame 2 raises, as Ctrl-C would) leaves the old bag byte for byte
    and no partial or hidden files; a complete one replaces it (file and rosbag2 folder alike)."""
    from dpm_ros.bag import read_images, write_sequence
    from dpm_ros.synthetic import SyntheticSequence
    for name in ("out.mcap", "out_folder"):
        out = tmp_path / name
        write_sequence(_tiny_sequence(3), out)
        old = _tree(out) if out.is_dir() else out.read_bytes()
        real_frame = SyntheticSequence.frame

        def failing(self, i):
            if i == 2:
                raise KeyboardInterrupt
            return real_frame(self, i)

        monkeypatch.setattr(SyntheticSequence, "frame", failing)
        with pytest.raises(KeyboardInterrupt):
            write_sequence(_tiny_sequence(5), out, overwrite=True)
        monkeypatch.setattr(SyntheticSequence, "frame", real_frame)
        assert (_tree(out) if out.is_dir() else out.read_bytes()) == old
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
        write_sequence(_tiny_sequence(5), out, overwrite=True)
        assert len(list(read_images(out))) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mcap", "out_folder"]


# ---------------------------------------------------------------------------------------------------------- (3)
IMAGES, IMAGE_BYTES = 40, 200_000


@pytest.fixture(scope="module")
def image_bag(tmp_path_factory):
    """IMAGES rgb8 images of IMAGE_BYTES each on /cam at 20 Hz (distinct random pixels), written with rosbags."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from dpm_ros.bag import image_msg, typestore
    path = tmp_path_factory.mktemp("images") / "images"
    rng = np.random.default_rng(12)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conn = w.add_connection("/cam", "sensor_msgs/msg/Image", typestore=typestore())
        for i in range(IMAGES):
            img = rng.integers(0, 256, (IMAGE_BYTES // 300, 100, 3), dtype=np.uint8)
            ns = 1_000_000_000 + i * 50_000_000
            w.write(conn, ns, typestore().serialize_cdr(image_msg(img, ns), "sensor_msgs/msg/Image"))
    return path


def _payloads(path) -> list[bytes]:
    from dpm_ros.bag import open_bag
    reader = open_bag(path)
    try:
        return [bytes(d) for _, _, d in reader.messages(connections=reader.connections)]
    finally:
        reader.close()


def _popen_dpm(*args):
    root = Path(__file__).resolve().parents[1]
    return subprocess.Popen([sys.executable, "-m", "dpm_ros.cli", *map(str, args)], cwd=root,
                            env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def test_a_killed_recorder_leaves_an_mcap_readable_up_to_its_last_flushed_chunk(tmp_path, image_bag):
    """(3) SIGKILL after every image arrived and one flush period passed: OUT.mcap exists at its own name and the
    project's reader gives back every image, byte for byte (before: only a hidden folder with an unreadable file)."""
    import signal
    import time
    out = tmp_path / "killed.mcap"
    rec = _popen_dpm("record", out, "/cam", "--flush-every", 0.3, "--status-every", 1)
    rc_play = _popen_dpm("play", image_bag, "--wait-for-subscribers", 60, "--delay", 0.5, "--no-progress").wait(120)
    assert rc_play == 0
    time.sleep(2.0)                                   # > flush period: the last chunk is on disk
    rec.send_signal(signal.SIGKILL)
    _, err = rec.communicate(timeout=30)
    assert out.is_file(), err
    assert "received" in err and "written" in err      # the periodic status line
    got = _payloads(out)
    sent = [_pad4(d) for d in _payloads(image_bag)]
    assert len(got) == IMAGES and [_pad4(d) for d in got] == sent
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "hidden leftovers"


SMALL_FS = """set -e
mount -t tmpfs -o size={size} tmpfs {mnt}
set +e
{python} -m dpm_ros.cli record {mnt}/out.mcap /cam --flush-every 0.3 --duration 60 --max-messages {n}
echo "RC=$?" >&2
{python} - <<'PY' >&2
import json, sys
sys.path.insert(0, {root!r})
from dpm_ros.bag import open_bag
r = open_bag({mnt_s!r} + "/out.mcap")
data = [bytes(d).hex() for _, _, d in r.messages(connections=r.connections)]
print("READBACK=" + json.dumps(data))
PY
"""


def _in_small_fs(mnt: Path, size: str, n: int):
    """Start `dpm record` onto a fresh tmpfs of ``size`` at ``mnt``, in a user + mount namespace (no root
    needed where unprivileged user namespaces are allowed), then read the file back there."""
    import shutil
    if shutil.which("unshare") is None:
        pytest.skip("no unshare: cannot make a size-limited file system")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o size=1m tmpfs {mnt}"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()}")
    script = SMALL_FS.format(size=size, mnt=mnt, mnt_s=str(mnt), python=sys.executable, n=n,
                             root=str(Path(__file__).resolve().parents[1]))
    return subprocess.Popen(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                            env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_full_disk_stops_the_recorder_with_counts_and_a_readable_file(tmp_path, image_bag):
    """(3) Recording 8 MB of images onto a 3 MB tmpfs: exit 1, an error naming the cause, received / written /
    lost counts that add up, and the file read back there holds exactly the 'written' images, byte for byte."""
    import re
    mnt = tmp_path / "small"
    mnt.mkdir()
    rec = _in_small_fs(mnt, "3m", IMAGES)
    rc_play = _popen_dpm("play", image_bag, "--wait-for-subscribers", 60, "--delay", 0.5, "--no-progress").wait(120)
    _, out = rec.communicate(timeout=120)
    err = out.split("READBACK=")[0]
    assert rc_play == 0
    assert "RC=1" in err and "No space left on device" in err and "Traceback" not in err, err
    m = re.search(r"dpm record: received (\d+), written (\d+), lost (\d+)", err.split("RC=")[0])
    assert m, err
    received, written, lost = map(int, m.groups())
    assert received == written + lost and 0 < written < IMAGES and lost > 0, err
    got = [bytes.fromhex(h) for h in json.loads(out.split("READBACK=")[1].splitlines()[0])]
    sent = [_pad4(d) for d in _payloads(image_bag)]
    assert len(got) == written and [_pad4(d) for d in got] == sent[:written]


# ---------------------------------------------------------------------------------------------------------- (4)
def _bag_with_stamps(path: Path, stamps_s, image_topic="/camera/image_raw"):
    """A bag of tiny rgb8 images (+ CameraInfo) with these header stamps, written in this order."""
    from dpm_ros.bag import SequenceBagWriter, camera_info_msg, image_msg
    K = np.array([[40.0, 0, 16], [0, 40.0, 12], [0, 0, 1]])
    rng = np.random.default_rng(3)
    with SequenceBagWriter(path) as w:
        for i, t in enumerate(stamps_s):
            ns = int(round(t * 1e9))
            w.write("/camera/camera_info", camera_info_msg(K, 24, 32, ns), 1_000_000_000 + i)
            w.write(image_topic, image_msg(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), ns), 1_000_000_000 + i)
    return path


@pytest.mark.parametrize("kind, stamps, reason", [
    ("reversed", [2.0 - 0.1 * i for i in range(8)], "older than the previous image"),
    ("all_zero", [0.0] * 8, "same header stamp"),
    ("duplicates", [1.0, 1.0, 1.0, 1.0], "same header stamp"),
    ("too_far", [1.0 + 2.0 * i for i in range(5)], "without an earlier image within max_pair_gap"),
    ("empty", [], "has no message on /camera/image_raw"),
])
def test_replay_with_no_pair_says_why_and_exits_non_zero(tmp_path, small_bag, kind, stamps, reason):
    """(4) Bags whose stamps give no pair: exit 1, the check that dropped the images with counts, no output."""
    bag = tmp_path / f"{kind}.mcap"
    if kind == "empty":
        from dpm_ros.bag import SequenceBagWriter, camera_info_msg
        with SequenceBagWriter(bag) as w:        # a camera topic declared, no image on it
            w.write("/camera/camera_info", camera_info_msg(np.eye(3), 24, 32, 1), 1)
            w._writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image",
                                     typestore=__import__("dpm_ros.bag", fromlist=["x"]).typestore())
    else:
        _bag_with_stamps(bag, stamps)
    out = tmp_path / "out.mcap"
    rc, err = _dpm("replay", bag, "--out", out, "--engine", f"oracle:{small_bag}", "--no-progress")
    assert rc == 1 and "no pair written" in err and reason in err and "Traceback" not in err, err
    if stamps:
        assert f"{len(stamps)} images" in err
    assert not out.exists()


def test_record_of_nothing_says_why_and_exits_non_zero(tmp_path):
    rc, err = _dpm("record", tmp_path / "none.mcap", "/nobody_publishes_this", "--duration", 1)
    assert rc == 1 and "nothing recorded" in err and "/nobody_publishes_this" in err, err


# ---------------------------------------------------------------------------------------------------------- (5)
def _bag_of(path: Path, topics: dict):
    """A bag with {topic: std_msgs/String text} only (no camera, no synth_info)."""
    from dpm_ros.bag import SequenceBagWriter, typestore
    String = typestore().types["std_msgs/msg/String"]
    with SequenceBagWriter(path) as w:
        for topic, text in topics.items():
            w.write(topic, String(data=text), 1_000_000_000)
    return path


def test_a_missing_topic_reads_as_nothing_and_a_wrong_type_is_refused(tmp_path, small_bag):
    """(5) rosbags reads every topic when given no connection: a missing CameraInfo topic returned a message of
    another type. Now: missing → the caller's clear error; the topic holding another type → ValueError."""
    from dpm_ros.bag import read_camera_info, read_messages, read_synth_info
    bag = _bag_of(tmp_path / "strings.mcap", {"/chatter": "hello"})
    assert list(read_messages(bag, ["/camera/camera_info"])) == []
    with pytest.raises(ValueError, match="has no CameraInfo on /camera/camera_info"):
        read_camera_info(bag)
    with pytest.raises(ValueError, match="has no /dpm/synth_info"):
        read_synth_info(bag)
    wrong = _bag_of(tmp_path / "wrong.mcap", {"/camera/camera_info": "not a CameraInfo"})
    with pytest.raises(ValueError, match="holds std_msgs/msg/String, expected sensor_msgs/msg/CameraInfo"):
        read_camera_info(wrong)
    assert read_camera_info(small_bag)[1:] == (24, 32)


def test_oracle_engine_on_a_bag_without_ground_truth_is_a_clear_error(tmp_path, small_bag):
    """(5) engine:=oracle:<bag without /dpm/synth_info> was an AttributeError traceback."""
    plain = _bag_with_stamps(tmp_path / "plain.mcap", [1.0 + 0.1 * i for i in range(4)])
    rc, err = _dpm("replay", small_bag, "--out", tmp_path / "o.mcap", "--engine", f"oracle:{plain}",
                   "--no-progress")
    assert rc == 1 and "has no /dpm/synth_info" in err and "Traceback" not in err, err


# ---------------------------------------------------------------------------------------------------------- (6)
def test_a_message_type_named_by_a_bag_never_imports_a_module(tmp_path, monkeypatch):
    """(6) A bag whose type is `evilpkg/msg/Thing` made `dpm play` import the module `evilpkg`. Only types of the
    ROS 2 typestore and this package's own are resolved."""
    from dpm_ros.ros.bag_player import resolve_msg_class
    marker = tmp_path / "imported"
    pkg = tmp_path / "site" / "evilpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (pkg / "msg.py").write_text("class Thing: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in ("evilpkg/msg/Thing", "evilpkg/Thing", "os/msg/Thing"):
        assert resolve_msg_class(name) is None
    assert not marker.exists(), "a module named by a bag was imported"
    assert resolve_msg_class("sensor_msgs/msg/Image").__name__ == "Image"
    assert resolve_msg_class("dpm_ros/msg/ObjectMotionArray").__name__ == "ObjectMotionArray"


def _saved_tiny(tmp_path):
    from dpm_ros.model import build_model, save_model
    return save_model(build_model("dpm_tiny"), tmp_path / "tiny.safetensors")


def test_model_config_bounds_are_checked_without_building_anything():
    """(6) Sizes within every per-field bound can still make a huge network: the parameter estimate is bounded
    too. (Checked on DPMConfig alone: the same JSON given to an unchecked loader would allocate ~50 GB.)"""
    from dpm_ros.model.config import MAX_PARAMETERS, PRESETS, DPMConfig
    with pytest.raises(ValueError, match="parameters, above the supported"):
        DPMConfig(enc_depth=64, enc_embed_dim=4096, enc_num_heads=64)
    with pytest.raises(ValueError, match="above the supported"):
        DPMConfig(height=2 ** 20, width=2 ** 20)
    assert PRESETS["dust3r_vitl_512_dpt"].approx_parameters() < MAX_PARAMETERS / 3


@pytest.mark.parametrize("change, message", [
    (dict(enc_embed_dim=1_000_000, enc_num_heads=1000), "above the supported"),
    (dict(enc_depth="6"), "must be an integer"),
    (dict(mlp_ratio=float("nan")), "finite number"),
    (dict(dpt_layer_dims=[1, 2, 3, -4]), "dpt_layer_dims"),
])
def test_model_json_is_validated_before_anything_is_allocated(tmp_path, change, message):
    """(6) The JSON beside the weights set the network's size before any check (one asked for 118 TB)."""
    import time
    from dpm_ros.model import load_model
    path = _saved_tiny(tmp_path)
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["config"].update(change)
    side.write_text(json.dumps(meta))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        load_model(path)
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("damage, message", [("int8", "torch.int8"), ("nan", "NaN/Inf"), ("inf", "NaN/Inf")])
def test_int8_or_non_finite_weights_are_refused_at_load_and_export(tmp_path, damage, message):
    """(6) int8 weights or weights full of NaN/Inf exported to an ONNX without a word."""
    import torch
    from safetensors.torch import load_file, save_file

    from dpm_ros.model import load_model
    path = _saved_tiny(tmp_path)
    sd = load_file(str(path))
    name = sorted(sd)[3]
    if damage == "int8":
        sd[name] = sd[name].to(torch.int8)
    else:
        sd[name] = sd[name].clone()
        sd[name].view(-1)[0] = float(damage)
    save_file(sd, str(path))
    with pytest.raises(ValueError, match=message):
        load_model(path)
    rc, err = _dpm("export", "--weights", path, "--out", tmp_path / "m.onnx")
    assert rc != 0 and message.split(".")[-1] in err and "Traceback" not in err, err
    assert not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------------------------------------------------- (7)
def _camera_info(fx=200.0, fy=200.0, cx=160.0, cy=120.0, k22=1.0, d=(0.0,) * 5, w=320, h=240):
    from sensor_msgs.msg import CameraInfo
    msg = CameraInfo(width=w, height=h, distortion_model="plumb_bob")
    msg.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, k22]
    msg.d = [float(x) for x in d]
    return msg


@pytest.mark.parametrize("bad, reason", [
    (dict(fx=1e-9), "focal length"), (dict(fy=1e30), "focal length"), (dict(cx=-1e7), "principal point"),
    (dict(k22=0.0), "last row"), (dict(d=(float("nan"), 0, 0, 0, 0)), "distortion D has non-finite"),
    (dict(fx=float("inf")), "non-finite"), (dict(w=0), "image size"),
])
def test_implausible_camera_info_is_rejected_and_counted(bad, reason):
    """(7) fx = 1e-9 or 1e30, cx = −1e7, K[2][2] = 0, NaN distortion were accepted and republished."""
    from dpm_ros.config import Config
    from dpm_ros.ros.messages import calibration
    from dpm_ros.stream.step import PairProcessor, camera_info_problem
    assert camera_info_problem(calibration(_camera_info())) is None
    assert reason in camera_info_problem(calibration(_camera_info(**bad)))
    told = []
    step = PairProcessor(Config(), None, None, lambda level, kind, text: told.append((kind, text)))
    assert step.add_camera_info(calibration(_camera_info(**bad))) is False
    assert step.add_camera_info(calibration(_camera_info())) is True
    assert step.counters()["camera_info_rejected"] == 1
    assert told and told[0][0] == "camera_info" and reason in told[0][1]
    told.clear()
    assert step.add_camera_info(calibration(_camera_info(d=(0.1, 0, 0, 0, 0)))) is True   # used, said: D not applied
    assert told and told[0][0] == "distortion" and "rectified" in told[0][1]


def test_node_takes_an_integer_for_a_double_and_names_unknown_parameters(tmp_path, small_bag):
    """(7) `-p pair_interval:=1` was a traceback; a misspelled parameter was silently ignored."""
    import time
    from dpm_ros.ros.harness import NodeProcess
    args = ["--ros-args", "-p", f"engine:=oracle:{small_bag}", "-p", "pair_interval:=1", "-p", "max_pair_gap:=2",
            "-p", "pair_intervall:=0.3"]
    with NodeProcess(args, tmp_path / "node.log") as node:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "dpm_node ready" not in node.log() and node.alive():
            time.sleep(0.2)
        log = node.log()
    assert "dpm_node ready" in log and "pair_interval 1.0 s" in log and "Traceback" not in log, log
    assert "ignoring unknown parameter(s): pair_intervall (did you mean pair_interval?)" in log, log


def test_diagnostics_warn_on_drops_and_latency_and_error_without_pairs():
    """(7) /diagnostics stayed OK while 39–88 % of the pairs were dropped."""
    from dpm_ros.ros.diagnostics import NodeHealth
    from dpm_ros.config import Config
    p = Config()
    limits = (p.diag_max_drop_fraction, p.diag_max_latency, p.diag_no_pair_timeout)
    h = NodeHealth()
    now = h.started
    for _ in range(10):
        h.frame_in(now)
    for _ in range(6):
        h.pair_done(10.0, 50.0)
    level, text, values = h.report({}, dropped_pairs=4, max_drop_fraction=limits[0], max_latency_s=limits[1],
                                   no_pair_timeout_s=limits[2], now=now)          # 4 of 10 dropped: 40 %
    assert level == "warn" and "4 of 10 pairs dropped" in text and values["drop_fraction_recent"] == 0.4
    for _ in range(8):
        h.pair_done(10.0, 50.0)
    assert h.report({}, 5, *limits, now=now)[0] == "ok"                           # 1 of 9 since the last report
    for _ in range(100):
        h.pair_done(10.0, 2500.0)
    level, text, _ = h.report({}, 5, *limits, now=now)
    assert level == "warn" and "mean latency" in text
    later = h.last_output + limits[2] + 1.0
    h.frame_in(later)                                                             # images arrive, no pair
    level, text, _ = h.report({}, 5, *limits, now=later)
    assert level == "error" and "no pair was published" in text


def test_engine_cache_lock_builds_once_and_an_unwritable_cache_serves_memory(tmp_path):
    """(7) Two processes building the same engine both built it; a read-only or full cache threw the freshly built
    engine away. The cache protocol (TensorRT's build is the ``build`` callable; here a real function that
    records each call) is run by two processes at once, then against a read-only folder."""
    import textwrap
    script = tmp_path / "build.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from dpm_ros.engine import cache
        key = cache.engine_cache_key("0" * 64, "10.0", "gpu", (9, 0), "fp16", {{"img1": (1, 3, 8, 8)}})
        def build():
            with open({str(tmp_path / "builds.txt")!r}, "a") as f:
                f.write("built\\n")
            time.sleep(2.0)
            return b"engine-bytes"
        path, meta, built = cache.get_or_build(sys.argv[1], "m.onnx", key, build)
        print(built, cache.read_engine_bytes(path).decode())
    """))
    folder = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, str(script), str(folder)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert (tmp_path / "builds.txt").read_text().count("built") == 1
    assert outs == ["False engine-bytes", "True engine-bytes"]
    from dpm_ros.engine import cache
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    warnings = []
    key = cache.engine_cache_key("1" * 64, "10.0", "gpu", (9, 0), "fp16", {"img1": (1, 3, 8, 8)})
    try:
        if os.access(ro, os.W_OK):      # root ignores permissions: make the folder a file's child instead
            ro = tmp_path / "a_file" / "sub"
            (tmp_path / "a_file").write_text("x")
        path, _, built = cache.get_or_build(ro, "m.onnx", key, lambda: b"in-memory", warn=warnings.append)
    finally:
        (tmp_path / "ro").chmod(0o700)
    assert built and cache.read_engine_bytes(path) == b"in-memory"
    assert any("using the engine built in memory" in w for w in warnings)


def test_an_8_byte_mcap_and_garbage_cdr_give_clear_errors_not_tracebacks(tmp_path, small_bag):
    """(7) An 8-byte .mcap was a TypeError traceback; garbage CDR was a traceback in replay."""
    eight = tmp_path / "eight.mcap"
    eight.write_bytes(b"\x89MCAP0\r\n")
    rc, err = _dpm("replay", eight, "--out", tmp_path / "o.mcap", "--engine", f"oracle:{small_bag}",
                   "--no-progress")
    assert rc == 1 and str(eight) in err and "cannot be read" in err and "Traceback" not in err, err
    garbage = _garbage_bag(tmp_path / "garbage.mcap")
    rc, err = _dpm("replay", garbage, "--out", tmp_path / "g.mcap", "--engine", f"oracle:{small_bag}",
                   "--no-progress")
    assert "Traceback" not in err and "not valid" in err and "CDR" in err, err
    assert rc == 1 and "undecodable" in err      # every image is garbage: no pair, said why


def _garbage_bag(path: Path) -> Path:
    """/camera/image_raw declared as sensor_msgs/Image, every message random bytes."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from dpm_ros.bag import typestore
    rng = np.random.default_rng(5)
    with Writer(path.with_suffix(""), version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conn = w.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=typestore())
        for i in range(4):
            w.write(conn, 1_000_000_000 + i * 100_000_000, rng.integers(0, 256, 64, dtype=np.uint8).tobytes())
    os.replace(next(path.with_suffix("").glob("*.mcap")), path)
    return path


def test_play_does_not_relay_garbage_cdr(tmp_path):
    """(7) `dpm play` published garbage CDR as it was; now it is counted and not published."""
    import rclpy

    from dpm_ros.ros.bag_player import BagPlayer
    garbage = _garbage_bag(tmp_path / "garbage.mcap")
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("garbage_player", context=context)
        logs = []
        player = BagPlayer(node, garbage, rate=100.0, progress=False, log=logs.append)
        stats = player.play()
        player.close()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    assert stats.published == 0 and stats.undecodable == 4
    assert any("not valid sensor_msgs/msg/Image CDR" in line for line in logs), logs


def test_record_counts_messages_the_transport_never_delivered(tmp_path):
    """(3) Under a burst, one of two runs lost 34 of 1,500 messages without a word. Here the recorder's reader
    history (keep-last 1000) overflows for real: 1 message is taken, then 1,500 are published while the recorder
    does not spin; the recorder must say that 500 were not delivered (publisher sequence-number gaps)."""
    import time

    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    from dpm_ros.ros.bag_recorder import BagRecorder, BagWriter
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        pub_node = rclpy.create_node("burst_pub", context=context)
        rec_node = rclpy.create_node("burst_rec", context=context)
        pub = pub_node.create_publisher(String, "/burst", QoSProfile(depth=2000,
                                                                      reliability=ReliabilityPolicy.RELIABLE))
        writer = BagWriter(tmp_path / "burst.mcap", live=True)
        recorder = BagRecorder(rec_node, writer, ["/burst"], log=lambda text: None)
        from rclpy.executors import SingleThreadedExecutor
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(rec_node)
        deadline = time.monotonic() + 30
        while "/burst" not in recorder.subscriptions and time.monotonic() < deadline:
            recorder._discover()
            time.sleep(0.1)
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        pub.publish(String(data="first"))
        while recorder.total < 1 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        for i in range(1500):
            pub.publish(String(data=f"burst {i}"))
        time.sleep(3.0)                                     # all in the recorder's reader history (or dropped)
        while time.monotonic() < deadline:
            before = recorder.total
            executor.spin_once(timeout_sec=0.5)
            if recorder.total == before:
                break
        writer.close()
        summary = recorder.summary()
        executor.shutdown()
        pub_node.destroy_node()
        rec_node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    lost = sum(n for why, n in summary["lost"].items() if why.startswith("not delivered"))
    assert summary["received"] == summary["written"] == 1001, summary
    assert lost == 500, summary
    assert "500 not delivered" in recorder.status_line()


def test_replay_onto_a_full_disk_fails_cleanly_and_leaves_nothing(tmp_path, small_bag):
    """(3) `replay` onto a full disk left partial folders (its writer's close raised and skipped the clean-up)."""
    import shutil
    if shutil.which("unshare") is None:
        pytest.skip("no unshare: cannot make a size-limited file system")
    mnt = tmp_path / "small"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o size=1m tmpfs {mnt}"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()}")
    for out in ("out.mcap", "out_folder"):
        script = (f"mount -t tmpfs -o size=24k tmpfs {mnt} && {sys.executable} -m dpm_ros.cli replay {small_bag} "
                  f"--out {mnt}/{out} --engine oracle:{small_bag} --no-progress; echo RC=$? >&2; "
                  f"echo LEFT=$(ls -A {mnt} | tr '\\n' ' ') >&2")
        proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                              cwd=Path(__file__).resolve().parents[1], env=os.environ.copy(), capture_output=True,
                              text=True, timeout=180)
        err = proc.stderr
        assert "RC=1" in err and "No space left on device" in err and "Traceback" not in err, err
        assert "LEFT=\n" in err or err.rstrip().endswith("LEFT="), err


def test_output_rules_refuse_inputs_parents_and_symlinks(tmp_path, monkeypatch):
    """(2) The rules of dpm_ros.output_files on their own: inside an input folder, an input's parent, '.', '..', a
    symlink, and a non-bag with --overwrite are refused; a bag file / bag folder may be replaced."""
    from dpm_ros.bag import write_sequence
    from dpm_ros.output_files import check_output
    folder_bag = write_sequence(_tiny_sequence(2), tmp_path / "folder_bag")
    file_bag = write_sequence(_tiny_sequence(2), tmp_path / "file_bag.mcap")
    for out, inputs in ((folder_bag / "x.mcap", [folder_bag]), (tmp_path, [file_bag]), (Path("."), []),
                        (Path(".."), [])):
        with pytest.raises(ValueError):
            check_output(out, True, inputs)
    (tmp_path / "link.mcap").symlink_to(file_bag)
    with pytest.raises(ValueError, match="symbolic link"):
        check_output(tmp_path / "link.mcap", True)
    (tmp_path / "notes.mcap").write_text("not a bag")
    with pytest.raises(ValueError, match="is not one"):
        check_output(tmp_path / "notes.mcap", True)
    assert check_output(folder_bag, True) == folder_bag and check_output(file_bag, True) == file_bag
    with pytest.raises(ValueError, match="already exists"):
        check_output(file_bag, False)
