"""Checkpoints: our format (safetensors + JSON config and training record) and DUSt3R/MonST3R files
(``{'model': state_dict, 'args': ...}`` .pth read with ``weights_only=True``, or a safetensors state dict)."""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from dpm_ros.engine.cache import atomic_write_bytes
from dpm_ros.model.config import DPMConfig
from dpm_ros.model.network import DPMNet, build_model

FORMAT = "dpm_ros.model/1"
CROSS_TIME_HEADS = ("downstream_head3.", "downstream_head4.")
_ALIAS = re.compile(r"^(.*\.scratch\.)layer_rn\.(\d+)\.(.*)$")
_CANONICAL = re.compile(r"^(.*\.scratch\.)layer(\d+)_rn\.(.*)$")


class CheckpointMismatchError(ValueError):
    """A state dict does not fit the network; lists missing and unexpected keys and shape conflicts."""

    def __init__(self, missing: list[str], unexpected: list[str], conflicts: list[str], source: str = ""):
        self.missing, self.unexpected, self.conflicts = missing, unexpected, conflicts

        def show(title: str, items: list[str]) -> str:
            more = f" ... and {len(items) - 20} more" if len(items) > 20 else ""
            return f"\n  {title} ({len(items)}): " + ", ".join(items[:20]) + more if items else ""
        super().__init__(f"checkpoint {source or ''} does not match the network (wrong preset?):"
                         + show("missing keys", missing) + show("unexpected keys", unexpected)
                         + show("shape conflicts", conflicts))


def _canonical_state_dict(model: DPMNet) -> dict[str, torch.Tensor]:
    """State dict without the ``scratch.layer_rn.i`` aliases (safetensors stores no shared tensors)."""
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if not _ALIAS.match(k)}


def fill_scratch_aliases(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return ``sd`` with both names of each DPT ``scratch.layer{i+1}_rn`` / ``scratch.layer_rn.{i}`` tensor
    present (files may hold either one or both)."""
    out = dict(sd)
    for k, v in sd.items():
        m = _ALIAS.match(k)
        if m:
            out.setdefault(f"{m[1]}layer{int(m[2]) + 1}_rn.{m[3]}", v)
        m = _CANONICAL.match(k)
        if m:
            out.setdefault(f"{m[1]}layer_rn.{int(m[2]) - 1}.{m[3]}", v)
    return out


WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_weights(sd: dict[str, torch.Tensor], source: str = "") -> None:
    """Every tensor floating point (float32/16, bfloat16, float64) and finite; else ValueError naming the first
    offending tensor (int8 or NaN/Inf weights would load, export and run to garbage without a word)."""
    for name, t in sd.items():
        if t.dtype not in WEIGHT_DTYPES:
            raise ValueError(f"{source or 'weights'}: tensor {name} is {t.dtype}; expected floating point weights "
                             "(quantised weights are not supported)")
        if t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{source or 'weights'}: tensor {name} has {bad} NaN/Inf values of {t.numel()}")


def load_state_dict_checked(model: DPMNet, sd: dict[str, torch.Tensor], source: str = "",
                            allow_missing_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Copy ``sd`` into ``model`` after checking every key and shape; raises :class:`CheckpointMismatchError`.
    Keys under ``allow_missing_prefixes`` may be absent; returns the absent ones."""
    sd = fill_scratch_aliases(sd)
    check_weights(sd, source)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in sd)
    allowed = [k for k in missing if k.startswith(allow_missing_prefixes)] if allow_missing_prefixes else []
    missing = [k for k in missing if k not in allowed]
    unexpected = sorted(k for k in sd if k not in own)
    conflicts = sorted(f"{k}: checkpoint {list(sd[k].shape)} vs network {list(own[k].shape)}"
                       for k in sd if k in own and sd[k].shape != own[k].shape)
    if missing or unexpected or conflicts:
        raise CheckpointMismatchError(missing, unexpected, conflicts, source)
    model.load_state_dict(sd, strict=False)
    return allowed


