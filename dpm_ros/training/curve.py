"""One learning curve over many runs: continue the shipped model's training from what is committed, evaluate the
newest checkpoint and append a row to the model card's learning-curve table.

The committed state (``training_state/curve.json``, a few hundred bytes) holds what a fresh clone needs besides the
weights themselves (``engines/<preset>.safetensors``):

* ``weights``: the weights the next segment starts from (path relative to the state file's folder);
* ``pairs_seen`` / ``cpu_hours``: training pairs and CPU-hours behind those weights (the curve's x axes);
* ``next_sample``: the global index of the next training sample, so a continuation never repeats data
  (the data of sample i is a pure function of i: dpm_ros.training.data);
* ``continue``: the segment recipe (batch, lr, warm-up, constant-LR schedule, resolution, checkpoint period...).

AdamW's moments are *not* committed: they are twice the weights' size (40 MB for dpm_small in fp32, 20 MB in fp16),
more than the weights themselves. A new segment therefore starts its moments at zero behind a short linear LR
warm-up (``continue.warmup`` steps); within a segment, ``runs/curve/<segment>/last.pt`` (not committed) holds
everything, so stopping (SIGTERM) and continuing on the same machine is exact: the same weights as one
uninterrupted run. A segment is named by the pairs seen at its start (``from-<pairs>``), so continuing twice from
the same committed state resumes the same segment.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from dpm_ros.engine.cache import atomic_write_bytes

FORMAT = "dpm_ros.curve/1"
DEFAULT_STATE = Path("training_state/curve.json")
DEFAULT_RUNS = Path("runs/curve")
DEFAULT_CARD = Path("engines/README.md")
TABLE_TITLE = "## Learning curve (held-out, one row per `dpm curve eval`)"
TABLE_HEADER = ("| pairs seen | CPU-hours | resolution | Lrel P1(t1,π1) | parallax gain | OF-EPE fwd model / static "
                "| learned-gate IoU v1 / v2 | checkpoint | date |")
CONTINUE_DEFAULTS = {"batch": 8, "lr": 3e-4, "warmup": 100, "schedule": "constant", "steps": 1_000_000,
                     "threads": 1, "workers": 1, "ckpt_minutes": 3.0, "ckpt_every": 1000, "log_every": 10,
                     "height": None, "width": None, "curriculum_steps": 0, "precision": "auto",
                     # scene mix (training/data.py; issue 10): 0 = the shipped model's rooms-only data
                     "p_flying": 0.0, "p_room_modes": 0.0, "p_augment": 0.0,
                     # supervised-matching loss weight (training/matching.py; issue-10 ablation): 0 = off
                     "match_weight": 0.0,
                     # matching targets within R tokens of the query's own position dropped; -1 = keep all
                     "match_drop_radius": -1}


def load_state(path: Path) -> dict:
    """The committed curve state; ValueError naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"curve state {path} not found (a clone has training_state/curve.json)")
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from exc
    missing = [k for k in ("format", "preset", "weights", "pairs_seen", "cpu_hours", "next_sample")
               if k not in state]
    if missing or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} state (missing {missing or 'format'})")
    return state


def weights_path(state: dict, state_path: Path) -> Path:
    return (Path(state_path).parent / state["weights"]).resolve()


def segment_dir(state: dict, runs: Path) -> Path:
    """The run folder of the segment that continues ``state``: named by the pairs seen at its start."""
    return Path(runs) / f"from-{int(state['pairs_seen'])}"


def segment_config(state: dict, state_path: Path, runs: Path, overrides: dict | None = None):
    """The TrainConfig of the segment continuing ``state`` (recipe from ``state['continue']``, then overrides
    whose value is not None). The network starts from the committed weights at any resolution (RoPE)."""
    from dpm_ros.model import read_model_meta
    from dpm_ros.training.data import DataConfig
    from dpm_ros.training.loss import LossWeights
    from dpm_ros.training.trainer import TrainConfig
    recipe = dict(CONTINUE_DEFAULTS)
    recipe.update(state.get("continue", {}))
    recipe.update({k: v for k, v in (overrides or {}).items() if v is not None})
    weights = weights_path(state, state_path)
    model_cfg = read_model_meta(weights)["config"]
    if model_cfg["preset"] != state["preset"]:
        raise ValueError(f"{weights} is preset {model_cfg['preset']}, the curve state says {state['preset']}")
    height = int(recipe["height"] or model_cfg["height"])
    width = int(recipe["width"] or model_cfg["width"])
    data = DataConfig(height=height, width=width, curriculum_steps=int(recipe["curriculum_steps"]),
                      p_flying=float(recipe["p_flying"]), p_room_modes=float(recipe["p_room_modes"]),
                      p_augment=float(recipe["p_augment"]))
    return TrainConfig(preset=state["preset"], out=str(segment_dir(state, runs)), steps=int(recipe["steps"]),
                       batch=int(recipe["batch"]), lr=float(recipe["lr"]), warmup=int(recipe["warmup"]),
                       schedule=recipe["schedule"], ckpt_minutes=float(recipe["ckpt_minutes"]),
                       ckpt_every=int(recipe["ckpt_every"]), log_every=int(recipe["log_every"]),
                       threads=int(recipe["threads"]), workers=int(recipe["workers"]),
                       precision=recipe["precision"], init=str(weights),
                       data_offset=int(state["next_sample"]), data=data,
                       loss=LossWeights(match=float(recipe["match_weight"]),
                                        match_drop_radius=int(recipe["match_drop_radius"])))


