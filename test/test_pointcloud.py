"""PointCloud2 layout of /dpm/points: offsets, packing, organized shape, stride, NaN for invalid points."""
import numpy as np
import pytest

from dpm_ros.pointcloud import (FIELDS, FLOAT32, POINT_DTYPE, POINT_STEP, UINT16, build_cloud, cloud_bytes,
                                cloud_from_bytes, cloud_layout, pack_rgb, unpack_rgb)


def test_field_offsets_and_types():
    assert [(f.name, f.offset, f.datatype) for f in FIELDS] == [
        ("x", 0, FLOAT32), ("y", 4, FLOAT32), ("z", 8, FLOAT32), ("rgb", 12, FLOAT32), ("confidence", 16, FLOAT32),
        ("label", 20, UINT16), ("vx", 24, FLOAT32), ("vy", 28, FLOAT32), ("vz", 32, FLOAT32)]
    assert POINT_STEP == 36 == POINT_DTYPE.itemsize


def test_rgb_packs_as_0x00RRGGBB_and_round_trips():
    c = np.array([[[255, 0, 0], [1, 2, 3]]], np.uint8)
    packed = pack_rgb(c)
    assert packed.view(np.uint32).tolist() == [[0xFF0000, 0x010203]]
    assert np.array_equal(unpack_rgb(packed), c)


def make_inputs(h=6, w=8, seed=0):
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(h, w, 3)).astype(np.float32)
    pts[..., 2] = np.abs(pts[..., 2]) + 1
    col = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    conf = rng.uniform(1, 5, (h, w)).astype(np.float32)
    lab = rng.integers(0, 3, (h, w)).astype(np.uint16)
    vel = rng.normal(size=(h, w, 3)).astype(np.float32)
    valid = np.ones((h, w), bool)
    valid[0, 0] = False
    pts[1, 1, 2] = np.inf
    return pts, col, conf, lab, vel, valid


def test_organized_cloud_bytes_round_trip_with_invalid_as_nan():
    pts, col, conf, lab, vel, valid = make_inputs()
    cloud = build_cloud(pts, col, conf, lab, vel, valid)
    lay = cloud_layout(cloud)
    assert (lay["height"], lay["width"], lay["row_step"], lay["is_dense"]) == (6, 8, 8 * 36, False)
    back = cloud_from_bytes(cloud_bytes(cloud), 6, 8)
    assert np.isnan(back["x"][0, 0]) and np.isnan(back["z"][1, 1]) and np.isnan(back["vx"][0, 0])
    assert back["label"][0, 0] == 0
    ok = valid.copy()
    ok[1, 1] = False
    assert np.array_equal(back["x"][ok], pts[..., 0][ok])
    assert np.array_equal(back["vz"][ok], vel[..., 2][ok])
    assert np.array_equal(back["label"][ok], lab[ok])
    assert np.array_equal(unpack_rgb(back["rgb"]), col)
    # byte-level check of one point: label at offset 20 as little-endian uint16
    raw = cloud_bytes(cloud)
    k = 2 * 8 + 3
    assert int.from_bytes(raw[k * 36 + 20:k * 36 + 22], "little") == lab[2, 3]
    assert np.frombuffer(raw[k * 36 + 16:k * 36 + 20], "<f4")[0] == conf[2, 3]


def test_stride_keeps_every_nth_pixel():
    pts, col, conf, lab, vel, valid = make_inputs(7, 9)
    cloud = build_cloud(pts, col, conf, lab, vel, stride=2)
    assert cloud.shape == (4, 5)
    assert cloud["y"][3, 4] == pts[6, 8, 1]


def test_organized_cloud_is_never_declared_dense():
    pts = np.ones((2, 3, 3), np.float32)
    assert cloud_layout(build_cloud(pts))["is_dense"] is False


@pytest.mark.parametrize("kw", [dict(colors=np.zeros((5, 5, 3), np.uint8)), dict(confidence=np.zeros((1, 1))),
                                dict(stride=0), dict(labels=-np.ones((6, 8), np.int32))])
def test_bad_inputs_raise(kw):
    pts = np.ones((6, 8, 3), np.float32)
    with pytest.raises(ValueError):
        build_cloud(pts, **kw)
