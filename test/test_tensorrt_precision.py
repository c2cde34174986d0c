"""FP16/BF16 ONNX with FP32 islands for TensorRT's strongly typed networks (precision.py), checked without a GPU:
which nodes stay FP32 on the shipped model (by op pattern, so a re-export at another resolution still passes),
that attention stays in FP16 so TensorRT can fuse it, type consistency (strict ONNX shape inference), and the
numbers through ONNX Runtime's CPU kernels: the FP16 copy matches FP32, and the islands are what keeps the head's
``exp`` from overflowing (the same model converted without islands gives inf)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from dpm_ros.engine.export import export_onnx
from dpm_ros.engine.precision import (LINEAR_OPS, convert_precision, fp32_island_nodes, head_tail_nodes,
                                      norm_reduction_nodes, precision_summary)
from dpm_ros.model import build_model

SHIPPED = Path(__file__).resolve().parents[1] / "engines" / "dpm_small.onnx"


@pytest.fixture(scope="module")
def shipped():
    return onnx.load(str(SHIPPED))


@pytest.fixture(scope="module")
def shipped_fp16(shipped):
    return convert_precision(shipped, "fp16")


def _types(model) -> dict[str, int]:
    g = onnx.shape_inference.infer_shapes(model).graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    for n in g.node:
        if n.op_type == "Constant":
            types[n.output[0]] = next(a.t.data_type for a in n.attribute if a.name == "value")
    return types


def _session(model_or_path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # ORT notes that it cannot constant-fold FP16 Sqrt on the CPU
    blob = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])


def test_islands_on_the_shipped_model_are_the_head_tails_and_norm_reductions(shipped):
    g = shipped.graph
    islands = fp32_island_nodes(g)
    ops = {i: g.node[i].op_type for i in islands}
    producer = {o: i for i, n in enumerate(g.node) for o in n.output}
    # every output is produced inside an island, and every path back from it ends at a linear layer in the island
    for out in g.output:
        assert producer[out.name] in islands, out.name
    linear = {i for i in islands if ops[i] in LINEAR_OPS}
    assert 1 <= len(linear) <= len(g.output)
    for i in linear:  # the head projection reads the final decoder norm (FP16 up to there)
        assert all(producer.get(t) is None or producer[t] not in islands or g.node[producer[t]].op_type == "Constant"
                   for t in g.node[i].input)
    for op in ("Exp", "ReduceL2", "Sigmoid", "DepthToSpace"):  # the activations and the L2 norm of the points
        every = {i for i, n in enumerate(g.node) if n.op_type == op}
        assert every and every <= islands, op
    # attention is free to fuse: no Softmax, no LayerNormalization, no Q·Kᵀ / A·V MatMul in an island
    assert not {i for i in islands if ops[i] in ("Softmax", "LayerNormalization", "Erf")}
    matmuls = [i for i, n in enumerate(g.node) if n.op_type == "MatMul"]
    assert len(linear) < 0.1 * len(matmuls)
    assert len(islands) < 0.1 * len(g.node)


def test_fp16_copy_types_attention_in_fp16_and_outputs_in_fp32(shipped, shipped_fp16):
    types = _types(shipped_fp16)
    g = shipped_fp16.graph
    assert all(types[i.name] == TensorProto.FLOAT for i in g.input)
    assert all(types[o.name] == TensorProto.FLOAT for o in g.output)
    producer = {o: n for n in g.node for o in n.output}
    softmax = [n for n in g.node if n.op_type == "Softmax"]
    assert len(softmax) == sum(n.op_type == "Softmax" for n in shipped.graph.node) > 0
    for sm in softmax:  # Softmax, its Q·Kᵀ MatMul and the A·V MatMul after it all run in FP16
        assert types[sm.input[0]] == types[sm.output[0]] == TensorProto.FLOAT16
        qk = producer[sm.input[0]]
        assert qk.op_type == "MatMul" and all(types[t] == TensorProto.FLOAT16 for t in qk.input)
    for n in g.node:
        if n.op_type == "LayerNormalization":
            assert types[n.input[0]] == types[n.output[0]] == TensorProto.FLOAT16
            assert dict((a.name, a.i) for a in n.attribute).get("stash_type", 1) == 1  # FP32 mean/variance
        if n.op_type in ("Exp", "ReduceL2", "Sigmoid"):
            assert types[n.output[0]] == TensorProto.FLOAT, n.name
    summary = precision_summary(shipped_fp16)
    assert summary["tensors"]["fp16"] > 5 * summary["tensors"]["fp32"]
    # the weights are stored in FP16 (about half the bytes)
    assert shipped_fp16.ByteSize() < 0.6 * shipped.ByteSize()


def test_bf16_copy_is_type_consistent_and_keeps_conv_in_fp32(shipped):
    bf16 = convert_precision(shipped, "bf16")  # raises on any type inconsistency (strict shape inference)
    types = _types(bf16)
    for n in bf16.graph.node:
        if n.op_type == "Conv":
            assert types[n.output[0]] == TensorProto.FLOAT  # ONNX Conv has no bfloat16
        if n.op_type == "Softmax":
            assert types[n.output[0]] == TensorProto.BFLOAT16
    init = {t.name: t for t in bf16.graph.initializer}
    w = next(t for t in shipped.graph.initializer if t.data_type == TensorProto.FLOAT and init[t.name].data_type ==
             TensorProto.BFLOAT16 and np.prod(t.dims) > 100)
    ref = numpy_helper.to_array(w).astype(np.float32).ravel()
    got = (np.frombuffer(init[w.name].raw_data, "<u2").astype(np.uint32) << 16).view(np.float32)
    assert np.abs(got - ref).max() <= np.abs(ref).max() * 2.0**-8  # round to nearest: half a BF16 ulp


def test_fp16_copy_matches_fp32_through_onnxruntime(shipped, shipped_fp16):
    h, w = (d.dim_value for d in shipped.graph.input[0].type.tensor_type.shape.dim[2:])
    rng = np.random.default_rng(0)
    feeds = {"img1": rng.uniform(-1, 1, (1, 3, h, w)).astype(np.float32),
             "img2": rng.uniform(-1, 1, (1, 3, h, w)).astype(np.float32)}
    ref = _session(SHIPPED).run(None, feeds)
    got = _session(shipped_fp16).run(None, feeds)
    for o, a, b in zip(shipped.graph.output, ref, got):
        assert b.dtype == np.float32 and np.isfinite(b).all(), o.name
        assert np.abs(b - a).max() / np.abs(a).max() < 1e-2, o.name  # measured ~1.3e-3


@pytest.fixture(scope="module")
def hot_head_onnx(tmp_path_factory):
    """dpm_tiny with its head biases raised by 12: confidence 1 + exp(logit) > 65504, FP16's largest value."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("engines") / "dpm_tiny.onnx"
    export_onnx(build_model("dpm_tiny"), path)
    model = onnx.load(str(path))
    for t in model.graph.initializer:
        if "downstream_head" in t.name and t.name.endswith("proj.bias"):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + np.float32(12.0), t.name))
    return model


