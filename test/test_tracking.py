"""Object ids are stable across pairs while the object is re-found, new for new objects, never 0."""
import numpy as np
import pytest

from dpm_ros.stream.tracking import Detection, ObjectTracker


def det(c, v=(0, 0, 0), e=(0.5, 0.5, 0.5)):
    return Detection(np.array(c, float), np.array(v, float), np.array(e, float))


def test_two_crossing_objects_keep_their_ids_with_velocity_prediction():
    tr = ObjectTracker(gate_abs=0.2, gate_rel=0.0)
    # A moves +x at 2 m/s, B moves -x at 2 m/s; they pass within 0.2 m of each other's old place
    ids0 = tr.update(0.0, [det([0, 0, 5], [2, 0, 0]), det([1, 0, 5], [-2, 0, 0])])
    assert ids0 == [1, 2]
    ids = ids0
    for k in range(1, 6):
        t = 0.1 * k
        # listed in swapped order to make sure matching is by geometry, not by position in the list
        ids = tr.update(t, [det([1 - 2 * t, 0, 5], [-2, 0, 0]), det([2 * t, 0, 5], [2, 0, 0])])
        assert ids == [2, 1], (t, ids)


def test_new_object_gets_new_id_and_lost_track_expires():
    tr = ObjectTracker(gate_abs=0.3, gate_rel=0.0, max_age=0.5)
    assert tr.update(0.0, [det([0, 0, 4])]) == [1]
    assert tr.update(0.1, [det([0.05, 0, 4]), det([3, 0, 4])]) == [1, 2]
    assert tr.update(1.0, [det([0.05, 0, 4])]) == [3]   # 0.9 s unseen > max_age: old ids are not reused


def test_gate_scales_with_extent():
    tr = ObjectTracker(gate_abs=0.1, gate_rel=0.5)
    tr.update(0.0, [det([0, 0, 4], e=(2, 2, 2))])          # diagonal 3.46 -> gate 1.73
    assert tr.update(0.1, [det([1.5, 0, 4], e=(2, 2, 2))]) == [1]
    assert tr.update(0.2, [det([4.0, 0, 4], e=(0.1, 0.1, 0.1))]) == [2]


def test_stamp_going_backwards_resets():
    tr = ObjectTracker()
    tr.update(5.0, [det([0, 0, 4])])
    assert tr.update(1.0, [det([0, 0, 4])]) == [2]


def test_bad_parameters_raise():
    with pytest.raises(ValueError):
        ObjectTracker(gate_abs=-1)
