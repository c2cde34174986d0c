"""Which frames to pair, and what to drop when inference is slower than the camera (no ROS inside).

``FrameRing`` keeps recent frames; each new frame becomes I1 (the newest, t1 = now) and is paired with the buffered
frame I2 whose stamp is closest to ``t1 − pair_interval``, provided ``0 < t1 − t2 ≤ max_pair_gap``.
Stamps going backwards or a change of image size restart the buffer (counted; frames of two sizes never pair).
``LatestSlot`` hands pairs to one worker thread: a newer pair replaces one the worker has not taken yet (latest wins),
so callbacks never block and latency stays bounded; every replaced pair is counted.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, Optional, TypeVar

import numpy as np


@dataclass
class StampedFrame:
    """One camera frame. ``stamp`` in seconds (header stamp); ``image`` uint8 (H, W, 3) RGB; ``K`` 3×3 or None;
    ``stamp_ns`` the header stamp in integer nanoseconds (exact; the outputs are stamped with it)."""
    stamp: float
    image: np.ndarray
    K: Optional[np.ndarray] = None
    stamp_ns: Optional[int] = None
    received: float = 0.0  # wall time of arrival (seconds, time.monotonic), for end-to-end latency
    size: Optional[tuple] = None         # camera (H, W) when ``image`` was downscaled on arrival; None: image's own
    colours: Optional[np.ndarray] = None  # uint8 (h, w, 3) RGB cloud colours at the engine's output grid, or None
    source: Any = None   # (pixels view, encoding) of a frame whose downscale was deferred (``image`` None until then)
    frame_id: str = ""   # the camera's optical frame (the header's frame_id)

    @property
    def hw(self) -> tuple:
        """(H, W) of the camera image, pixels (frames of two sizes never pair)."""
        return tuple(self.size) if self.size is not None else tuple(np.shape(self.image)[:2])


@dataclass
class FramePair:
    """I1 = ``newest`` (t1), I2 = ``older`` (t2 < t1)."""
    newest: StampedFrame
    older: StampedFrame

    @property
    def dt(self) -> float:
        """t2 − t1 in seconds (negative: I2 is older)."""
        return self.older.stamp - self.newest.stamp


@dataclass
class PairingCounters:
    frames_in: int = 0
    pairs_made: int = 0
    no_partner: int = 0       # frame had no buffered frame within (0, max_pair_gap]
    duplicates: int = 0       # stamp equal to the newest buffered one: ignored
    stamp_jumps_back: int = 0  # stamp went backwards (bag loop, clock reset): buffer cleared
    resolution_changes: int = 0  # image size differs from the buffered frames': buffer cleared (never paired)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class FrameRing:
    """Ring buffer of recent frames that makes (I1, I2) pairs.

    pair_interval: wanted t1 − t2 in seconds (> 0). max_pair_gap: largest accepted t1 − t2 in seconds
    (≥ pair_interval). capacity: most frames kept (oldest go first)."""

    def __init__(self, pair_interval: float = 0.2, max_pair_gap: float = 0.5, capacity: int = 64):
        if not pair_interval > 0:
            raise ValueError(f"pair_interval must be > 0 seconds, got {pair_interval}")
        if not max_pair_gap >= pair_interval:
            raise ValueError(f"max_pair_gap ({max_pair_gap} s) must be ≥ pair_interval ({pair_interval} s)")
        if capacity < 2:
            raise ValueError(f"capacity must be ≥ 2 frames, got {capacity}")
        self.pair_interval = float(pair_interval)
        self.max_pair_gap = float(max_pair_gap)
        self._frames: deque[StampedFrame] = deque(maxlen=int(capacity))
        self.counters = PairingCounters()

    def __len__(self) -> int:
        return len(self._frames)

    def clear(self) -> None:
        self._frames.clear()

    def push(self, frame: StampedFrame) -> Optional[FramePair]:
        """Add ``frame`` as the newest; return the pair (frame, best older frame) or None when there is none."""
        if not np.isfinite(frame.stamp):
            raise ValueError(f"frame stamp must be a finite number of seconds, got {frame.stamp}")
        c = self.counters
        c.frames_in += 1
        if self._frames:
            last = self._frames[-1].stamp
            if frame.stamp == last:
                c.duplicates += 1
                return None
            if frame.stamp < last:
                c.stamp_jumps_back += 1
                self._frames.clear()
            elif self._frames[-1].hw != frame.hw:
                c.resolution_changes += 1
                self._frames.clear()
        t1 = frame.stamp
        while self._frames and t1 - self._frames[0].stamp > self.max_pair_gap:
            self._frames.popleft()
        partner = None
        if self._frames:
            target = t1 - self.pair_interval
            stamps = np.fromiter((f.stamp for f in self._frames), dtype=np.float64, count=len(self._frames))
            partner = self._frames[int(np.argmin(np.abs(stamps - target)))]
        self._frames.append(frame)
        if partner is None:
            c.no_partner += 1
            return None
        c.pairs_made += 1
        return FramePair(newest=frame, older=partner)


T = TypeVar("T")


@dataclass
class LatestSlot(Generic[T]):
    """A one-item hand-over between producer callbacks and one worker: ``put`` never blocks and replaces an item
    not yet taken (counted in ``replaced``); ``take`` blocks until an item arrives or the slot is closed."""
    replaced: int = 0
    _item: Optional[T] = None
    _closed: bool = False
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def put(self, item: T) -> bool:
        """Store ``item``; True when it replaced one the worker had not taken (a dropped pair)."""
        with self._cond:
            dropped = self._item is not None
            if dropped:
                self.replaced += 1
            self._item = item
            self._cond.notify()
            return dropped

    def take(self, timeout: Optional[float] = None) -> Optional[T]:
        """The newest item (removing it), or None on timeout or when closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout=timeout)
            item, self._item = self._item, None
            return item

    @property
    def pending(self) -> bool:
        """True while an item waits that the worker has not taken (it is behind: the next put drops one)."""
        return self._item is not None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