def save_model(model: DPMNet, path: str | os.PathLike, record: dict | None = None,
               dtype: torch.dtype | None = None) -> Path:
    """Write the weights to ``path`` (.safetensors) and ``path.with_suffix('.json')``:
    ``{"format", "config": DPMConfig.to_dict(), "record": record}`` (record: training steps, data, wall time...).
    ``dtype`` (e.g. torch.float16, half the bytes): store floating-point tensors in it. Returns the weights path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"model path {path} must end in .safetensors (the config goes beside it as .json)")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "config": model.config.to_dict(), "record": record or {}}
    sd = {k: v.cpu() if dtype is None or not v.is_floating_point() else v.cpu().to(dtype).contiguous()
          for k, v in _canonical_state_dict(model).items()}
    # whole file in memory, then one atomic write (fsync + rename, normal file mode): readers never see a part
    atomic_write_bytes(path, save(sd, metadata={"format": "pt", "dpm_ros": json.dumps(meta)}))
    atomic_write_bytes(path.with_suffix(".json"), (json.dumps(meta, indent=2) + "\n").encode())
    return path


def stored_dtype(path: str | os.PathLike) -> torch.dtype:
    """The dtype of the floating-point tensors in a saved .safetensors file (its first such tensor's)."""
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            t = f.get_slice(name)
            dtype = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}.get(
                t.get_dtype())
            if dtype is not None:
                return dtype
    raise ValueError(f"{path}: no floating-point tensor")


def read_model_meta(path: str | os.PathLike) -> dict:
    """``{"format", "config", "record"}`` of a saved model: from the JSON beside it, else the safetensors header."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found")
    side = path.with_suffix(".json")
    if side.is_file():
        return json.loads(side.read_text())
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get("dpm_ros")
    except Exception as exc:  # safetensors raises its own error types for corrupt/foreign files
        raise ValueError(f"{path} is not a readable safetensors model file ({exc})") from exc
    if meta is None:
        raise ValueError(f"{path} has no dpm_ros config (neither {side.name} nor header metadata); for DUSt3R/"
                         f"MonST3R weights use load_dust3r_checkpoint(path, preset)")
    return json.loads(meta)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> DPMNet:
    """A network saved by :func:`save_model`, in eval mode on ``map_location``; ``model.record`` holds the
    training record."""
    meta = read_model_meta(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{path}: its model JSON has no 'config' object")
    config = DPMConfig.from_dict(meta["config"])   # validated (types, bounded sizes) before anything is allocated
    model = DPMNet(config)
    try:
        weights = load_file(str(path), device="cpu")
    except Exception as exc:  # corrupt or truncated file beside a valid JSON
        raise ValueError(f"{path} is not a readable safetensors model file ({exc})") from exc
    load_state_dict_checked(model, weights, source=str(path))
    model.record = meta.get("record", {})
    return model.to(map_location).eval()


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a DUSt3R/MonST3R-style file: ``.pth``/``.pt`` (``{'model': sd, ...}`` or a bare state
    dict; unpickled with ``weights_only=True``, argparse.Namespace allowed for ``args``) or ``.safetensors``.
    A DistributedDataParallel ``module.`` prefix is removed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    if path.suffix == ".safetensors":
        sd = load_file(str(path), device="cpu")
    else:
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(f"{path} holds objects that are unsafe to unpickle; re-save it as "
                             f"{{'model': state_dict}} or safetensors ({str(exc).splitlines()[0]})") from exc
        sd = obj.get("model", obj) if isinstance(obj, dict) else None
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ValueError(f"{path}: expected {{'model': state_dict, 'args': ...}} or a state dict of tensors")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def guess_dust3r_preset(sd: dict[str, torch.Tensor]) -> str:
    """``dust3r_vitl_512_dpt`` for DPT heads, ``dust3r_vitl_224_linear`` for linear heads."""
    if any(k.startswith("downstream_head1.dpt.") for k in sd):
        return "dust3r_vitl_512_dpt"
    if "downstream_head1.proj.weight" in sd:
        return "dust3r_vitl_224_linear"
    raise ValueError("cannot tell the preset: no downstream_head1 weights in the checkpoint; pass preset=")


def load_dust3r_checkpoint(path: str | os.PathLike, preset: str | None = None,
                           map_location: str | torch.device = "cpu", **overrides) -> DPMNet:
    """A DPMNet of ``preset`` (guessed from the head keys when None) with DUSt3R/MonST3R weights. Heads 1/2 and
    the backbone must match exactly; when the file has no heads 3/4 they are copied from heads 1/2 with delta = 0
    and m ≈ 0, so the cross-time maps equal the same-time maps (the static baseline). ``overrides`` change config
    fields that do not alter shapes (e.g. ``height``, ``width``)."""
    sd = read_state_dict(path)
    model = build_model(preset or guess_dust3r_preset(sd), **overrides)
    has_cross = any(k.startswith(CROSS_TIME_HEADS) for k in sd)
    absent = load_state_dict_checked(model, sd, source=str(path),
                                     allow_missing_prefixes=() if has_cross else CROSS_TIME_HEADS)
    if absent:
        model.reset_cross_time_heads(copy_same_time=True)
    return model.to(map_location).eval()
