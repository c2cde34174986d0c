"""TensorRT backend: the plain-Python parts (which layers stay FP32, binding checks) run everywhere; building and
running an engine needs an NVIDIA GPU and the tensorrt runtime and is skipped, with the reason, elsewhere."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from dpm_ros.engine.export import export_onnx
from dpm_ros.engine.tensorrt_backend import plan_bindings
from dpm_ros.engine.tensorrt_build import LayerDesc, fp32_layer_indices, tensorrt_unavailable_reason
from dpm_ros.model import build_model

TRT_REASON = tensorrt_unavailable_reason()
needs_trt = pytest.mark.skipif(TRT_REASON is not None, reason=f"TensorRT cannot run here: {TRT_REASON}")

# ONNX op -> (TensorRT LayerType name, op name) as TensorRT's ONNX parser maps them
ONNX_TO_TRT = {
    "Softmax": ("SOFTMAX", ""), "LayerNormalization": ("NORMALIZATION", ""), "MatMul": ("MATRIX_MULTIPLY", ""),
    "Gemm": ("MATRIX_MULTIPLY", ""), "ReduceL2": ("REDUCE", ""), "ReduceMean": ("REDUCE", ""),
    "Mul": ("ELEMENTWISE", "PROD"), "Add": ("ELEMENTWISE", "SUM"), "Sub": ("ELEMENTWISE", "SUB"),
    "Div": ("ELEMENTWISE", "DIV"), "Pow": ("ELEMENTWISE", "POW"), "Exp": ("UNARY", "EXP"),
    "Sqrt": ("UNARY", "SQRT"), "Erf": ("UNARY", "ERF"), "Neg": ("UNARY", "NEG"), "Transpose": ("SHUFFLE", ""),
    "Reshape": ("SHUFFLE", ""), "Constant": ("CONSTANT", ""), "Conv": ("CONVOLUTION", ""),
    "Sigmoid": ("ACTIVATION", "SIGMOID"), "Cast": ("CAST", ""), "Identity": ("IDENTITY", ""),
}
SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Concat", "Equal", "Where", "Mod", "ConstantOfShape", "Expand"}


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("engines") / "dpm_tiny.onnx"
    export_onnx(build_model("dpm_tiny"), path)
    return path


def layers_from_onnx(path) -> tuple[list[LayerDesc], list]:
    """The exported graph as TensorRT-style layer descriptors (shape arithmetic marked non-float)."""
    graph = onnx.load(str(path)).graph
    descs = []
    for i, node in enumerate(graph.node):
        kind, op = ONNX_TO_TRT.get(node.op_type, (node.op_type.upper(), ""))
        descs.append(LayerDesc(i, kind, op, tuple(node.input), tuple(node.output), node.op_type not in SHAPE_OPS))
    return descs, list(graph.node)


def test_fp32_pinning_on_the_exported_network(tiny_onnx):
    descs, nodes = layers_from_onnx(tiny_onnx)
    keep = set(fp32_layer_indices(descs))
    by_type = lambda t: {i for i, n in enumerate(nodes) if n.op_type == t}  # noqa: E731
    softmax, layernorm, matmul = by_type("Softmax"), by_type("LayerNormalization"), by_type("MatMul")
    # dpm_tiny: 2 encoder blocks (1 attention each, symmetric batch) + 2x2 decoder blocks (self + cross attention)
    assert len(softmax) == 2 + 2 * 2 * 2
    assert softmax <= keep and layernorm <= keep and by_type("Exp") <= keep and by_type("ReduceL2") <= keep
    # exactly one logits matmul (Q·Kᵀ) per softmax is pinned; the rest of the matmuls (projections, MLP, A·V) not
    pinned_matmuls = matmul & keep
    assert len(pinned_matmuls) == len(softmax)
    for i in pinned_matmuls:  # each pinned matmul feeds a softmax through scaling/reshape only
        consumers = [j for j, n in enumerate(nodes) if nodes[i].output[0] in n.input]
        assert consumers and all(nodes[j].op_type in ("Mul", "Div", "Add", "Softmax", "Reshape", "Transpose")
                                 for j in consumers)
    assert not (by_type("Conv") | by_type("Erf") | by_type("Sigmoid")) & keep
    float_layers = [d for d in descs if d.is_float and d.type != "CONSTANT"]
    assert len(keep) < 0.5 * len(float_layers)  # most of the network still runs in reduced precision


def test_fp32_pinning_ignores_integer_shape_arithmetic():
    layers = [
        LayerDesc(0, "SHAPE", "", ("x",), ("s",), False),
        LayerDesc(1, "ELEMENTWISE", "DIV", ("s", "c"), ("d",), False),    # integer shape division: leave it
        LayerDesc(2, "MATRIX_MULTIPLY", "", ("q", "k"), ("qk",), True),
        LayerDesc(3, "CONSTANT", "", (), ("scale",), True),
        LayerDesc(4, "ELEMENTWISE", "PROD", ("qk", "scale"), ("logits",), True),
        LayerDesc(5, "SOFTMAX", "", ("logits",), ("attn",), True),
        LayerDesc(6, "MATRIX_MULTIPLY", "", ("attn", "v"), ("out",), True),
    ]
    assert fp32_layer_indices(layers) == [2, 4, 5]


def test_plan_bindings_checks_names_directions_and_shapes():
    io = {"img1": ("input", (1, 3, 32, 48)), "img2": ("input", (1, 3, 32, 48)), "p1_t1_pi1": ("output", (1, 32, 48, 3))}
    inputs = {"img1": (1, 3, 32, 48), "img2": (1, 3, 32, 48)}
    plan_bindings(io, inputs, ("p1_t1_pi1",), "e.engine")
    with pytest.raises(ValueError, match="e.engine: engine input 'img2' has shape .* rebuild"):
        plan_bindings({**io, "img2": ("input", (1, 3, 64, 48))}, inputs, ("p1_t1_pi1",), "e.engine")
    with pytest.raises(ValueError, match="e.engine: engine has no output tensor 'conf_p1_t1_pi1'"):
        plan_bindings(io, inputs, ("p1_t1_pi1", "conf_p1_t1_pi1"), "e.engine")
    with pytest.raises(ValueError, match="e.engine: engine has no input tensor 'img2'"):
        plan_bindings({**io, "img2": ("output", (1, 3, 32, 48))}, inputs, (), "e.engine")


@needs_trt
def test_tensorrt_engine_builds_caches_and_matches_onnxruntime(tiny_onnx, tmp_path):
    from dpm_ros.engine import load_engine
    from dpm_ros.engine.tensorrt_backend import TensorRTEngine

    rng = np.random.default_rng(0)
    img1, img2 = (rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(2))
    ref = load_engine(tiny_onnx, backend="onnxruntime").infer(img1, img2)
    first = TensorRTEngine(tiny_onnx, precision="fp32", cache_dir=tmp_path)
    out = first.infer(img1, img2)
    for name in ref:
        assert np.abs(out[name] - ref[name]).max() / np.abs(ref[name]).max() < 1e-3, name
    engines = list(tmp_path.glob("dpm_tiny.*.engine"))
    assert len(engines) == 1 and engines[0].with_name(engines[0].name + ".json").is_file()
    mtime = engines[0].stat().st_mtime_ns
    second = TensorRTEngine(tiny_onnx, precision="fp32", cache_dir=tmp_path, cuda_graph=True)  # cache hit
    assert engines[0].stat().st_mtime_ns == mtime
    np.testing.assert_allclose(second.infer(img1, img2)["p1_t1_pi1"], out["p1_t1_pi1"], rtol=1e-5, atol=1e-6)
    engines[0].write_bytes(b"garbage")   # damaged cache entry: rebuilt, never used
    third = TensorRTEngine(tiny_onnx, precision="fp32", cache_dir=tmp_path)
    assert engines[0].stat().st_size > 1000
    np.testing.assert_allclose(third.infer(img1, img2)["p1_t1_pi1"], out["p1_t1_pi1"], rtol=1e-5, atol=1e-6)
    fp16 = TensorRTEngine(tiny_onnx, precision="fp16", cache_dir=tmp_path).infer(img1, img2)
    assert np.abs(fp16["p1_t1_pi1"] - ref["p1_t1_pi1"]).max() / np.abs(ref["p1_t1_pi1"]).max() < 2e-2
