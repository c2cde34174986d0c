"""TensorRT engine cache: the key pins an engine to ONNX bytes, TensorRT version, GPU (name, capability, SM count,
memory), precision, shape and build recipe; metadata round-trips; writes are atomic; a stale or damaged entry is a
miss; the ONNX digest is remembered by file stamp. Plain functions, no GPU needed."""
from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from dpm_ros.engine import cache

SHA = hashlib.sha256(b"model").hexdigest()
SHAPES = {"img1": (1, 3, 384, 512), "img2": (1, 3, 384, 512)}


def key(**changes):
    fields = dict(onnx_sha256=SHA, tensorrt_version="10.13.0.35", gpu_name="NVIDIA Jetson AGX Orin",
                  compute_capability=(8, 7), precision="fp16", input_shapes=SHAPES, recipe_version=2, sm_count=16,
                  total_memory_mb=62841)
    fields.update(changes)
    return cache.engine_cache_key(**fields)


def test_file_sha256_matches_hashlib_across_chunks_and_covers_external_data(tmp_path):
    data = os.urandom(3 * 1024 + 17)
    (tmp_path / "m.onnx").write_bytes(data)
    assert cache.file_sha256(tmp_path / "m.onnx", chunk_bytes=1024) == hashlib.sha256(data).hexdigest()
    (tmp_path / "m.onnx.data").write_bytes(b"weights v1")
    v1 = cache.file_sha256(tmp_path / "m.onnx", extra_files=(tmp_path / "m.onnx.data",))
    assert v1 == hashlib.sha256(data + b"weights v1").hexdigest()
    (tmp_path / "m.onnx.data").write_bytes(b"weights v2")   # same graph file, new weights: a new key
    assert cache.file_sha256(tmp_path / "m.onnx", extra_files=(tmp_path / "m.onnx.data",)) != v1


@pytest.mark.parametrize("field,value", [
    ("onnx_sha256", hashlib.sha256(b"other").hexdigest()), ("tensorrt_version", "10.14.1"),
    ("gpu_name", "NVIDIA H100 80GB HBM3"), ("compute_capability", (9, 0)), ("precision", "fp32"),
    ("input_shapes", {"img1": (1, 3, 224, 224), "img2": (1, 3, 224, 224)}),
    ("recipe_version", 3),                 # a fixed build recipe rebuilds old engines
    ("sm_count", 8), ("total_memory_mb", 7620),   # Orin NX 8 GB vs AGX Orin 64 GB: same name, same sm_87
])
def test_every_key_field_changes_the_digest_and_is_reported_as_mismatch(tmp_path, field, value):
    base, other = key(), key(**{field: value})
    assert cache.key_digest(base) != cache.key_digest(other)
    assert len(cache.key_digest(base)) == 16
    meta = cache.write_metadata(tmp_path / "e.engine.json", base)
    assert cache.mismatched_fields(other, meta) == [field]
    assert cache.mismatched_fields(base, meta) == []


def test_digest_is_independent_of_dict_order():
    a = key(input_shapes={"img1": (1, 3, 8, 8), "img2": (1, 3, 8, 8)})
    b = key(input_shapes={"img2": (1, 3, 8, 8), "img1": (1, 3, 8, 8)})
    assert cache.key_digest(a) == cache.key_digest(b)


@pytest.mark.parametrize("bad", [dict(onnx_sha256="abc"), dict(precision="int8"), dict(compute_capability=(8,))])
def test_bad_key_fields_raise_value_error(bad):
    with pytest.raises(ValueError):
        key(**bad)


def test_cached_engine_hit_only_with_matching_metadata(tmp_path):
    onnx_path = tmp_path / "dpm_small.onnx"
    k = key()
    engine, meta = cache.engine_paths(tmp_path, onnx_path, k)
    assert engine.name == f"dpm_small.{cache.key_digest(k)}.engine" and meta.name == engine.name + ".json"
    assert cache.cached_engine(tmp_path, onnx_path, k) is None                 # nothing yet
    cache.atomic_write_bytes(engine, b"\x01" * 100)
    assert cache.cached_engine(tmp_path, onnx_path, k) is None                 # engine without metadata
    cache.write_metadata(meta, k, build_seconds=12.5)
    assert cache.cached_engine(tmp_path, onnx_path, k) == engine
    assert cache.read_metadata(meta)["build_seconds"] == 12.5
    # metadata of another TensorRT version under this name (e.g. copied from another robot): a miss
    cache.write_metadata(meta, key(tensorrt_version="10.3.0"))
    assert cache.cached_engine(tmp_path, onnx_path, k) is None
    # damaged metadata or an empty engine file: a miss, not a crash
    cache.write_metadata(meta, k)
    meta.write_text("{not json")
    assert cache.read_metadata(meta) is None and cache.cached_engine(tmp_path, onnx_path, k) is None
    cache.write_metadata(meta, k)
    engine.write_bytes(b"")
    assert cache.cached_engine(tmp_path, onnx_path, k) is None


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "x.engine"
    cache.atomic_write_bytes(target, b"old")

    class Boom:  # not bytes-like: f.write raises after the temporary file exists
        pass

    with pytest.raises(TypeError):
        cache.atomic_write_bytes(target, Boom())
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.engine"]  # temporary file cleaned up
    cache.atomic_write_bytes(target, memoryview(b"new bytes"))
    assert target.read_bytes() == b"new bytes"


