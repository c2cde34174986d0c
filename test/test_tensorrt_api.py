"""The TensorRT backend cannot run without an NVIDIA GPU, so it is checked against TensorRT 10.13's published API:
every ``trt.X[.Y]`` our code touches, and every method/attribute used on a TensorRT object (by the variable names the
backend reserves for them), must exist in the ``tensorrt-stubs`` .pyi files (parsed with ast; mypy chokes on them).
It must also use nothing TensorRT 11 removed (NVIDIA's "Removed Python APIs" list for 10.x → 11.x), and every
cuda-python runtime call of the Jetson path must exist in the installed ``cuda-bindings``."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BACKEND_FILES = [ROOT / "dpm_ros/engine/tensorrt_build.py", ROOT / "dpm_ros/engine/tensorrt_backend.py"]
CUDA_FILE = ROOT / "dpm_ros/engine/cuda_device.py"
# removed in TensorRT 11 (docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/
# tensorrt-10x-to-11x-python-api-reference.html, and the 11.0 Builder / NetworkDefinitionCreationFlag pages)
REMOVED_IN_11 = {
    "FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
    "DIRECT_IO", "EXPLICIT_BATCH", "platform_has_fast_fp16", "platform_has_fast_int8", "platform_has_tf32",
    "int8_calibrator", "set_output_type", "get_output_type", "output_type_is_set", "reset_output_type",
    "precision", "precision_is_set", "reset_precision", "device_memory_size", "set_quantization_flag",
}

# variable (or self attribute) name in our backend -> the TensorRT classes it may hold
VARIABLE_TYPES = {
    "builder": ["Builder"], "network": ["INetworkDefinition"], "parser": ["OnnxParser"],
    "config": ["IBuilderConfig"], "layer": ["ILayer", "IUnaryLayer", "IElementWiseLayer"],
    "tensor": ["ITensor"], "_runtime": ["Runtime"], "_engine": ["ICudaEngine"], "engine": ["ICudaEngine"],
    "_context": ["IExecutionContext"], "timing_cache": ["ITimingCache"],
}


def _stub_dir() -> Path:
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tensorrt-stubs not installed (pip install --no-deps 'tensorrt-stubs==10.13.*')")
    return Path(list(spec.submodule_search_locations)[0])


def _class_index(tree: ast.Module) -> dict[str, tuple[set[str], list[str]]]:
    """class name -> (member names, base class names), nested classes included by their own name."""
    index = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            members = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.ClassDef)):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    members |= {t.id for t in item.targets if isinstance(t, ast.Name)}
            index[node.name] = (members, [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in node.bases])
    return index


def _members(index, cls: str) -> set[str]:
    members, bases = index.get(cls, (set(), []))
    out = set(members)
    for base in bases:
        out |= _members(index, base.split(".")[-1])
    return out


def _top_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _parse_tolerant(text: str) -> ast.Module:
    """ast.parse, replacing each stub line that is not valid Python (e.g. a required parameter after defaulted
    ones, a parameter named ``in``) by ``def name(self, *args, **kwargs): ...`` so the method name is kept."""
    lines = text.splitlines()
    for _ in range(200):
        try:
            return ast.parse("\n".join(lines))
        except SyntaxError as exc:
            line = lines[exc.lineno - 1]
            indent = line[: len(line) - len(line.lstrip())]
            name = line.strip().removeprefix("def ").split("(")[0]
            if not line.strip().startswith("def ") or not name.isidentifier():
                raise
            lines[exc.lineno - 1] = f"{indent}def {name}(self, *args, **kwargs):"
    raise AssertionError("too many syntax errors in the TensorRT stubs")


@pytest.fixture(scope="module")
def stubs():
    stub_dir = _stub_dir()
    bindings = _parse_tolerant((stub_dir / "tensorrt.pyi").read_text())
    package = _parse_tolerant((stub_dir.parent / "tensorrt" / "__init__.pyi").read_text())
    return _top_level_names(package) | _top_level_names(bindings), _class_index(bindings)


def _holder_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def _uses():
    """(file, line, chain) for trt.X / trt.X.Y, and (file, line, variable, attr) for TensorRT objects."""
    trt_chains, object_attrs = [], []
    for path in BACKEND_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            if isinstance(node.value, ast.Name) and node.value.id == "trt":
                trt_chains.append((path.name, node.lineno, [node.attr]))
            elif (isinstance(node.value, ast.Attribute) and isinstance(node.value.value, ast.Name)
                  and node.value.value.id == "trt"):
                trt_chains.append((path.name, node.lineno, [node.value.attr, node.attr]))
            holder = _holder_name(node.value)
            if holder in VARIABLE_TYPES and not node.attr.startswith("__"):
                object_attrs.append((path.name, node.lineno, holder, node.attr))
    return trt_chains, object_attrs


def test_every_trt_module_attribute_exists_in_tensorrt_10_13_stubs(stubs):
    top, classes = stubs
    chains, _ = _uses()
    assert len(chains) >= 20, "the backend should be using the TensorRT API (parser found too few uses)"
    missing = []
    for file, line, chain in chains:
        if chain[0] not in top:
            missing.append(f"{file}:{line} trt.{chain[0]}")
        elif len(chain) == 2 and chain[0] in classes and chain[1] not in _members(classes, chain[0]):
            missing.append(f"{file}:{line} trt.{'.'.join(chain)}")
    assert not missing, f"not in TensorRT 10.13 API: {missing}"


def test_every_method_on_tensorrt_objects_exists_in_stubs(stubs):
    _, classes = stubs
    _, uses = _uses()
    assert {holder for _, _, holder, _ in uses} >= {"builder", "parser", "config", "_engine",
                                                    "_context", "_runtime"}
    missing = [f"{file}:{line} {holder}.{attr} ({'/'.join(VARIABLE_TYPES[holder])})"
               for file, line, holder, attr in uses
               if not any(attr in _members(classes, cls) for cls in VARIABLE_TYPES[holder])]
    assert not missing, f"not in TensorRT 10.13 API: {missing}"


def _binding_names(version: str) -> set[str]:
    """Identifiers compiled into the tensorrt-cu12-bindings wheel of ``version`` (its pybind11 module's strings,
    plus the names its __init__.py defines), read from the wheel setup.sh downloads (never installed)."""
    import re
    import sys
    import zipfile

    wheels = sorted((Path(sys.prefix) / "tensorrt-bindings").glob(f"tensorrt_cu12_bindings-{version}-*.whl"))
    if not wheels:
        pytest.skip(f"tensorrt-cu12-bindings {version} wheel not downloaded (scripts/setup.sh does it)")
    with zipfile.ZipFile(wheels[0]) as z:
        blob = z.read("tensorrt_bindings/tensorrt.so")
        init = z.read("tensorrt_bindings/__init__.py").decode()
    names = {m.decode() for m in re.findall(rb"[A-Za-z_][A-Za-z0-9_]{1,}", blob)}
    defined = {a or b for a, b in re.findall(r"^(?:def|class) (\w+)|^(\w+) *=", init, re.M)}
    return names | defined


@pytest.mark.parametrize("version", ["10.3.0", "11.4.0.106"])
def test_every_tensorrt_name_exists_in_the_10_3_and_11_4_bindings(version):
    """The supported range's ends: JetPack 6's TensorRT 10.3 and the 11.x line (strongly typed only)."""
    names = _binding_names(version)
    chains, uses = _uses()
    used = {n for _, _, chain in chains for n in chain} | {attr for _, _, _, attr in uses}
    assert len(used) >= 40
    # enum members of 5 characters or fewer are inlined by the compiler, not stored as strings (checked by the
    # 10.13 stubs test instead)
    missing = sorted(n for n in used if n not in names and len(n) > 5)
    assert not missing, f"not in TensorRT {version}'s Python bindings: {missing}"
    if version.startswith("11."):  # the list we check against is real: 11 lacks what it says 11 removed
        assert not {"platform_has_fast_fp16", "OBEY_PRECISION_CONSTRAINTS", "set_output_type"} & names
    else:
        assert {"platform_has_fast_fp16", "OBEY_PRECISION_CONSTRAINTS", "set_output_type"} <= names


def test_nothing_removed_in_tensorrt_11_is_used():
    """Defect 1: TensorRT 11 removed the weakly typed precision API; using any of it is an AttributeError there."""
    used = []
    for path in BACKEND_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            on_trt = isinstance(node, ast.Attribute) and (
                _holder_name(node.value) in VARIABLE_TYPES or (isinstance(node.value, ast.Name) and node.value.id ==
                                                               "trt") or (isinstance(node.value, ast.Attribute)
                                                                          and isinstance(node.value.value, ast.Name)
                                                                          and node.value.value.id == "trt"))
            if on_trt and node.attr in REMOVED_IN_11:
                used.append(f"{path.name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.Assign):  # a network output's dtype may not be set in a strongly typed network
                used += [f"{path.name}:{node.lineno} .dtype =" for t in node.targets
                         if isinstance(t, ast.Attribute) and t.attr == "dtype"]
    assert not used, f"removed in TensorRT 11: {used}"
    text = (ROOT / "dpm_ros/engine/tensorrt_build.py").read_text()
    assert "NetworkDefinitionCreationFlag.STRONGLY_TYPED" in text and "clear_flag(trt.BuilderFlag.TF32)" in text


def test_every_cuda_python_call_exists_in_cuda_bindings():
    """The Jetson path (cuda-python when torch has no CUDA) cannot run here; its names are checked against the
    installed cuda-bindings (12.x, JetPack 6's CUDA line), and the call signatures we rely on."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        pytest.skip("cuda-bindings not installed (scripts/setup.sh installs it)")
    names = set()
    for node in ast.walk(ast.parse(CUDA_FILE.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "_rt":
            names.add(node.attr)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("cudart", "rt"):
            names.add(node.attr)
    assert len(names) >= 20
    missing = sorted(n for n in names if not hasattr(cudart, n))
    assert not missing, f"not in cuda.bindings.runtime: {missing}"
    assert cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal is not None
    assert cudart.cudaMemcpyKind.cudaMemcpyHostToDevice is not None and cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    assert "cudaGraphInstantiate(graph, unsigned long long flags)" in cudart.cudaGraphInstantiate.__doc__
    err, _ = cudart.cudaGetDeviceCount()  # runs here: no driver, an error code instead of a crash
    assert isinstance(err, cudart.cudaError_t)


def test_stubs_are_not_mistaken_for_a_tensorrt_runtime():
    """tensorrt-stubs installs a bare ``tensorrt/`` directory that imports as a namespace package; the backend must
    report TensorRT as unavailable rather than fail later with AttributeError."""
    from dpm_ros.engine.tensorrt_build import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    try:
        import tensorrt
        real = hasattr(tensorrt, "Builder")
    except ImportError:
        real = False
    if real:
        pytest.skip("a real TensorRT runtime is installed here")
    assert reason is not None and ("stubs" in reason or "not installed" in reason)
