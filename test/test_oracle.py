"""OracleEngine: recognises frames of its sequence and returns their exact ground truth; rejects other images."""
from __future__ import annotations

import numpy as np
import pytest

from dpm_ros import ALL_POINT_MAP_NAMES
from dpm_ros.bag import read_images, write_sequence
from dpm_ros.engine.base import Engine
from dpm_ros.engine.oracle import OracleEngine
from dpm_ros.synthetic import SyntheticSequence


@pytest.fixture(scope="module")
def seq():
    return SyntheticSequence(seed=5, n_frames=5, fps=10.0, height=24, width=32, n_objects=3, renderer="numpy")


def test_oracle_returns_the_ground_truth_of_the_pair(seq):
    engine = OracleEngine(seq)
    assert isinstance(engine, Engine)
    out = engine.infer(seq.frame(4)["image"], seq.frame(1)["image"])
    gt = seq.pair(4, 1)
    for name in ALL_POINT_MAP_NAMES:
        np.testing.assert_array_equal(out[name], gt[name])
        assert out["conf_" + name].shape == (24, 32) and (out["conf_" + name][gt["valid" + name[1]]] == 1).all()
    np.testing.assert_array_equal(out["motion_prob_1"] > 0.5, gt["moving1"])
    # the cross-time maps really differ from the same-time ones where objects move
    assert gt["moving1"].any()
    assert np.abs(out["p1_t2_pi1"] - out["p1_t1_pi1"])[gt["moving1"]].max() > 1e-3
    info = engine.info()
    assert (info.backend, info.height, info.width, info.symmetric) == ("oracle", 24, 32, True)


def test_oracle_rejects_images_not_from_its_sequence(seq):
    engine = OracleEngine(seq)
    img = seq.frame(0)["image"].copy()
    img[0, 0, 0] ^= 1
    with pytest.raises(ValueError, match="not a frame of the synthetic sequence"):
        engine.infer(img, seq.frame(1)["image"])
    with pytest.raises(ValueError, match="uint8"):
        engine.infer(seq.frame(0)["image"].astype(np.float32), seq.frame(1)["image"])


def test_oracle_from_bag_matches_the_sequence(tmp_path, seq):
    path = write_sequence(seq, tmp_path / "o.mcap")
    engine = OracleEngine.from_bag(path)
    images = [img for _, img, _ in read_images(path)]
    out = engine.infer(images[2], images[0])
    gt = seq.pair(2, 0)
    for name in ALL_POINT_MAP_NAMES:
        np.testing.assert_allclose(out[name], gt[name], rtol=1e-4, atol=1e-5)
    single = OracleEngine.from_bag(path, symmetric=False).infer(images[2], images[0])
    assert "p2_t2_pi2" not in single and "p2_t2_pi1" in single
