"""What an exported DPM ONNX file declares about itself: preset, resolution, normalisation, symmetric pass, input and
output names (ONNX ``metadata_props``, keys ``dpm.*``), read with clear errors for missing, truncated or corrupt files.

Every backend reads this, so an ``.onnx`` file needs nothing beside it (except ONNX external data when > 2 GB).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dpm_ros import ALL_POINT_MAP_NAMES, POINT_MAP_NAMES

INPUT_NAMES = ("img1", "img2")
DUST3R_NORMALISATION = {"scale": 1.0 / 255.0, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "layout": "NCHW RGB"}
METADATA_PREFIX = "dpm."


def output_names(symmetric: bool) -> tuple[str, ...]:
    """Network output names in order: the point maps, then ``conf_<map>``, then ``motion_prob_1``, ``motion_prob_2``."""
    maps = ALL_POINT_MAP_NAMES if symmetric else POINT_MAP_NAMES
    return maps + tuple(f"conf_{m}" for m in maps) + ("motion_prob_1", "motion_prob_2")


@dataclass(frozen=True)
class OnnxModelInfo:
    """The ``dpm.*`` metadata of one exported file. ``height``/``width``: network input and output size (pixels)."""
    path: Path
    preset: str
    height: int
    width: int
    symmetric: bool
    normalisation: dict
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    opset: int
    extra: dict = field(default_factory=dict)
    external_files: tuple[Path, ...] = ()   # ONNX external-data files (weights above 2 GB), beside ``path``

    def metadata_props(self) -> dict[str, str]:
        return metadata_props(self.preset, self.height, self.width, self.symmetric, self.outputs, **self.extra)


def metadata_props(preset: str, height: int, width: int, symmetric: bool, outputs: tuple[str, ...],
                   **extra: str) -> dict[str, str]:
    """The ``dpm.*`` string props written into an exported ONNX file."""
    props = {
        "preset": preset, "height": str(int(height)), "width": str(int(width)),
        "symmetric": "true" if symmetric else "false",
        "normalisation": json.dumps(DUST3R_NORMALISATION, sort_keys=True),
        "inputs": ",".join(INPUT_NAMES), "outputs": ",".join(outputs),
        **{k: str(v) for k, v in extra.items()},
    }
    return {METADATA_PREFIX + k: v for k, v in props.items()}


def check_model_file(path: str | Path, kind: str = "ONNX model") -> Path:
    """Raise FileNotFoundError / ValueError naming ``path`` unless it is an existing, non-empty file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: {kind} not found")
    if not path.is_file():
        raise ValueError(f"{path}: {kind} path is not a file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: {kind} file is empty (interrupted download or export?)")
    return path


def read_onnx_info(path: str | Path) -> OnnxModelInfo:
    """Parse ``path`` (without loading external weights) and return its DPM metadata.

    Raises ValueError naming the file when it is truncated/corrupt, lacks the ``dpm.*`` metadata (not exported by
    ``dpm export``), or when its declared inputs/outputs disagree with the graph.
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = check_model_file(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a readable ONNX model (truncated or corrupt file?): {exc}") from None
    if not model.graph.node:
        raise ValueError(f"{path}: ONNX model has an empty graph (truncated or corrupt file?)")
    props = {p.key[len(METADATA_PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)}
    missing = [k for k in ("preset", "height", "width", "symmetric", "normalisation", "outputs") if k not in props]
    if missing:
        raise ValueError(f"{path}: ONNX file lacks DPM metadata {missing} (export it with `dpm export`)")
    try:
        height, width = int(props["height"]), int(props["width"])
        normalisation = json.loads(props["normalisation"])
    except ValueError as exc:
        raise ValueError(f"{path}: malformed DPM metadata: {exc}") from None
    graph_inputs = tuple(i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
    graph_outputs = tuple(o.name for o in model.graph.output)
    declared_outputs = tuple(props["outputs"].split(","))
    if graph_inputs != INPUT_NAMES:
        raise ValueError(f"{path}: graph inputs are {graph_inputs}, expected {INPUT_NAMES}")
    if graph_outputs != declared_outputs:
        raise ValueError(f"{path}: graph outputs {graph_outputs} differ from its metadata {declared_outputs}")
    for inp in model.graph.input:
        dims = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)
        if dims != (1, 3, height, width):
            raise ValueError(f"{path}: input {inp.name} has shape {dims}, metadata says (1, 3, {height}, {width})")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    locations = sorted({entry.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                        for entry in t.external_data if entry.key == "location"})
    external = tuple(path.parent / loc for loc in locations)
    missing_data = [str(p) for p in external if not p.is_file()]
    if missing_data:
        raise ValueError(f"{path}: its external weight file(s) {missing_data} are missing (copy them beside it)")
    known = {"preset", "height", "width", "symmetric", "normalisation", "inputs", "outputs"}
    return OnnxModelInfo(path=path, preset=props["preset"], height=height, width=width,
                         symmetric=props["symmetric"] == "true", normalisation=normalisation, inputs=graph_inputs,
                         outputs=graph_outputs, opset=opset,
                         extra={k: v for k, v in props.items() if k not in known}, external_files=external)
