"""Counters and rates behind /diagnostics (pure): input/output rates, latencies, drops, errors by kind."""
from __future__ import annotations

import threading
import time
from collections import Counter, deque


class RateMeter:
    """Events per second over a sliding window of ``window`` seconds (monotonic clock)."""

    def __init__(self, window: float = 5.0):
        self.window = float(window)
        self._t: deque[float] = deque()
        self.total = 0

    def tick(self, now: float | None = None) -> None:
        self._t.append(time.monotonic() if now is None else now)
        self.total += 1

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._t and now - self._t[0] > self.window:
            self._t.popleft()
        if len(self._t) < 2:
            return 0.0
        span = self._t[-1] - self._t[0]
        return (len(self._t) - 1) / span if span > 0 else 0.0


class Stats:
    """Mean / max / last of a quantity over the last ``n`` samples."""

    def __init__(self, n: int = 100):
        self._v: deque[float] = deque(maxlen=n)

    def add(self, v: float) -> None:
        self._v.append(float(v))

    def summary(self, prefix: str) -> dict:
        if not self._v:
            return {}
        return {f"{prefix}_last": self._v[-1], f"{prefix}_mean": sum(self._v) / len(self._v),
                f"{prefix}_max": max(self._v)}


STAGES = ("receive", "deserialize", "convert_resize", "queue", "convert_resize_late", "wait", "inference", "geometry", "scale",
          "odometry_tracking")


def stage_key(name: str) -> str:
    """Diagnostics key of a stage: "inference" → "stage_inference_ms"; "convert:dpm/motion_mask" →
    "stage_motion_mask_convert_ms", "publish:dpm/objects/markers" → "stage_markers_publish_ms", "publish:tf" →
    "stage_tf_publish_ms"."""
    if ":" not in name:
        return f"stage_{name}_ms"
    what, topic = name.split(":", 1)
    short = "markers" if topic.endswith("/markers") else topic.rsplit("/", 1)[-1]
    return f"stage_{short}_{what}_ms"


def stage_order(name: str) -> tuple:
    """Pipeline order: input stages, then per-output convert/publish, then "total"."""
    if name in STAGES:
        return (0, STAGES.index(name), "")
    return (2, 0, "") if name == "total" else (1, 0, name.split(":", 1)[-1] + name.split(":", 1)[0])