def continue_training(state_path: Path = DEFAULT_STATE, runs: Path = DEFAULT_RUNS, overrides: dict | None = None,
                      max_steps: int | None = None, progress: bool = True, device: str = "auto",
                      max_minutes: float | None = None) -> dict:
    """Run (or resume) the segment continuing the committed state, in this process, until its ``steps``,
    ``max_steps`` more steps or SIGTERM/SIGINT (checkpointed). Returns {step, out, checkpoint}."""
    from dpm_ros.training.trainer import CHECKPOINT_NAME, Trainer, TrainConfig
    state = load_state(state_path)
    out = segment_dir(state, runs)
    saved = out / "train_config.json"
    if (out / CHECKPOINT_NAME).exists() and saved.exists():
        cfg = TrainConfig.from_dict(json.loads(saved.read_text()))    # resume exactly what was started
        for key in ("threads", "workers"):
            if overrides and overrides.get(key) is not None:
                setattr(cfg, key, int(overrides[key]))
    else:
        cfg = segment_config(state, state_path, runs, overrides)
        out.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        (out / "curve_base.json").write_text(json.dumps(
            {k: state[k] for k in ("pairs_seen", "cpu_hours", "next_sample", "weights")}, indent=2) + "\n")
    trainer = Trainer(cfg, resume=True, device=device, progress=progress)
    trainer.run(max_steps=max_steps, max_minutes=max_minutes)
    pairs = int(state["pairs_seen"]) + trainer.step * cfg.batch * trainer.world
    return {"step": trainer.step, "out": str(out), "checkpoint": str(out / CHECKPOINT_NAME),
            "pairs_seen": pairs, "wall_s": round(trainer.wall_s, 1), "cpu_s": round(trainer.cpu_s, 1),
            "device": str(trainer.device), "precision": str(trainer.amp_dtype or "fp32")}


