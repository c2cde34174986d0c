"""Soak benchmark: drive ``dpm_node`` (a subprocess, DDS on loopback) with a looped synthetic camera stream for a
long time and sample its memory (RSS), end-to-end latency and drops, writing a JSON that grows as the run goes.

Latency = arrival of ``/dpm/odometry`` for a stamp − the moment the image with that stamp was published (monotonic
clock, milliseconds). Stamps increase monotonically (wall-clock based) while the images loop over a precomputed
``SyntheticSequence``. Drops come from the node's ``/diagnostics`` (``pairs_dropped``: pairs replaced in the
latest-wins slot) and from the transport (frames published − ``frames_in``).

``subscribe`` names the per-pair outputs the probe subscribes to (the node builds only those: lazy outputs);
/dpm/odometry always. The probe takes them as raw bytes (no deserialisation) and counts them. Each sample also
records the CPU share (percent of one core) of this process (the camera publisher and the probe) and of the node,
the load average, and the node's per-stage latencies from /diagnostics (``stage_*_ms_mean``), so a measurement on
a shared 2-core machine says how much was left for the node and where its time went.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from dpm_ros.dds_env import loopback_env

FRAME_ID = "camera_optical"
IMAGE_TOPIC, INFO_TOPIC = "/camera/image_raw", "/camera/camera_info"
OUTPUTS = {"points": "/dpm/points", "motion_mask": "/dpm/motion_mask", "object_labels": "/dpm/object_labels",
           "depth": "/dpm/depth", "camera_info": "/dpm/camera_info", "objects": "/dpm/objects",
           "markers": "/dpm/objects/markers"}
DIAG_KEYS = ("frames_in", "pairs_out", "pairs_dropped", "errors_total", "pairing_no_partner", "input_rate_hz",
             "output_rate_hz", "inference_ms_mean", "latency_ms_mean", "outputs_skipped")


@dataclass
class SoakConfig:
    """minutes: run length; rate: camera rate (Hz); engine: node 'engine' parameter ('' = shipped model,
    'oracle' = ground truth of the synthetic loop); sample_s: seconds between samples; warmup_s: seconds before
    the memory reference (None = 20% of the run, between 5 s and 120 s)."""
    minutes: float = 1.0
    rate: float = 30.0
    engine: str = ""
    width: int = 256
    height: int = 192
    frames: int = 30
    sample_s: float = 5.0
    warmup_s: Optional[float] = None
    out: Optional[str] = None
    domain_id: Optional[int] = None
    node_args: list = field(default_factory=list)
    subscribe: list = field(default_factory=lambda: list(OUTPUTS))   # OUTPUTS keys; odometry always
    node_command: Optional[list] = None   # instead of dpm_node (e.g. another checkout, for A/B comparisons)
    loop_cache: Optional[str] = None      # folder keeping the rendered loop between runs (A/B runs at 1080p)

    def check(self) -> None:
        if not self.minutes > 0:
            raise ValueError(f"--minutes must be > 0, got {self.minutes}")
        if not 0 < self.rate <= 1000:
            raise ValueError(f"--rate must be in (0, 1000] Hz, got {self.rate}")
        if self.frames < 2 or self.width < 16 or self.height < 16:
            raise ValueError(f"need --frames ≥ 2 and an image of at least 16×16 pixels, got {self.frames} frames of "
                             f"{self.width}×{self.height}")
        if not self.sample_s > 0:
            raise ValueError(f"--sample-s must be > 0 seconds, got {self.sample_s}")
        unknown = sorted(set(self.subscribe) - set(OUTPUTS))
        if unknown:
            raise ValueError(f"--subscribe: unknown output(s) {', '.join(unknown)} (use {', '.join(OUTPUTS)}, "
                             "'all' or 'none')")

    @property
    def warmup(self) -> float:
        if self.warmup_s is not None:
            return float(self.warmup_s)
        return min(120.0, max(5.0, 0.2 * 60.0 * self.minutes))


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (psutil when installed, else /proc/<pid>/status VmRSS)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        pass
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise ValueError(f"no VmRSS for process {pid}")


def parse_subscribe(text: str) -> list:
    """``--subscribe`` value → list of OUTPUTS keys: "all", "none" or comma-separated names."""
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if names == ["all"]:
        return list(OUTPUTS)
    if names in (["none"], []):
        return []
    return names


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (all its threads; /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values, q: float) -> Optional[float]:
    """q-th percentile (0..100) of ``values``, None when empty."""
    return float(np.percentile(np.asarray(values, float), q)) if len(values) else None


def camera_loop(cfg: SoakConfig, workdir: Path) -> tuple[list[np.ndarray], np.ndarray, str]:
    """(images uint8 (H, W, 3) RGB, K 3×3 pixels, node engine parameter) for the looped synthetic stream.
    With the oracle engine the sequence is written as a `dpm synth` bag and the images are read back from it.
    With ``cfg.loop_cache`` the rendered images are kept there (``soak_loop_<frames>_<rate>_<W>x<H>.npz``, no pickle)
    and read back by later runs: rendering 30 frames of 1920×1080 takes minutes on a loaded 2-core machine."""
    from dpm_ros.synthetic import SyntheticSequence

    seq = SyntheticSequence(seed=7, n_frames=cfg.frames, fps=cfg.rate, height=cfg.height, width=cfg.width,
                            n_objects=3, renderer="numpy")
    if cfg.engine.strip() == "oracle":
        from dpm_ros.bag import read_images, write_sequence

        bag = write_sequence(seq, workdir / "soak_loop.mcap", overwrite=True)
        return [img for _, img, _ in read_images(bag)], seq.K, f"oracle:{bag}"
    if cfg.loop_cache is None:
        return [seq.frame(i)["image"] for i in range(len(seq))], seq.K, cfg.engine
    cache = Path(cfg.loop_cache) / f"soak_loop_{cfg.frames}_{cfg.rate:g}_{cfg.width}x{cfg.height}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            images = z["images"]
        if images.shape == (cfg.frames, cfg.height, cfg.width, 3) and images.dtype == np.uint8:
            return list(images), seq.K, cfg.engine
    images = np.stack([seq.frame(i)["image"] for i in range(len(seq))])
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.stem + ".tmp.npz")
    np.savez(tmp, images=images)
    os.replace(tmp, cache)
    return list(images), seq.K, cfg.engine


def summarise(samples: list[dict], all_latencies: list[float], warmup: float, published: int) -> dict:
    """The summary of the samples so far (see module docstring for the quantities)."""
    after = [s for s in samples if s["t_s"] >= warmup] or samples[-1:]
    last = samples[-1] if samples else {}
    rss0 = after[0]["rss_mb"] if after else None
    rss1 = last.get("rss_mb")
    span = (after[-1]["t_s"] - after[0]["t_s"]) if len(after) > 1 else 0.0
    pairs_rate = ((after[-1]["outputs"] - after[0]["outputs"]) / span) if span > 0 else None
    windows = [s for s in after if s["latency_ms_p95"] is not None]
    tenth = max(1, len(windows) // 10)
    diag = last.get("diag", {})
    frames_in = int(float(diag.get("frames_in", 0)))
    return dict(
        rss_mb_start_after_warmup=rss0, rss_mb_end=rss1,
        rss_mb_max_after_warmup=max((s["rss_mb"] for s in after), default=None),
        growth_pct=(100.0 * (rss1 - rss0) / rss0) if rss0 and rss1 else None,
        latency_ms_p50=percentile(all_latencies, 50), latency_ms_p95=percentile(all_latencies, 95),
        latency_ms_p95_first_tenth=statistics.median([s["latency_ms_p95"] for s in windows[:tenth]])
        if windows else None,
        latency_ms_p95_last_tenth=statistics.median([s["latency_ms_p95"] for s in windows[-tenth:]])
        if windows else None,
        pairs_per_s=pairs_rate, outputs=last.get("outputs", 0), frames_published=published,
        frames_in=frames_in, frames_lost_in_transport=max(0, published - frames_in) if diag else None,
        drops=int(float(diag.get("pairs_dropped", 0))), no_partner=int(float(diag.get("pairing_no_partner", 0))),
        errors=int(float(diag.get("errors_total", 0))), warmup_s=warmup,
        duration_s=last.get("t_s", 0.0),
        publisher_cpu_pct=_mean_of(after, "publisher_cpu_pct"), node_cpu_pct=_mean_of(after, "node_cpu_pct"),
        loadavg_1min=_mean_of(after, "loadavg_1min"), cpus=os.cpu_count(),
        stages_ms=stage_summary(after))


def _mean_of(samples: list[dict], key: str) -> Optional[float]:
    vals = [s[key] for s in samples if s.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def stage_summary(samples: list[dict]) -> dict:
    """Per-stage latency of the node (ms): for each ``stage_*_ms_mean`` of /diagnostics (a mean over the node's last
    100 pairs or frames), the median over the samples, keyed without the "stage_" / "_ms_mean" affixes."""
    keys: dict = {}
    for s in samples:
        for k, v in s.get("stages", {}).items():
            keys.setdefault(k, []).append(float(v))
    return {k[len("stage_"):-len("_ms_mean")]: float(np.median(v)) for k, v in keys.items()}


def write_json(path: Optional[Path], doc: dict) -> None:
    """Atomic write (a reader never sees half a file; an interrupted run leaves the last complete one)."""
    if path is None:
        return
    from dpm_ros.engine.cache import atomic_write_bytes
    atomic_write_bytes(path, json.dumps(doc, indent=1).encode())


def _git_state(root: Path) -> dict:
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
        return dict(commit=head or None, modified_files=sorted(line[3:] for line in dirty if line.strip()))
    except (OSError, subprocess.SubprocessError):
        return dict(commit=None, modified_files=[])


def run_soak(cfg: SoakConfig, log=print) -> dict:
    """Run the soak; returns the JSON document (also written to ``cfg.out`` after every sample)."""
    cfg.check()
    loopback_env(domain_id=cfg.domain_id, domain_base=101)
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from dpm_ros.ros import messages as M
    from dpm_ros.ros.harness import NodeProcess, Probe
    from dpm_ros.ros.image_convert import fill_image

    out = Path(cfg.out) if cfg.out else None
    workdir = Path(tempfile.mkdtemp(prefix="dpm_soak_"))
    images, K, engine = camera_loop(cfg, workdir)
    msgs = [(fill_image(Image(header=Header(frame_id=FRAME_ID)), img, "rgb8"),
             M.camera_info_msg(Header(frame_id=FRAME_ID), K, cfg.height, cfg.width)) for img in images]
    args = ["--ros-args", "-r", f"image:={IMAGE_TOPIC}", "-r", f"camera_info:={INFO_TOPIC}",
            "-p", "diagnostics_period:=1.0", *cfg.node_args]
    if engine.strip():  # empty: the node's default, the shipped model (rcl cannot parse 'engine:=')
        args += ["-p", f"engine:={engine.strip()}"]
    doc = dict(config=dict(asdict(cfg), engine_param=engine or "(shipped engines/dpm_small.onnx)",
                           warmup_s=cfg.warmup, domain_id=int(os.environ["ROS_DOMAIN_ID"])),
               source=_git_state(Path(__file__).resolve().parents[2]), started_utc=time.strftime(
                   "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), complete=False, samples=[], summary={})
    probe = Probe(image_topic=IMAGE_TOPIC, camera_info_topic=INFO_TOPIC, name="dpm_soak", record=False,
                  sensor_qos=True, count={n: OUTPUTS[n] for n in cfg.subscribe})
    published, all_lat = 0, []
    cpu_mark: dict = {}

    def sample(proc, now: float, t_start: float) -> dict:
        """One sample: RSS, latency window, diagnostics, CPU shares since the previous sample, load average."""
        lat, outputs, diag = probe.take()
        all_lat.extend(lat)
        own, node, wall = time.process_time(), cpu_seconds(proc.proc.pid), time.monotonic()
        prev = cpu_mark.get("mark")
        cpu_mark["mark"] = (own, node, wall)
        span = (wall - prev[2]) if prev else 0.0
        return dict(
            t_s=round(now - t_start, 3), rss_mb=round(rss_mb(proc.proc.pid), 2), published=published,
            outputs=outputs, latency_ms_p50=percentile(lat, 50), latency_ms_p95=percentile(lat, 95),
            latency_n=len(lat), diag={k: diag[k] for k in DIAG_KEYS if k in diag},
            stages={k: float(v) for k, v in diag.items() if k.startswith("stage_") and k.endswith("_ms_mean")},
            received=probe.counts(),
            publisher_cpu_pct=round(100.0 * (own - prev[0]) / span, 1) if span > 0 else None,
            node_cpu_pct=round(100.0 * (node - prev[1]) / span, 1) if span > 0 else None,
            loadavg_1min=os.getloadavg()[0])

    try:
        with NodeProcess(args, workdir / "node.log", cfg.node_command) as proc:
            end_wait = time.monotonic() + 180
            while not probe.connected():
                if not proc.alive() or time.monotonic() > end_wait:
                    raise RuntimeError(f"dpm_node did not come up (log {proc.log_path}):\n{proc.log()[-3000:]}")
                time.sleep(0.1)
            time.sleep(0.5)
            doc["node_pid"] = proc.proc.pid
            sample(proc, time.monotonic(), time.monotonic())   # CPU reference
            log(f"dpm soak: node up (pid {proc.proc.pid}, engine {engine or 'shipped'}), {cfg.minutes} min at "
                f"{cfg.rate} Hz, {cfg.width}×{cfg.height}; JSON → {out}")
            period, duration = 1.0 / cfg.rate, 60.0 * cfg.minutes
            t_start = time.monotonic()
            wall0 = time.time()
            next_sample, last_ns = t_start + cfg.sample_s, 0
            while (now := time.monotonic()) - t_start < duration:
                target = t_start + published * period
                if target > now:
                    time.sleep(min(target - now, 0.05))
                    continue
                stamp_ns = max(int((wall0 + (now - t_start)) * 1e9), last_ns + 1)  # strictly increasing
                last_ns = stamp_ns
                image_msg, info_msg = msgs[published % len(msgs)]
                probe.publish_stamped(image_msg, info_msg, stamp_ns)
                published += 1
                if now >= next_sample:
                    next_sample += cfg.sample_s
                    if not proc.alive():
                        raise RuntimeError(f"dpm_node died during the soak (rc {proc.proc.returncode}):\n"
                                           f"{proc.log()[-3000:]}")
                    doc["samples"].append(sample(proc, now, t_start))
                    doc["summary"] = summarise(doc["samples"], all_lat, cfg.warmup, published)
                    write_json(out, doc)
            time.sleep(2.0)  # let the last outputs and a diagnostics message arrive
            doc["samples"].append(sample(proc, time.monotonic(), t_start))
            doc["summary"] = summarise(doc["samples"], all_lat, cfg.warmup, published)
            doc["summary"]["node_alive_at_end"] = proc.alive()
            rc = proc.stop()
            doc["summary"]["node_exit_code"] = rc
            doc["complete"] = True
            doc["node_log_tail"] = proc.log_path.read_text(errors="replace")[-2000:]
    finally:
        probe.close()
        doc["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json(out, doc)
    return doc


def format_summary(summary: dict) -> str:
    """One human-readable block of the summary numbers."""
    def f(v, spec=".1f"):
        return "n/a" if v is None else format(v, spec)
    return (f"RSS after warm-up {f(summary.get('rss_mb_start_after_warmup'))} MiB → end "
            f"{f(summary.get('rss_mb_end'))} MiB (growth {f(summary.get('growth_pct'), '.2f')} %, max "
            f"{f(summary.get('rss_mb_max_after_warmup'))} MiB)\n"
            f"latency p50 {f(summary.get('latency_ms_p50'))} ms, p95 {f(summary.get('latency_ms_p95'))} ms "
            f"(p95 first tenth {f(summary.get('latency_ms_p95_first_tenth'))} ms, last tenth "
            f"{f(summary.get('latency_ms_p95_last_tenth'))} ms)\n"
            f"{f(summary.get('pairs_per_s'), '.2f')} pairs/s, {summary.get('outputs')} outputs; frames published "
            f"{summary.get('frames_published')}, received {summary.get('frames_in')}; pairs dropped (latest wins) "
            f"{summary.get('drops')}; errors {summary.get('errors')}\n"
            f"CPU (% of one core): publisher+probe {f(summary.get('publisher_cpu_pct'))}, node "
            f"{f(summary.get('node_cpu_pct'))} of {summary.get('cpus')} cores; load average "
            f"{f(summary.get('loadavg_1min'), '.2f')}\n"
            "stages (ms, mean): " + ", ".join(f"{k} {v:.2f}" for k, v in (summary.get("stages_ms") or {}).items()))


def plot_soak(doc: dict, png: str | Path) -> Path:
    """RSS (MiB), latency p50/p95 (ms) and pairs/s over time from a soak JSON document → PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = doc["samples"]
    if len(s) < 2:
        raise ValueError("a soak plot needs at least two samples")
    t = np.array([x["t_s"] for x in s]) / 60.0
    fig, ax = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    ax[0].plot(t, [x["rss_mb"] for x in s])
    ax[0].axvline(doc["summary"]["warmup_s"] / 60.0, color="grey", ls=":", label="end of warm-up")
    ax[0].set_ylabel("node RSS [MiB]")
    ax[0].legend(loc="lower right")
    for key in ("latency_ms_p50", "latency_ms_p95"):
        ax[1].plot(t, [np.nan if x[key] is None else x[key] for x in s], label=key.split("_")[-1])
    ax[1].set_ylabel("end-to-end latency [ms]")
    ax[1].legend(loc="upper right")
    dt = np.diff([x["t_s"] for x in s])
    ax[2].plot(t[1:], np.diff([x["outputs"] for x in s]) / dt, label="pairs out")
    ax[2].set_ylabel("pairs / s")
    ax[2].set_xlabel("time [min]")
    cfg = doc["config"]
    fig.suptitle(f"dpm soak: {cfg['minutes']:g} min at {cfg['rate']:g} Hz, {cfg['width']}×{cfg['height']}, "
                 f"engine {cfg['engine_param']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return Path(png)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `dpm soak`")