class NodeHealth:
    """Everything the node reports; thread-safe (callbacks and the worker both write)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.input_rate = RateMeter()
        self.output_rate = RateMeter()
        self.inference_ms = Stats()
        self.latency_ms = Stats()      # arrival of I1 → outputs published (wall clock)
        self.queue_ms = Stats()        # arrival of I1 → worker starts the pair
        self.publish_ms = Stats()      # building and publishing the messages of a pair
        self.stages: dict[str, Stats] = {}   # per-stage latency (ms), see stage_key
        self.outputs_skipped = 0             # per-pair messages not built: nobody subscribed (lazy outputs)
        self.frames_deferred = 0             # input frames whose downscale was left to the worker (it was behind)
        self.errors: Counter[str] = Counter()
        self.last_error = ""
        self._errors_reported = 0
        self._dropped_reported = 0
        self._out_reported = 0
        self.started = time.monotonic()
        self.last_frame: float | None = None
        self.last_output: float | None = None

    def error(self, kind: str, text: str) -> None:
        with self._lock:
            self.errors[kind] += 1
            self.last_error = f"{kind}: {text}"

    def frame_in(self, now: float | None = None) -> None:
        with self._lock:
            self.input_rate.tick(now)
            self.last_frame = time.monotonic() if now is None else now

    def frame_arrived(self, stages: dict, deferred: bool = False, now: float | None = None) -> None:
        """One usable input frame (one lock for all): counted in the input rate, its stage latencies (ms) added,
        and whether its downscale was deferred to the worker."""
        with self._lock:
            self.input_rate.tick(now)
            self.last_frame = time.monotonic() if now is None else now
            for name, ms in stages.items():
                self.stages.setdefault(name, Stats()).add(ms)
            self.frames_deferred += int(deferred)

    def pair_done(self, inference_ms: float, latency_ms: float, queue_ms: float = 0.0,
                  publish_ms: float = 0.0) -> None:
        """One pair published: pipeline time, arrival of I1 → published, arrival → worker start, publishing."""
        with self._lock:
            self.output_rate.tick()
            self.last_output = time.monotonic()
            self.inference_ms.add(inference_ms)
            self.latency_ms.add(latency_ms)
            self.queue_ms.add(queue_ms)
            self.publish_ms.add(publish_ms)

    def stage(self, name: str, ms: float) -> None:
        """One sample of a stage's latency (ms)."""
        with self._lock:
            self.stages.setdefault(name, Stats()).add(ms)

    def pair_stages(self, stages: dict, skipped: int = 0) -> None:
        """A pair's stage latencies (ms; keys as PairProcessor.process's ``stages`` plus "queue", "total") and how
        many per-pair outputs it skipped for lack of subscribers."""
        with self._lock:
            for name, ms in stages.items():
                self.stages.setdefault(name, Stats()).add(ms)
            self.outputs_skipped += int(skipped)

    def report(self, counters: dict, dropped_pairs: int, max_drop_fraction: float = 1.0,
               max_latency_s: float = float("inf"), no_pair_timeout_s: float = float("inf"),
               now: float | None = None) -> tuple[str, str, dict]:
        """(level, message, values). ERROR: images arrive (one within ``no_pair_timeout_s``) but no pair was
        published for ``no_pair_timeout_s`` seconds. WARN: bad inputs since the last report; more than
        ``max_drop_fraction`` of the pairs made since the last report dropped; mean latency of recent pairs above
        ``max_latency_s``; waiting for a first pair."""
        now = time.monotonic() if now is None else now
        with self._lock:
            total_err = sum(self.errors.values())
            values = {"input_rate_hz": self.input_rate.rate(now), "output_rate_hz": self.output_rate.rate(now),
                      "frames_in": self.input_rate.total, "pairs_out": self.output_rate.total,
                      "pairs_dropped": dropped_pairs, "errors_total": total_err}
            values.update(self.inference_ms.summary("inference_ms"))
            values.update(self.latency_ms.summary("latency_ms"))
            values.update(self.queue_ms.summary("queue_ms"))
            values.update(self.publish_ms.summary("publish_ms"))
            values.update({f"errors_{k}": v for k, v in sorted(self.errors.items())})
            values["outputs_skipped"] = self.outputs_skipped
            values["frames_deferred"] = self.frames_deferred
            for name in sorted(self.stages, key=stage_order):
                st = self.stages[name].summary("x")
                if st:
                    key = stage_key(name)
                    values[f"{key}_mean"], values[f"{key}_max"] = st["x_mean"], st["x_max"]
            values.update(counters)
            new_errors = total_err - self._errors_reported
            self._errors_reported = total_err
            dropped = max(0, dropped_pairs - self._dropped_reported)
            published = self.output_rate.total - self._out_reported
            self._dropped_reported, self._out_reported = dropped_pairs, self.output_rate.total
            drop_fraction = dropped / (dropped + published) if dropped + published else 0.0
            values["drop_fraction_recent"] = float(drop_fraction)
            latency = values.get("latency_ms_mean", 0.0) / 1000.0
            since_pair = now - (self.last_output if self.last_output is not None else self.started)
            images_arrive = self.last_frame is not None and now - self.last_frame <= no_pair_timeout_s
            if images_arrive and since_pair > no_pair_timeout_s:
                return "error", (f"images arrive but no pair was published for {since_pair:.1f} s (> "
                                 f"diag_no_pair_timeout {no_pair_timeout_s:g} s); see the pairing_* and errors_* "
                                 "values"), values
            if new_errors:
                return "warn", f"{new_errors} bad input(s) skipped; last {self.last_error}", values
            if drop_fraction > max_drop_fraction:
                return "warn", (f"{dropped} of {dropped + published} pairs dropped since the last report "
                                f"({100 * drop_fraction:.0f} % > diag_max_drop_fraction {max_drop_fraction:g}): "
                                "inference is slower than the camera"), values
            if latency > max_latency_s:
                return "warn", (f"mean latency {latency:.3f} s > diag_max_latency {max_latency_s:g} s"), values
            if self.input_rate.total and not self.output_rate.total:
                return "warn", "waiting for a pair of frames", values
            return "ok", "running", values
