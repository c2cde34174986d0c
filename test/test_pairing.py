"""Pairing contract: I1 = newest, I2 = buffered frame closest to t1 − pair_interval within max_pair_gap; stamps going
backwards clear the buffer; the worker slot is latest-wins and counts what it drops."""
import threading
import time

import numpy as np
import pytest

from dpm_ros.stream.pairing import FrameRing, LatestSlot, StampedFrame

IMG = np.zeros((2, 2, 3), np.uint8)


def frame(t):
    return StampedFrame(stamp=t, image=IMG)


def test_i2_is_closest_to_t1_minus_pair_interval_at_30hz():
    ring = FrameRing(pair_interval=0.2, max_pair_gap=0.5)
    pairs = [ring.push(frame(k / 30.0)) for k in range(30)]
    assert pairs[0] is None and ring.counters.no_partner == 1
    # frame 20 (t = 0.6667): target 0.4667 -> frame 14 (0.4667)
    p = pairs[20]
    assert p.newest.stamp == pytest.approx(20 / 30) and p.older.stamp == pytest.approx(14 / 30)
    assert p.dt == pytest.approx(-0.2)
    # frame 3 (t = 0.1): only frames 0..2 exist; closest to -0.1 is frame 0
    assert pairs[3].older.stamp == 0.0
    assert ring.counters.pairs_made == 29


def test_partner_beyond_max_pair_gap_is_not_used():
    ring = FrameRing(pair_interval=0.2, max_pair_gap=0.5)
    ring.push(frame(0.0))
    assert ring.push(frame(0.8)) is None          # 0.8 s gap > 0.5 s
    assert ring.counters.no_partner == 2
    p = ring.push(frame(1.0))
    assert p.older.stamp == 0.8


def test_stamp_going_backwards_clears_buffer_and_is_counted():
    ring = FrameRing(pair_interval=0.1, max_pair_gap=0.5)
    for t in (10.0, 10.1, 10.2):
        ring.push(frame(t))
    assert ring.push(frame(3.0)) is None            # bag loop: nothing older than 3.0 survives
    assert ring.counters.stamp_jumps_back == 1 and len(ring) == 1
    assert ring.push(frame(3.1)).older.stamp == 3.0
    assert ring.push(frame(3.1)) is None and ring.counters.duplicates == 1


def test_capacity_bounds_memory():
    ring = FrameRing(pair_interval=0.2, max_pair_gap=10.0, capacity=5)
    for k in range(100):
        ring.push(frame(k * 0.01))
    assert len(ring) == 5


@pytest.mark.parametrize("kwargs", [dict(pair_interval=0.0), dict(pair_interval=0.3, max_pair_gap=0.2),
                                    dict(capacity=1)])
def test_bad_configuration_raises(kwargs):
    with pytest.raises(ValueError):
        FrameRing(**kwargs)


def test_non_finite_stamp_raises():
    with pytest.raises(ValueError, match="finite"):
        FrameRing().push(frame(float("nan")))


def test_latest_slot_replaces_untaken_item_and_counts_it():
    slot = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True
    assert slot.replaced == 2
    assert slot.take(timeout=0.1) == 3
    assert slot.take(timeout=0.05) is None


def test_latest_slot_wakes_worker_and_close_stops_it():
    slot = LatestSlot()
    got = []

    def worker():
        while True:
            item = slot.take()
            if item is None:
                return
            got.append(item)

    th = threading.Thread(target=worker)
    th.start()
    slot.put("a")
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    slot.close()
    th.join(timeout=5)
    assert got == ["a"] and not th.is_alive()
