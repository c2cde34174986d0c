"""ONNX Runtime session options (issue 14): the CPU engine's pool threads do not busy-wait by default (a spinning pool
took the CPU the node's other work needs on 2 cores), the options change speed and never the numbers, and
``dpm bench ort`` reports wall and CPU time per pair for each configuration."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dpm_ros.benchmarks.ort_options import run_ort_benchmark
from dpm_ros.engine.onnxruntime_backend import OnnxRuntimeEngine, session_options

SHIPPED = Path(__file__).resolve().parents[1] / "engines" / "dpm_small.onnx"
SPIN_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


def test_session_options_threads_and_spinning():
    quiet = session_options(2, spinning=False)
    assert quiet.intra_op_num_threads == 2
    assert [quiet.get_session_config_entry(k) for k in SPIN_KEYS] == ["0", "0"]
    spin = session_options(None, spinning=True)
    assert spin.intra_op_num_threads == 0   # ONNX Runtime's own choice
    assert [spin.get_session_config_entry(k) for k in SPIN_KEYS] == ["1", "1"]


def test_the_engine_does_not_spin_unless_asked():
    """What the node and `dpm replay` load (load_engine → OnnxRuntimeEngine with defaults) has spinning off."""
    from dpm_ros.engine import load_engine

    used = load_engine(SHIPPED, backend="onnxruntime").session.get_session_options()
    assert [used.get_session_config_entry(k) for k in SPIN_KEYS] == ["0", "0"]
    assert used.intra_op_num_threads == 0   # thread count unchanged: ONNX Runtime's choice, as before
    asked = OnnxRuntimeEngine(SHIPPED, threads=1, spinning=True).session.get_session_options()
    assert asked.get_session_config_entry(SPIN_KEYS[0]) == "1" and asked.intra_op_num_threads == 1


def test_options_change_speed_not_outputs():
    """Bit-identical maps from ONNX Runtime's default session (2 threads here, spinning) and every option set."""
    from dpm_ros.synthetic import make_pair

    pair = make_pair(5, height=72, width=128, n_objects=2, renderer="numpy")
    ref = OnnxRuntimeEngine(SHIPPED, spinning=True).infer(pair["img1"], pair["img2"])
    assert len(ref) >= 8
    for threads, spinning in ((None, False), (1, False), (2, False), (1, True)):
        got = OnnxRuntimeEngine(SHIPPED, threads=threads, spinning=spinning).infer(pair["img1"], pair["img2"])
        assert sorted(got) == sorted(ref)
        for name in ref:
            assert np.array_equal(got[name], ref[name]), (threads, spinning, name)


def test_bench_ort_report():
    report = run_ort_benchmark(rate=100.0, repeats=4, warmup=1, configs=((None, True), (1, False)))
    json.dumps(report)
    assert report["benchmark"] == "ort" and report["network_input"] == "64x64" and report["rate_hz"] == 100.0
    assert report["environment"]["onnxruntime"]
    assert [(r["threads"], r["spinning"]) for r in report["results"]] == [(None, True), (1, False)]
    assert [r["intra_op_num_threads_option"] for r in report["results"]] == [0, 1]
    for r in report["results"]:
        assert r["outputs_identical"] is True
        assert 0 < r["wall_ms"]["p50"] <= r["wall_ms"]["p95"]
        assert 0 < r["cpu_ms_per_pair"]["p50"] <= r["cpu_ms_per_pair"]["p95"]
        assert r["cpu_share_pct"] == pytest.approx(r["cpu_ms_per_pair"]["mean"] * 100.0 / 10.0, abs=0.06)
    with pytest.raises(ValueError, match="repeats"):
        run_ort_benchmark(repeats=1)


def test_dpm_bench_ort_command_writes_json(tmp_path, capsys):
    from dpm_ros.cli import main

    out = tmp_path / "ort.json"
    assert main(["bench", "ort", "--repeats", "2", "--warmup", "1", "--rate", "200", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert len(report["results"]) == 5 and all(r["outputs_identical"] for r in report["results"])


def test_engine_threads_parameter_reaches_the_session():
    """dpm_node / dpm replay: ``engine_threads`` (default 1) → onnxruntime intra-op threads; 0 = its own choice."""
    from dpm_ros.config import BY_NAME, Config
    from dpm_ros.engine.select import open_engine

    default = BY_NAME["engine_threads"].default
    assert default == 1 and Config().engine_threads == 1
    one = open_engine("", "onnxruntime", default).session.get_session_options()
    assert one.intra_op_num_threads == 1 and one.get_session_config_entry(SPIN_KEYS[0]) == "0"
    assert open_engine("", "onnxruntime", 0).session.get_session_options().intra_op_num_threads == 0
