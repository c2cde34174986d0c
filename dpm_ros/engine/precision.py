"""Reduced-precision ONNX for TensorRT's strongly typed networks (TensorRT >= 10.3, required by 11.x): an FP16/BF16
copy of an exported FP32 model that keeps **FP32 islands** exactly where FP16 can overflow or lose the result, with
every other float tensor (attention included, so TensorRT may fuse it) in the low type.

Islands (chosen by op pattern, not by node names or counts, so a re-exported model at another resolution or depth
gets the same treatment):
  - the **head tail**: every node from the last linear layer (MatMul/Gemm/Conv) before each graph output to that
    output: the projection, depth-to-space, ``exp``/``expm1`` depth and ``1 + exp`` confidence activations, the L2
    norm of the points and the sigmoid; logits above ~11 make ``exp`` overflow FP16 (65504);
  - **norm reductions** outside the head: ReduceL2 / ReduceSumSquare / ReduceL1 / ReduceLogSumExp, and a hand-written
    ``x·x → ReduceSum|ReduceMean → (+eps) → Sqrt`` chain (TensorRT imports ReduceL2 as x·x → sum → sqrt, and an
    FP16 x·x overflows for |x| > 256).
LayerNormalization stays one node with FP16 I/O: its ``stash_type=1`` tells TensorRT's ONNX importer to run the
mean/variance arithmetic in FP32. Softmax and the Q·Kᵀ / A·V matmuls stay in the low type: TensorRT fuses
attention only when both batched matmuls run in FP16/BF16.

Plain onnx-package graph surgery, tested on the CPU (structure; FP16 numerics through ONNX Runtime).
"""
from __future__ import annotations

import copy
import logging

import numpy as np

log = logging.getLogger(__name__)

LINEAR_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})
NORM_REDUCE_OPS = frozenset({"ReduceL2", "ReduceSumSquare", "ReduceL1", "ReduceLogSumExp"})
SUM_REDUCE_OPS = frozenset({"ReduceSum", "ReduceMean"})
# (op, input index) whose float input has its own fixed type, never the network's compute type
FIXED_FLOAT_INPUTS = frozenset({("Resize", 1), ("Resize", 2), ("Upsample", 1)})
LOW_TYPES = {"fp16": 10, "bf16": 16}   # onnx.TensorProto.FLOAT16, BFLOAT16
# ops whose ONNX type constraints (opset 18) have no bfloat16: they stay FP32 in a BF16 model (for a ViT only the
# patch-embedding convolution, a few % of the FLOPs)
NO_BF16_OPS = frozenset({"Conv", "ConvTranspose"})
FLOAT = 1                              # onnx.TensorProto.FLOAT
FP16_MAX = 65504.0


def _graph_maps(graph):
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.node):
        for t in n.input:
            if t:
                consumers.setdefault(t, []).append(i)
    return producer, consumers


def head_tail_nodes(graph) -> set[int]:
    """Indices of the nodes between each graph output and the last linear layer before it (that layer included)."""
    producer, _ = _graph_maps(graph)
    keep: set[int] = set()
    frontier = [producer[o.name] for o in graph.output if o.name in producer]
    while frontier:
        i = frontier.pop()
        if i in keep:
            continue
        keep.add(i)
        node = graph.node[i]
        if node.op_type in LINEAR_OPS:
            continue  # the island starts here: its inputs (activations, weights) are cast up
        frontier += [producer[t] for t in node.input if t in producer]
    return keep


def norm_reduction_nodes(graph) -> set[int]:
    """Indices of L2/L1-type reductions and of hand-written squared-sum norms (x·x → sum → (+eps) → sqrt)."""
    producer, consumers = _graph_maps(graph)
    keep: set[int] = set()
    for i, node in enumerate(graph.node):
        if node.op_type in NORM_REDUCE_OPS:
            keep.add(i)
        elif node.op_type in SUM_REDUCE_OPS and node.input[0] in producer:
            sq = graph.node[producer[node.input[0]]]
            squares = (sq.op_type == "Mul" and len(sq.input) == 2 and sq.input[0] == sq.input[1]) or sq.op_type == "Pow"
            if not squares:
                continue
            keep |= {producer[node.input[0]], i}
            tail = consumers.get(node.output[0], [])
            for j in tail:  # optional + eps, then the sqrt / reciprocal sqrt
                follow = graph.node[j]
                if follow.op_type == "Add":
                    keep.add(j)
                    tail = consumers.get(follow.output[0], [])
                    follow = graph.node[tail[0]] if len(tail) == 1 else follow
                    j = tail[0] if len(tail) == 1 else j
                if follow.op_type in ("Sqrt", "Reciprocal"):
                    keep.add(j)
    return keep


def fp32_island_nodes(graph) -> set[int]:
    """All node indices that stay FP32 in a reduced-precision copy (see module docstring)."""
    return head_tail_nodes(graph) | norm_reduction_nodes(graph)


def _skeleton(model, min_bytes: int = 1 << 16):
    """A copy of ``model`` whose large initializers are marked external and hold no bytes: enough for type
    inference and the checker, and below protobuf's 2 GB limit for models with weights above it."""
    import onnx

    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    for t in skeleton.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL and len(t.raw_data) >= min_bytes:
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
            t.external_data.add(key="location", value="skeleton.bin")
    return skeleton


