"""The correspondence bound: on ground-truth maps it recovers the true cross-time maps (so its flow error is ~0 where
the static baseline's is not), and the pixel projection follows make_pair's pixel convention."""
from __future__ import annotations

import numpy as np
import pytest

from dpm_ros.training.data import DataConfig, generate_sample
from dpm_ros.training.diagnose import correspondence_bound, project_to_pixels
from dpm_ros.training.evaluate import oracle_from
from dpm_ros.training.loss import KIND_DYNAMIC


def test_projection_of_a_static_view_returns_each_pixel_itself():
    s = generate_sample(3, DataConfig(height=32, width=48), KIND_DYNAMIC, 1.0)
    row, col, ok = project_to_pixels(np.asarray(s["p1_t1_pi1"], np.float64), np.asarray(s["K"], np.float64))
    rr, cc = np.mgrid[0:32, 0:48]
    v = s["valid1"]
    assert ok[v].all()
    assert (row[v] == rr[v]).all() and (col[v] == cc[v]).all()


def test_bound_on_ground_truth_maps_beats_static_by_far():
    samples = [generate_sample(i, DataConfig(height=48, width=64), KIND_DYNAMIC, 2.0) for i in range(6)]
    res = correspondence_bound([oracle_from(s) for s in samples], samples)
    assert res["model"]["of_epe_fwd"] < 1e-9                          # the oracle itself
    static, bound = res["static"]["of_epe_fwd"], res["corr_bound"]["of_epe_fwd"]
    assert static > 1e-3
    assert bound < 0.4 * static, (bound, static)   # left: nearest-pixel rounding, occluded movers (static answer)
    assert res["corr_bound"]["mask_iou_learned"] == 1.0


def _oracle_predictor(triangulates: bool):
    """Ground truth of each pair (found by its img1) with view 1's depth scaled by a per-pair error that a
    monocular predictor keeps whatever img2 is, and a 'triangulating' one loses when img2 is the true image 2."""
    def predict(inputs):
        out = []
        for i, s in enumerate(inputs):
            truth = _PAIRS[i]
            p = oracle_from(truth)
            true_view2 = s["img2"] is truth["img2"]
            if not (triangulates and true_view2):
                p["p1_t1_pi1"] = p["p1_t1_pi1"] * np.float32(1.0 + 0.3 * ((i % 3) - 1))
            out.append(p)
        return out
    return predict


_PAIRS = [generate_sample(i, DataConfig(height=32, width=48), KIND_DYNAMIC, 1.0) for i in range(4)]


def test_parallax_gain_separates_a_triangulating_from_a_monocular_predictor():
    from dpm_ros.training.diagnose import parallax_gain
    mono = parallax_gain(_oracle_predictor(False), _PAIRS)
    tri = parallax_gain(_oracle_predictor(True), _PAIRS)
    assert mono["true_I2"]["p1_t1_pi1"] > 0.02                        # the monocular error is there ...
    assert abs(mono["gain"]["p1_t1_pi1"]) < 1e-9                      # ... and the second view does not change it
    assert tri["true_I2"]["p1_t1_pi1"] < 1e-6                         # true I2: exact
    assert tri["gain"]["p1_t1_pi1"] > 0.02                            # no parallax: the error comes back
    assert tri["I2=other"]["p1_t1_pi1"] > 0.02
    assert tri["gain"]["p1_t1_pi1"] == tri["I2=I1"]["p1_t1_pi1"] - tri["true_I2"]["p1_t1_pi1"]
    assert abs(mono["gain"]["p2_t2_pi1"]) < 1e-9 and set(tri) == {"true_I2", "I2=I1", "I2=other", "gain"}
    short = parallax_gain(_oracle_predictor(True), _PAIRS, ("true_I2", "I2=I1"))   # what `dpm curve eval` runs
    assert set(short) == {"true_I2", "I2=I1", "gain"} and short["gain"] == tri["gain"]
    with pytest.raises(ValueError, match="variants"):
        parallax_gain(_oracle_predictor(True), _PAIRS, ("true_I2", "I2=other"))