def test_islands_keep_the_head_exp_finite_where_fp16_overflows(hot_head_onnx):
    h, w = (d.dim_value for d in hot_head_onnx.graph.input[0].type.tensor_type.shape.dim[2:])
    rng = np.random.default_rng(1)
    feeds = {n: rng.uniform(-1, 1, (1, 3, h, w)).astype(np.float32) for n in ("img1", "img2")}
    names = [o.name for o in hot_head_onnx.graph.output]
    ref = dict(zip(names, _session(hot_head_onnx).run(None, feeds)))
    conf = ref["conf_p1_t1_pi1"]
    assert conf.max() > 65504  # the planted condition: FP16 cannot hold this confidence
    with_islands = dict(zip(names, _session(convert_precision(hot_head_onnx, "fp16")).run(None, feeds)))
    without = dict(zip(names, _session(convert_precision(hot_head_onnx, "fp16", islands=set())).run(None, feeds)))
    assert all(np.isfinite(v).all() for v in with_islands.values())
    assert np.abs(with_islands["conf_p1_t1_pi1"] - conf).max() / conf.max() < 2e-2
    assert not np.isfinite(without["conf_p1_t1_pi1"]).all()  # the bug the islands fix


def test_hand_written_l2_norm_and_head_tail_patterns():
    """x·x → ReduceSum → +eps → Sqrt is an island; the head tail stops at (and includes) the last MatMul."""
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"]),                 # body (low precision)
        helper.make_node("Mul", ["h", "h"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axes"], ["ss"], keepdims=1),
        helper.make_node("Add", ["ss", "eps"], ["sse"]),
        helper.make_node("Sqrt", ["sse"], ["norm"]),
        helper.make_node("Div", ["h", "norm"], ["hn"]),
        helper.make_node("MatMul", ["hn", "w1"], ["logits"]),           # last linear layer: head tail from here
        helper.make_node("Exp", ["logits"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["conf"]),
    ]
    inits = [numpy_helper.from_array(np.ones((4, 4), np.float32), "w0"),
             numpy_helper.from_array(np.ones((4, 2), np.float32), "w1"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             numpy_helper.from_array(np.float32(1e-6), "eps"), numpy_helper.from_array(np.float32(1), "one")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("conf", TensorProto.FLOAT, [1, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert norm_reduction_nodes(graph) == {1, 2, 3, 4}
    assert head_tail_nodes(graph) == {6, 7, 8}
    low = convert_precision(model, "fp16")
    types = _types(low)
    assert types["h"] == TensorProto.FLOAT16 and types["hn"] == TensorProto.FLOAT16
    assert types["ss"] == types["norm"] == types["logits"] == types["conf"] == TensorProto.FLOAT
    x = np.full((1, 4), 100.0, np.float32)  # h = 400: h·h = 160000 overflows FP16, not the FP32 island
    out = _session(low).run(None, {"x": x})[0]
    ref = _session(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(out, ref, rtol=2e-3)


def test_unknown_precision_is_refused(shipped):
    with pytest.raises(ValueError, match="precision must be one of"):
        convert_precision(shipped, "int8")


def test_reduced_precision_copy_is_written_whole_and_leaves_no_temporary(tmp_path, shipped_fp16):
    """The typed copy TensorRT builds from (written before any TensorRT call, so it runs here): the same model as
    convert_precision's, replaced atomically, nothing else left in the cache folder."""
    from dpm_ros.engine.tensorrt_build import reduced_precision_onnx

    out = tmp_path / "dpm_small.x.fp16.onnx"
    out.write_bytes(b"an older copy")
    assert reduced_precision_onnx(SHIPPED, "fp16", out) == out
    assert onnx.load(str(out)).SerializeToString() == shipped_fp16.SerializeToString()
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
