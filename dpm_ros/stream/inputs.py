"""The input half of the node and of ``dpm replay`` (no ROS inside): one camera frame at a time is read, checked,
made ready for the engine and pushed into the pairing ring; unusable frames are counted by kind and told.

``FrameInput.add(read)``: ``read()`` (the caller's decoding of its message: ROS lives there) returns a ``Reading``
or raises ``ImageFormatError`` whose ``kind`` ("encoding", "size", "decode", ...) is counted in ``errors``. The
frame is then prepared (``prepare(pixels, encoding)`` → engine input, cloud colours) unless the caller defers it,
and pushed into the ``FrameRing``; a stamp going backwards or a change of image size restarts pairing (counted in
the ring's counters) and is told. ``Notices`` tells each kind of problem at most once per period (the node: every
5 s) or once per run (replay, ``period=None``).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from dpm_ros.stream.pairing import FramePair, FrameRing, StampedFrame


class ImageFormatError(ValueError):
    """An input image the node cannot use; ``kind`` ("encoding", "size", "decode", "depth_encoding", "depth_size")
    is what the node counts in /diagnostics (``errors_<kind>``) and ``dpm replay`` in ``skipped_images``."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Notices:
    """Tells each kind of problem at most once per ``period`` seconds (None: once per run) through ``sink(level,
    text)``; level "info" is always told. Thread-safe."""

    def __init__(self, sink: Callable[[str, str], None], period: Optional[float] = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self._sink, self.period, self._clock = sink, period, clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, level: str, kind: str, text: str, period: Optional[float] = None) -> bool:
        """Tell ``text`` unless ``kind`` was told within the period (``period`` overrides it); True when told."""
        if level != "info":
            wait = self.period if period is None else period
            now = self._clock()
            with self._lock:
                last = self._last.get(kind)
                if last is not None and (wait is None or now - last < wait):
                    return False
                self._last[kind] = now
        self._sink(level, text)
        return True


@dataclass
class Reading:
    """One decoded camera frame: ``stamp`` seconds (its header stamp), ``frame_id`` its optical frame, ``stamp_ns``
    the same stamp in integer nanoseconds (exact: the outputs' stamp), ``pixels`` a view (H, W, channels) uint8 in
    ``encoding``'s layout."""
    stamp: float
    frame_id: str
    stamp_ns: int
    pixels: np.ndarray
    encoding: str


@dataclass
class Arrival:
    """What ``FrameInput.add`` did with a good frame: the frame, the pair it made (or None), and ms spent reading
    (decoding) and preparing it (0 when deferred)."""
    frame: StampedFrame
    pair: Optional[FramePair]
    read_ms: float
    prepare_ms: float


class FrameInput:
    """The ring and the error counts of one camera input. ``prepare(pixels, encoding)`` → (engine input, cloud
    colours) (``image_convert.prepare_pixels`` at the engine's sizes); ``notices``: how problems are told;
    ``on_error(kind, text)``: also called for each unusable frame (the node's /diagnostics). ``errors``: unusable
    frames by kind. Thread-safe (callbacks of a multi-threaded executor)."""

    def __init__(self, ring: FrameRing, prepare: Callable[[np.ndarray, str], tuple], notices: Notices,
                 on_error: Optional[Callable[[str, str], None]] = None):
        self.ring, self._prepare, self.notices, self._on_error = ring, prepare, notices, on_error
        self.errors: dict[str, int] = {}
        self.last_error = ""
        self._lock = threading.Lock()

    def error(self, kind: str, text: str) -> None:
        """Count one unusable input image of ``kind`` (``text``: why) and tell it (throttled)."""
        with self._lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1
            self.last_error = f"{kind}: {text}"
        if self._on_error is not None:
            self._on_error(kind, text)
        self.notices("warn", kind, f"skipped input image: {text}")

    def add(self, read: Callable[[], Reading], defer: bool = False) -> Optional[Arrival]:
        """Read, prepare (unless ``defer``: the frame keeps its pixels in ``source`` for the worker) and pair one
        frame; None when it was unusable (counted, told)."""
        t0 = time.perf_counter()
        try:
            r = read()
            t1 = time.perf_counter()
            image, colours = (None, None) if defer else self._prepare(r.pixels, r.encoding)
        except ImageFormatError as exc:
            self.error(exc.kind, str(exc))
            return None
        t2 = time.perf_counter()
        size = tuple(r.pixels.shape[:2])
        frame = StampedFrame(r.stamp, image, None, r.stamp_ns, time.monotonic(), size, colours,
                             (r.pixels, r.encoding) if defer else None, r.frame_id)
        with self._lock:
            c = self.ring.counters
            jumps, resized = c.stamp_jumps_back, c.resolution_changes
            pair = self.ring.push(frame)
            jumped, changed = c.stamp_jumps_back != jumps, c.resolution_changes != resized
        if jumped:
            self.notices("warn", "stamp_back", "image stamp went backwards (bag loop or clock reset): pairing "
                         "restarted (counted in /diagnostics pairing_stamp_jumps_back)")
        if changed:
            self.notices("warn", "resolution", f"image size changed to {size[1]}×{size[0]}: pairing restarted "
                         "(counted in /diagnostics pairing_resolution_changes)")
        return Arrival(frame, pair, 1000.0 * (t1 - t0), 0.0 if defer else 1000.0 * (t2 - t1))

    def pairing(self) -> dict:
        """The ring's counters (frames_in, pairs_made, no_partner, duplicates, stamp_jumps_back,
        resolution_changes)."""
        with self._lock:
            return self.ring.counters.as_dict()