def _float_types(model) -> dict[str, int]:
    """Element type of every tensor of ``model`` (shape inference; initializers and graph I/O included)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(_skeleton(model))
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return types


def _to_low(array: np.ndarray, low: int):
    """float32 array → (TensorProto data type, raw little-endian bytes) in the low type (saturating at FP16's max;
    BF16 by round-to-nearest-even of the upper 16 bits)."""
    a = np.ascontiguousarray(array, dtype=np.float32)
    if low == LOW_TYPES["fp16"]:
        return np.clip(a, -FP16_MAX, FP16_MAX).astype("<f2").tobytes()
    bits = a.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
    nan = np.isnan(a)
    rounded[nan] = 0x7FC0
    return rounded.tobytes()


def _low_tensor(tensor, low: int, name: str | None = None):
    import onnx
    from onnx import numpy_helper

    arr = numpy_helper.to_array(tensor).astype(np.float32)
    out = onnx.TensorProto()
    out.name = tensor.name if name is None else name
    out.data_type = low
    out.dims.extend(arr.shape)
    out.raw_data = _to_low(arr, low)
    return out


def convert_precision(model, precision: str = "fp16", islands: set[int] | None = None):
    """A copy of the FP32 ``model`` whose float tensors are FP16/BF16 except in the FP32 islands (node indices,
    default ``fp32_island_nodes``). Graph inputs and outputs stay FP32 (Casts at the borders), so the engine's
    I/O and the backends' buffers do not change. Raises ValueError for an unknown precision."""
    import onnx
    from onnx import helper

    if precision not in LOW_TYPES:
        raise ValueError(f"precision must be one of {sorted(LOW_TYPES)}, got {precision!r}")
    low = LOW_TYPES[precision]
    types = _float_types(model)
    model = copy.deepcopy(model)
    g = model.graph
    islands = fp32_island_nodes(g) if islands is None else set(islands)
    if precision == "bf16":
        islands |= {i for i, n in enumerate(g.node) if n.op_type in NO_BF16_OPS}
    _, consumers = _graph_maps(g)
    init_names = {t.name for t in g.initializer}
    is_float = lambda t: types.get(t) == FLOAT  # noqa: E731

    def constant_like(i: int) -> bool:  # a float Constant node: converted like an initializer
        n = g.node[i]
        return n.op_type == "Constant" and any(a.name == "value" for a in n.attribute) and is_float(n.output[0])

    # the type each float tensor will have: FP32 when an island produces it (or an island reads a constant)
    new_type: dict[str, int] = {}
    for i, n in enumerate(g.node):
        for o in n.output:
            if is_float(o):
                if constant_like(i):
                    new_type[o] = FLOAT if any(c in islands for c in consumers.get(o, [])) else low
                else:
                    new_type[o] = FLOAT if i in islands else low
    for t in g.initializer:
        if t.data_type == FLOAT:
            new_type[t.name] = FLOAT if any(c in islands for c in consumers.get(t.name, [])) else low
    for inp in g.input:
        if inp.name not in init_names and is_float(inp.name):
            new_type[inp.name] = FLOAT

    # rewrite constants, initializers and type-setting attributes
    for k, t in enumerate(g.initializer):
        if new_type.get(t.name) == low:
            g.initializer[k].CopyFrom(_low_tensor(t, low))
    for i, n in enumerate(g.node):
        if constant_like(i) and new_type[n.output[0]] == low:
            for a in n.attribute:
                if a.name == "value":
                    a.t.CopyFrom(_low_tensor(a.t, low))
        elif n.op_type == "Cast" and i not in islands:
            for a in n.attribute:
                if a.name == "to" and a.i == FLOAT:
                    a.i = low
        elif n.op_type == "ConstantOfShape" and i not in islands:
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == FLOAT:
                    a.t.CopyFrom(_low_tensor(a.t, low))

    # insert Casts where a node reads a float tensor of the other type
    casts: dict[tuple[str, int], str] = {}
    nodes = []
    for i, n in enumerate(g.node):
        want = FLOAT if i in islands else low
        for k, t in enumerate(n.input):
            if (not t or t not in new_type or new_type[t] == want or n.op_type == "Cast"
                    or (n.op_type, k) in FIXED_FLOAT_INPUTS):
                continue
            key = (t, want)
            if key not in casts:
                casts[key] = f"{t}__{'fp32' if want == FLOAT else precision}"
                nodes.append(helper.make_node("Cast", [t], [casts[key]], to=want, name=f"{casts[key]}__cast"))
            n.input[k] = casts[key]
        nodes.append(n)
    # graph outputs stay FP32
    for out in g.output:
        if new_type.get(out.name, FLOAT) != FLOAT:
            inner = f"{out.name}__{precision}"
            for n in nodes:
                n.output[:] = [inner if o == out.name else o for o in n.output]
                n.input[:] = [inner if x == out.name else x for x in n.input]
            nodes.append(helper.make_node("Cast", [inner], [out.name], to=FLOAT, name=f"{out.name}__cast"))
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # stale element types; re-inferred below
    if model.ByteSize() < (1 << 31) - (64 << 20):  # the checker reads external data files: whole models only
        onnx.checker.check_model(model)
    onnx.shape_inference.infer_shapes(_skeleton(model), check_type=True, strict_mode=True)
    log.info("%s ONNX: %d of %d nodes in FP32 islands, %d casts", precision, len(islands), len(nodes), len(casts))
    return model


def precision_summary(model) -> dict:
    """Counts that describe a (converted) model: float tensors by type, Casts, graph I/O types. For reports."""
    types = _float_types(model)
    names = {FLOAT: "fp32", 10: "fp16", 16: "bf16"}
    counts: dict[str, int] = {}
    for t in types.values():
        if t in names:
            counts[names[t]] = counts.get(names[t], 0) + 1
    g = model.graph
    return {"tensors": counts, "casts": sum(n.op_type == "Cast" for n in g.node), "nodes": len(g.node),
            "output_types": sorted({names.get(types.get(o.name), "?") for o in g.output})}
