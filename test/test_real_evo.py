"""Trajectory metrics against the ``evo`` tool's own reference numbers on TUM RGB-D fr1/xyz
(../shared/data/evo_testdata; evo 1.38.1): ``evo_ape tum gt est -a`` → APE RMSE 0.013470 m; ``evo_rpe --delta 1
--delta_unit f`` → 0.005764 m and 0.3536° (RMSE)."""
import numpy as np
import pytest

from dpm_ros.geometry.metrics import ape, ape_rmse, associate, read_tum, rpe_trajectory


@pytest.fixture(scope="module")
def fr1_xyz(shared_data):
    root = shared_data / "evo_testdata"
    t_ref, ref = read_tum(root / "freiburg1_xyz-groundtruth.txt")
    t_est, est = read_tum(root / "freiburg1_xyz-rgbdslam.txt")
    i, j = associate(t_ref, t_est, max_diff=0.01)
    assert len(i) == len(j) and 700 < len(i) <= len(t_est)
    assert np.abs(t_ref[i] - t_est[j]).max() <= 0.01
    return ref[i], est[j]


def test_ape_with_alignment_matches_evo(fr1_xyz):
    ref, est = fr1_xyz
    assert ape_rmse(ref, est, align=True) == pytest.approx(0.013470, abs=1e-4)
    unaligned = ape(ref, est)["rmse"]
    assert unaligned > 0.013470 + 1e-3                                # alignment is what brings it down


def test_rpe_one_frame_matches_evo(fr1_xyz):
    ref, est = fr1_xyz
    r = rpe_trajectory(ref, est, delta=1)
    assert r["trans"]["rmse"] == pytest.approx(0.005764, abs=1e-4)
    assert r["rot_deg"]["rmse"] == pytest.approx(0.3536, abs=1e-4)


def test_associate_matches_evo_rules():
    a = np.array([0.0, 1.0, 2.0, 3.0])
    b = np.array([0.004, 1.02, 1.995, 2.006, 9.0])
    i, j = associate(a, b, max_diff=0.01)                             # shorter list drives; nearest within 10 ms
    assert i.tolist() == [0, 2] and j.tolist() == [0, 2]
    with pytest.raises(ValueError, match="no timestamps match"):
        associate(a, b + 100.0)


def test_bad_trajectories_raise(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("# header\n1.0 2.0 3.0\n")
    with pytest.raises(ValueError, match="TUM"):
        read_tum(bad)
    with pytest.raises(ValueError, match="associate them first"):
        ape(np.tile(np.eye(4), (3, 1, 1)), np.tile(np.eye(4), (4, 1, 1)))
    with pytest.raises(ValueError, match="delta"):
        rpe_trajectory(np.tile(np.eye(4), (3, 1, 1)), np.tile(np.eye(4), (3, 1, 1)), delta=3)