def test_metadata_json_is_plain_and_readable(tmp_path):
    k = key()
    cache.write_metadata(tmp_path / "m.json", k, onnx_path="engines/dpm_small.onnx")
    raw = json.loads((tmp_path / "m.json").read_text())
    assert raw["key"]["compute_capability"] == [8, 7]
    assert raw["key"]["input_shapes"]["img1"] == [1, 3, 384, 512]
    assert raw["onnx_path"] == "engines/dpm_small.onnx" and raw["format"] == cache.CACHE_FORMAT


def test_timing_cache_path_depends_on_gpu_and_version_only(tmp_path):
    a = cache.timing_cache_path(tmp_path, "10.13", "Orin", (8, 7))
    assert a == cache.timing_cache_path(tmp_path, "10.13", "Orin", (8, 7))
    assert a != cache.timing_cache_path(tmp_path, "10.14", "Orin", (8, 7))
    assert a != cache.timing_cache_path(tmp_path, "10.13", "H100", (9, 0))
    assert a.suffix == ".timing"


def test_default_cache_dir_beside_onnx_unless_read_only_or_overridden(tmp_path, monkeypatch):
    monkeypatch.delenv("DPM_ENGINE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    writable = tmp_path / "engines"
    writable.mkdir()
    assert cache.default_cache_dir(writable / "m.onnx") == writable.resolve()
    with monkeypatch.context() as m:  # an installed share/ folder the node's user cannot write (tests run as root)
        m.setattr(cache.os, "access", lambda path, mode: False)
        assert cache.default_cache_dir(writable / "m.onnx") == tmp_path / "xdg" / "dpm_ros" / "engines"
    monkeypatch.setenv("DPM_ENGINE_CACHE", str(tmp_path / "custom"))
    assert cache.default_cache_dir(writable / "m.onnx") == tmp_path / "custom"


def test_metadata_of_the_previous_cache_format_is_a_miss(tmp_path):
    meta = cache.write_metadata(tmp_path / "e.engine.json", key())
    assert cache.mismatched_fields(key(), {**meta, "format": 1}) == ["format"]


def test_remembered_sha256_rehashes_only_when_a_file_changes(tmp_path, monkeypatch):
    model, weights, memo = tmp_path / "m.onnx", tmp_path / "m.onnx.data", tmp_path / "cache"
    model.write_bytes(b"graph")
    weights.write_bytes(b"weights v1")
    calls = []
    real = cache.file_sha256
    monkeypatch.setattr(cache, "file_sha256", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = cache.remembered_sha256(model, (weights,), memo)
    assert first == hashlib.sha256(b"graphweights v1").hexdigest() and len(calls) == 1
    assert cache.remembered_sha256(model, (weights,), memo) == first and len(calls) == 1   # remembered
    weights.write_bytes(b"weights v2!")                                                    # new weights
    assert cache.remembered_sha256(model, (weights,), memo) == hashlib.sha256(b"graphweights v2!").hexdigest()
    assert len(calls) == 2
    (memo / "m.sha256.json").write_text("{broken")                                         # damaged memo: rehash
    assert cache.remembered_sha256(model, (weights,), memo) == hashlib.sha256(b"graphweights v2!").hexdigest()
    assert cache.remembered_sha256(model, (weights,), None) and len(calls) == 4            # no memo dir: always


def test_get_or_build_builds_once_when_two_workers_miss_together(tmp_path):
    """``dpm batch`` workers sharing a cache folder rely on this lock alone (no second lock around open_engine):
    of two callers that miss the same engine at once one builds, the other waits and uses its engine. flock locks
    belong to the open file, so two threads contend like two processes."""
    import threading

    key = cache.engine_cache_key("0" * 64, "10.13", "GPU", (8, 7), "fp16", {"img1": (1, 3, 8, 8)})
    builds, gate, results = [], threading.Barrier(2), []

    def build() -> bytes:
        builds.append(1)
        time.sleep(0.3)   # the other caller has passed its first cache check by now
        return b"\x07" * 64

    def worker():
        gate.wait()
        results.append(cache.get_or_build(tmp_path, "m.onnx", key, build))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert sorted(built for _, _, built in results) == [False, True]
    assert results[0][0] == results[1][0] and results[0][0].read_bytes() == b"\x07" * 64