def newest_checkpoint(runs: Path) -> Path:
    found = sorted(Path(runs).glob("*/last.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no checkpoint under {runs}/*/last.pt (start one with `dpm curve continue`)")
    return found[-1]


def checkpoint_position(ckpt: Path) -> dict:
    """Pairs seen and CPU-hours of a segment checkpoint on the whole curve (segment base + this segment)."""
    import torch
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    base_file = Path(ckpt).parent / "curve_base.json"
    base = json.loads(base_file.read_text()) if base_file.exists() else {"pairs_seen": 0, "cpu_hours": 0.0}
    cfg = state["config"]
    world = int(state.get("world", 1))
    pairs = int(base["pairs_seen"]) + int(state["step"]) * int(cfg["batch"]) * world
    return {"step": int(state["step"]), "pairs_seen": pairs,
            "cpu_hours": float(base["cpu_hours"]) + float(state.get("cpu_s", 0.0)) / 3600.0,
            "next_sample": int(cfg.get("data_offset", 0)) + int(state["step"]) * int(cfg["batch"]) * world,
            "height": int(state["model_config"]["height"]), "width": int(state["model_config"]["width"])}


def evaluate_checkpoint(ckpt: Path, pairs: int = 200, cache_dir: Path | None = Path("runs/eval_cache"),
                        progress: bool = False) -> dict:
    """Held-out metrics (model and static) of a checkpoint, at the resolution it trains at, plus ``"parallax"``:
    :func:`dpm_ros.training.diagnose.parallax_gain` on the same pairs (does view 1's depth use the second view?)."""
    from dpm_ros.training import evaluate as ev
    from dpm_ros.training.diagnose import parallax_gain
    net = ev.load_weights(Path(ckpt))
    samples = ev.load_eval_set(pairs, net.config.height, net.config.width, cache_dir, progress)
    preds = ev.predict_model(net, samples, 16, progress)
    results = ev.evaluate_methods({"model": preds, "static": [ev.static_from(p) for p in preds]}, samples, progress)
    if len(samples) >= 2:   # the true pairs' predictions are reused: one extra pass, with I2 := I1
        results["parallax"] = parallax_gain(lambda x: preds if x is samples else ev.predict_model(net, x, 16, progress),
                                            samples, ("true_I2", "I2=I1"))
    return results


def format_row(pos: dict, results: dict, ckpt: Path) -> str:
    """One learning-curve row; the parallax gain is Lrel(P1(t1,π1) | I2 := I1) − Lrel(P1(t1,π1) | true I2)
    (> 0: view 1's depth uses the second view; ≈ 0: it is monocular)."""
    m, s = results["model"], results["static"]
    gain = f"{results['parallax']['gain']['p1_t1_pi1']:+.4f}" if "parallax" in results else "–"
    return (f"| {pos['pairs_seen']:,} | {pos['cpu_hours']:.2f} | {pos['height']}×{pos['width']} "
            f"| {m['lrel_p1_t1_pi1']:.4f} | {gain} | {m['of_epe_fwd']:.5f} / {s['of_epe_fwd']:.5f} "
            f"| {m['mask_iou_learned']:.3f} / {m['mask_iou_learned_view2']:.3f} "
            f"| {Path(ckpt).parent.name} step {pos['step']} | {time.strftime('%Y-%m-%d', time.gmtime())} |")


def append_row(card: Path, row: str) -> int:
    """Append ``row`` to the learning-curve table of ``card`` (creating the section at the end when absent).
    Returns the number of data rows now in the table."""
    card = Path(card)
    text = card.read_text() if card.exists() else ""
    lines = text.splitlines()
    try:
        start = lines.index(TABLE_TITLE)
    except ValueError:
        lines += ["", TABLE_TITLE, "", TABLE_HEADER, "|" + "---|" * (TABLE_HEADER.count("|") - 1)]
        start = len(lines) - 4
    i = start + 1
    while i < len(lines) and not lines[i].startswith("|"):
        i += 1
    if i >= len(lines) or lines[i] != TABLE_HEADER:
        raise ValueError(f"{card}: the table under {TABLE_TITLE!r} does not have the expected header")
    end = i + 2
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines.insert(end, row)
    atomic_write_bytes(card, ("\n".join(lines) + "\n").encode())
    return end - (i + 2) + 1


def adopt(ckpt: Path, state_path: Path, pos: dict) -> Path:
    """Make a checkpoint the committed state: its weights over the state's weights file (+ JSON record) and the
    curve position in the state file (so the next clone continues from here). Returns the weights path."""
    from dpm_ros.model import save_model
    from dpm_ros.model.checkpoint import read_model_meta, stored_dtype
    from dpm_ros.training import evaluate as ev
    state = load_state(state_path)
    target = weights_path(state, state_path)
    net = ev.load_weights(Path(ckpt))
    # the committed file keeps its dtype (fp16 halves a commit) and its history; this segment is added to it
    dtype = stored_dtype(target) if target.is_file() else None
    record = dict(read_model_meta(target).get("record") or {}) if target.is_file() else {}
    record.pop("stored_as", None)   # described the previous file
    record["curve"] = {"pairs_seen": pos["pairs_seen"], "cpu_hours": round(pos["cpu_hours"], 3),
                       "segment": Path(ckpt).parent.name, "segment_step": pos["step"],
                       "stored_as": str(dtype or "float32").replace("torch.", "")}
    save_model(net, target, record=record, dtype=dtype)
    state.update(pairs_seen=pos["pairs_seen"], cpu_hours=round(pos["cpu_hours"], 4), next_sample=pos["next_sample"])
    state.setdefault("segments", []).append({"segment": Path(ckpt).parent.name, "steps": pos["step"],
                                             "pairs_seen": pos["pairs_seen"]})
    atomic_write_bytes(state_path, (json.dumps(state, indent=2) + "\n").encode())
    return target


def is_curve_process(pid: int) -> bool:
    """True when ``pid`` is alive and runs ``dpm ... curve continue`` (so `dpm curve stop` signals nothing else)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    text = " ".join(c.decode(errors="replace") for c in cmd)
    return bool(re.search(r"\bcurve\b.*\bcontinue\b", text))
