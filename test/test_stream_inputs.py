"""stream.inputs (no ROS): the one input half of the node and `dpm replay` — errors counted by kind, stamps going
backwards and size changes restart pairing and are told, deferred frames keep their pixels, notices throttled per
kind (the node) or told once per run (replay)."""
from __future__ import annotations

import numpy as np

from dpm_ros.stream.inputs import FrameInput, ImageFormatError, Notices, Reading
from dpm_ros.stream.pairing import FrameRing


def _reading(stamp: float, h: int = 4, w: int = 6) -> Reading:
    return Reading(stamp, "cam", None, np.zeros((h, w, 3), np.uint8), "rgb8")


def _bad(kind: str):
    def read():
        raise ImageFormatError(kind, f"a {kind} problem")
    return read


def test_notices_throttle_per_kind_or_tell_once():
    told, now = [], [0.0]
    throttled = Notices(lambda level, text: told.append(text), period=5.0, clock=lambda: now[0])
    assert throttled("warn", "a", "a1") and not throttled("warn", "a", "a2") and throttled("warn", "b", "b1")
    now[0] = 4.9
    assert not throttled("warn", "a", "a3")
    now[0] = 5.0
    assert throttled("warn", "a", "a4") and throttled("info", "a", "i1") and throttled("info", "a", "i2")
    assert not throttled("warn", "a", "a5") and throttled("warn", "a", "a6", period=0.0)
    assert told == ["a1", "b1", "a4", "i1", "i2", "a6"]
    once = Notices(lambda level, text: told.append(text), period=None, clock=lambda: now[0])
    now[0] = 1e9
    assert once("warn", "x", "x1") and not once("warn", "x", "x2")
    now[0] = 2e9
    assert not once("error", "x", "x3")


def test_frame_input_counts_by_kind_restarts_pairing_and_defers():
    told, errors = [], []
    prepared = []

    def prepare(px, enc):
        prepared.append(px.shape)
        return px[::2, ::2].copy(), px[:1, :1].copy()

    inputs = FrameInput(FrameRing(0.1, 0.15, 8), prepare, Notices(lambda level, text: told.append(text)),
                        on_error=lambda kind, text: errors.append(kind))
    assert inputs.add(lambda: _reading(1.0)).pair is None
    got = inputs.add(lambda: _reading(1.1))
    assert got.pair.older.stamp == 1.0 and got.frame.image.shape == (2, 3, 3) and got.frame.frame_id == "cam"
    for kind in ("size", "encoding", "size", "decode"):
        assert inputs.add(_bad(kind)) is None
    assert inputs.errors == {"size": 2, "encoding": 1, "decode": 1} and errors == ["size", "encoding", "size", "decode"]
    assert inputs.add(lambda: _reading(1.05)).pair is None                      # back in time: ring restarted
    assert inputs.add(lambda: _reading(1.15, 8, 12)).pair is None               # another size: restarted
    late = inputs.add(lambda: _reading(1.25, 8, 12), defer=True)
    assert late.pair is not None and late.frame.image is None and late.frame.source[1] == "rgb8"
    assert late.prepare_ms == 0.0 and len(prepared) == 4                         # the deferred one not prepared
    c = inputs.pairing()
    assert (c["stamp_jumps_back"], c["resolution_changes"], c["pairs_made"], c["frames_in"]) == (1, 1, 2, 5)
    assert sum("went backwards" in t for t in told) == 1 and sum("size changed to 12×8" in t for t in told) == 1
    assert sum(t.startswith("skipped input image: a size problem") for t in told) == 1   # throttled per kind
