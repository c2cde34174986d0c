"""Scale-aligned depth of image 1 on real pairs with ground truth (../shared/data): the FlyingThings3D pair
(t, t+1; moving camera and objects) and the Middlebury 2014 "Motorcycle" stereo pair (left, right; static).

Protocol (the standard monocular one): centre-crop both images and the ground truth to the network's aspect ratio,
resize images with the engine's own resizing and the ground truth with nearest neighbour, take the z of
``p1_t1_pi1`` (camera 1's optical frame, model units) as the predicted depth, scale it by median(gt) / median(pred)
over valid pixels, then report AbsRel = mean |d̂ − d| / d and δ<1.25 = share of pixels with max(d̂/d, d/d̂) < 1.25.
A constant prediction (what a model with no depth knowledge scores after alignment) is reported beside it, and so
is the "lower rows are nearer" rule (depth = rows from the bottom + 1, what a floor prior predicts): Spearman of the
model's depth against ground truth (``rank_corr``) and against that rule (``rank_corr_row_rule``; near 1 = the model
predicts the floor prior, not the scene).

Ego-motion on Middlebury (true relative pose: camera 2 is 0.193 m along camera 1's +x, no rotation): the
pipeline's default ego-motion (``DPMPipeline``, symmetric engine) on (left, right) and on (right, left); the
translation direction error is the angle between ``T_c1_c2``'s translation and ±x (degrees), with the rotation angle.

CLI: ``python -m dpm_ros.training.real_eval --weights engines/dpm_small.safetensors [--json PATH]``.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FLYINGTHINGS_DIR = "raft3d_flyingthings"
MIDDLEBURY_DIR = "skimage_middlebury_motorcycle"
# FlyingThings3D (data README): fx = fy = 1050 px, baseline 1 unit -> depth = fx / disparity (up to scale).
FLYINGTHINGS_FX = 1050.0
# Middlebury 2014 Motorcycle at 741 x 500 (data README): f px, baseline m, doffs px; depth = f·B / (d + doffs).
MIDDLEBURY_F, MIDDLEBURY_BASELINE_M, MIDDLEBURY_DOFFS = 994.978, 0.193001, 31.086
MIDDLEBURY_CX, MIDDLEBURY_CY = 311.193, 254.877
DELTA_THRESHOLD = 1.25


@dataclass(frozen=True)
class RealPair:
    """One real pair: ``img1``/``img2`` uint8 (H, W, 3) RGB, ``depth1`` float64 (H, W) ground-truth depth of image 1
    along the optical axis (metres for Middlebury, arbitrary units for FlyingThings), ``valid1`` bool (H, W)."""
    name: str
    img1: np.ndarray
    img2: np.ndarray
    depth1: np.ndarray
    valid1: np.ndarray
    unit: str


# --------------------------------------------------------------------------------------------------- file readers
def read_pfm(path: str | Path) -> np.ndarray:
    """A PFM file as float32 (H, W) ('Pf') or (H, W, 3) ('PF'), first row = top of the image.

    PFM: a text header "Pf|PF", "W H", scale (negative = little-endian), then rows bottom to top.
    (cv2.imread rejects the RAFT-3D files: their first header line ends in a space.)
    """
    path = Path(path)
    with open(path, "rb") as f:
        tokens: list[bytes] = []
        while len(tokens) < 4:  # magic, width, height, scale; whitespace-separated
            line = f.readline()
            if not line:
                raise ValueError(f"{path}: truncated PFM header (got {tokens})")
            tokens += line.split()
        magic, width, height, scale = tokens[:4]
        if magic not in (b"Pf", b"PF"):
            raise ValueError(f"{path}: not a PFM file (magic {magic!r}, expected b'Pf' or b'PF')")
        channels = 3 if magic == b"PF" else 1
        try:
            width, height, scale = int(width), int(height), float(scale)
        except ValueError:
            raise ValueError(f"{path}: bad PFM header {tokens[:4]}") from None
        dtype = "<f4" if scale < 0 else ">f4"
        data = np.frombuffer(f.read(), dtype=dtype)
    expect = width * height * channels
    if data.size != expect:
        raise ValueError(f"{path}: PFM body holds {data.size} floats, header says {width}x{height}x{channels}")
    shape = (height, width, channels) if channels == 3 else (height, width)
    return np.flipud(data.reshape(shape)).astype(np.float32)


def read_rgb(path: str | Path) -> np.ndarray:
    """A PNG as uint8 (H, W, 3) RGB; ValueError when missing or unreadable."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{path}: cannot read the image (missing or not an image file)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _check_dir(root: Path, sub: str) -> Path:
    folder = Path(root) / sub
    if not folder.is_dir():
        raise ValueError(f"{folder} not found: pass the shared data folder (holding {sub}/) as data_root")
    return folder


def load_flyingthings(data_root: str | Path = DEFAULT_DATA_ROOT) -> RealPair:
    """The FlyingThings3D pair (t, t+1) with depth1 = fx / disparity1 (units of the unknown baseline); valid where
    the disparity is finite and > 0."""
    folder = _check_dir(Path(data_root), FLYINGTHINGS_DIR)
    disp = read_pfm(folder / "disp1.pfm").astype(np.float64)
    valid = np.isfinite(disp) & (disp > 0)
    depth = np.where(valid, FLYINGTHINGS_FX / np.where(valid, disp, 1.0), np.nan)
    return RealPair("flyingthings", read_rgb(folder / "image1.png"), read_rgb(folder / "image2.png"), depth, valid,
                    "baseline units")


def load_middlebury(data_root: str | Path = DEFAULT_DATA_ROOT) -> RealPair:
    """The Middlebury Motorcycle stereo pair (left, right) with depth1 = f·B / (d + doffs) in metres (2.1–5.0 m);
    inf disparity is invalid."""
    folder = _check_dir(Path(data_root), MIDDLEBURY_DIR)
    with np.load(folder / "motorcycle_disp.npz", allow_pickle=False) as z:
        disp = z[z.files[0]].astype(np.float64)
    valid = np.isfinite(disp) & (disp + MIDDLEBURY_DOFFS > 0)
    depth = np.where(valid, MIDDLEBURY_F * MIDDLEBURY_BASELINE_M / np.where(valid, disp + MIDDLEBURY_DOFFS, 1.0),
                     np.nan)
    return RealPair("middlebury", read_rgb(folder / "motorcycle_left.png"), read_rgb(folder / "motorcycle_right.png"),
                    depth, valid, "m")


LOADERS = {"flyingthings": load_flyingthings, "middlebury": load_middlebury}


# --------------------------------------------------------------------------------------------------- crop / resize
def centre_crop_box(height: int, width: int, aspect: float) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the largest centred window of ``height`` x ``width`` with w / h = ``aspect``."""
    if height < 1 or width < 1 or not aspect > 0:
        raise ValueError(f"centre crop needs a positive size and aspect, got {width}x{height}, aspect {aspect}")
    if width / height > aspect:
        h, w = height, max(1, int(round(height * aspect)))
    else:
        h, w = max(1, int(round(width / aspect))), width
    return (height - h) // 2, (width - w) // 2, h, w


def crop_to_network(pair: RealPair, net_height: int, net_width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                               np.ndarray]:
    """(img1, img2, depth, valid): images centre-cropped to the network's aspect ratio (the engine resizes them),
    depth and valid cropped the same way and resized to (net_height, net_width) by nearest neighbour."""
    top, left, h, w = centre_crop_box(*pair.depth1.shape, net_width / net_height)
    window = (slice(top, top + h), slice(left, left + w))
    depth = cv2.resize(np.where(pair.valid1, pair.depth1, 0.0)[window], (net_width, net_height),
                       interpolation=cv2.INTER_NEAREST)
    valid = cv2.resize(pair.valid1[window].astype(np.uint8), (net_width, net_height),
                       interpolation=cv2.INTER_NEAREST).astype(bool)
    img1 = np.ascontiguousarray(pair.img1[window])
    img2 = np.ascontiguousarray(pair.img2[window])
    return img1, img2, depth, valid & (depth > 0)


# --------------------------------------------------------------------------------------------------- metrics
def _valid_pixels(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    mask = np.isfinite(gt) & (gt > 0) & np.isfinite(pred)
    if valid is not None:
        if np.shape(valid) != gt.shape:
            raise ValueError(f"valid mask shape {np.shape(valid)} differs from ground truth shape {gt.shape}")
        mask &= np.asarray(valid, bool)
    if not mask.any():
        raise ValueError("no valid pixels: ground truth must be finite and > 0 somewhere inside the valid mask")
    return pred[mask], gt[mask]


def depth_errors(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> dict:
    """AbsRel = mean |d̂ − d| / d and δ<1.25 = share with max(d̂/d, d/d̂) < 1.25 over valid pixels (no alignment).

    ``pred`` must be > 0 where valid (align and clamp first: :func:`median_align`)."""
    p, g = _valid_pixels(pred, gt, valid)
    if (p <= 0).any():
        raise ValueError(f"{int((p <= 0).sum())} predicted depths are <= 0; align with median_align first")
    ratio = np.maximum(p / g, g / p)
    return {"abs_rel": float(np.mean(np.abs(p - g) / g)), "delta1": float(np.mean(ratio < DELTA_THRESHOLD)),
            "n_pixels": int(g.size)}


def median_align(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """(s·pred, s) with s = median(gt) / median(pred) over valid pixels. Predicted depths <= 0 (points behind the
    camera) are first raised to a floor of 1e-6 × max |pred| so the ratio stays defined; they then score as badly as
    a near-zero depth does."""
    pred = np.asarray(pred, np.float64)
    p, g = _valid_pixels(pred, gt, valid)
    floor = max(1e-6 * float(np.max(np.abs(p))), 1e-12)
    pred = np.maximum(pred, floor)
    scale = float(np.median(g) / np.median(np.maximum(p, floor)))
    return pred * scale, scale


def aligned_depth_errors(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> dict:
    """:func:`depth_errors` after :func:`median_align`; adds ``scale`` and ``nonpositive_share`` (share of valid
    pixels the prediction put at z <= 0)."""
    p, _ = _valid_pixels(pred, gt, valid)
    aligned, scale = median_align(pred, gt, valid)
    return {**depth_errors(aligned, gt, valid), "scale": scale, "nonpositive_share": float(np.mean(p <= 0))}


def rank_correlation(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Spearman rank correlation of predicted and true depth over valid pixels (scale-free: 1 = same depth order,
    0 = none, −1 = reversed); shows whether a model orders depth at all when its AbsRel loses to a constant."""
    from scipy.stats import spearmanr
    p, g = _valid_pixels(pred, gt, valid)
    if np.ptp(p) == 0 or np.ptp(g) == 0:
        return 0.0
    return float(spearmanr(p, g)[0])   # [0]: SciPy 1.8 (Humble minimum) has no .statistic


def row_rule_depth(height: int, width: int) -> np.ndarray:
    """The "lower rows are nearer" rule as a depth map (H, W): rows counted from the bottom, + 1 (scale-free)."""
    return np.repeat((height - np.arange(height, dtype=np.float64))[:, None], width, axis=1)


def translation_direction_error_deg(t: np.ndarray, true_dir: np.ndarray) -> float:
    """Angle (degrees, 0–180) between translation ``t`` (3,) and the true direction ``true_dir`` (3,); 180 for a
    zero translation (no direction at all)."""
    t, d = np.asarray(t, np.float64), np.asarray(true_dir, np.float64)
    n = float(np.linalg.norm(t))
    if not np.isfinite(n) or n == 0.0:
        return 180.0
    return float(np.degrees(np.arccos(np.clip(t @ d / (n * np.linalg.norm(d)), -1.0, 1.0))))


def constant_baseline_errors(gt: np.ndarray, valid: np.ndarray | None = None) -> dict:
    """Errors of a constant depth (= median of the ground truth, what any constant scores after alignment)."""
    _, g = _valid_pixels(np.zeros_like(gt, np.float64), gt, valid)
    return depth_errors(np.full(np.shape(gt), np.median(g)), gt, valid)


# --------------------------------------------------------------------------------------------------- evaluation
def as_engine(engine_or_model):
    """An Engine from an Engine, a DPMNet (torch backend, CPU, symmetric: both passes, as the node runs it) or a
    model file path."""
    from dpm_ros.engine import Engine, load_engine
    if isinstance(engine_or_model, Engine):
        return engine_or_model
    if isinstance(engine_or_model, (str, Path)):
        return load_engine(engine_or_model, symmetric=True) if Path(engine_or_model).suffix == ".safetensors" \
            else load_engine(engine_or_model)
    from dpm_ros.model import DPMNet
    if isinstance(engine_or_model, DPMNet):
        from dpm_ros.engine.torch_backend import TorchEngine
        return TorchEngine(engine_or_model, device="cpu", symmetric=True,
                           source=f"<{engine_or_model.config.preset} model>")
    raise ValueError(f"expected an Engine, a DPMNet or a model file path, got {type(engine_or_model).__name__}")


def evaluate_pair(engine, pair: RealPair) -> dict:
    """Scale-aligned depth errors of image 1 for ``engine`` and the constant baseline on one pair."""
    info = engine.info()
    img1, img2, gt, valid = crop_to_network(pair, info.height, info.width)
    out = engine.infer(img1, img2)
    z = out["p1_t1_pi1"][..., 2]
    if z.shape != gt.shape:
        raise ValueError(f"engine returned p1_t1_pi1 of {z.shape[1]}x{z.shape[0]}, expected its info() resolution "
                         f"{info.width}x{info.height}")
    rows = row_rule_depth(*gt.shape)
    return {"model": {**aligned_depth_errors(z, gt, valid), "rank_corr": rank_correlation(z, gt, valid),
                      "rank_corr_row_rule": rank_correlation(z, rows, valid)},
            "constant": constant_baseline_errors(gt, valid),
            "row_rule": {**aligned_depth_errors(rows, gt, valid), "rank_corr": rank_correlation(rows, gt, valid)},
            "gt_depth_range": [float(gt[valid].min()), float(gt[valid].max())], "gt_unit": pair.unit,
            "crop_hw": list(img1.shape[:2]), "network_hw": [info.height, info.width]}


def middlebury_ego_motion(engine, pair: RealPair | None = None, data_root: str | Path = DEFAULT_DATA_ROOT) -> dict:
    """The pipeline's default ego-motion on the Middlebury pair in both orders: ``{"left_right": {...},
    "right_left": {...}}``, each with ``direction_error_deg`` (translation of T_c1_c2 vs +x resp. −x), ``rotation_deg``
    (true: 0), ``t`` (model units) and ``method``. Full-size images and the true K go in, as the node gets them."""
    from dpm_ros.pipeline import DPMPipeline, Frame
    pair = pair or load_middlebury(data_root)
    K = np.array([[MIDDLEBURY_F, 0, MIDDLEBURY_CX], [0, MIDDLEBURY_F, MIDDLEBURY_CY], [0, 0, 1.0]])
    pipe = DPMPipeline(engine)
    out = {}
    for name, a, b, sign in (("left_right", pair.img1, pair.img2, 1.0), ("right_left", pair.img2, pair.img1, -1.0)):
        r = pipe.process(Frame(a, 0.0, K), Frame(b, 0.1, K))
        R, t = r.T_c1_c2[:3, :3], r.T_c1_c2[:3, 3]
        rot = float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0))))
        out[name] = {"direction_error_deg": translation_direction_error_deg(t, [sign, 0.0, 0.0]),
                     "rotation_deg": rot, "t": [float(v) for v in t], "method": r.ego_method}
    return out


def evaluate_real_depth(engine_or_model, data_root: str | Path = DEFAULT_DATA_ROOT) -> dict:
    """``{"datasets": {"flyingthings": {...}, "middlebury": {...}}, "ego_motion": {...}, "engine": {...}}``; each
    dataset holds ``model``, ``constant`` and ``row_rule`` with ``abs_rel``, ``delta1``, ``n_pixels`` (and the
    model's ``scale``, ``nonpositive_share``, ``rank_corr``, ``rank_corr_row_rule``; the row rule's ``rank_corr``);
    ``ego_motion`` is :func:`middlebury_ego_motion`. ``engine_or_model``: an Engine, a DPMNet or a .onnx /
    .safetensors path."""
    engine = as_engine(engine_or_model)
    info = engine.info()
    pairs = {name: load(data_root) for name, load in LOADERS.items()}
    datasets = {name: evaluate_pair(engine, pair) for name, pair in pairs.items()}
    return {"datasets": datasets, "ego_motion": middlebury_ego_motion(engine, pairs["middlebury"]),
            "engine": {"backend": info.backend, "precision": info.precision, "height": info.height,
                       "width": info.width, **{k: v for k, v in info.extra.items() if isinstance(v, (str, int))}}}


def format_table(result: dict) -> str:
    """A Markdown table: one row per dataset and method."""
    lines = ["| data | method | AbsRel ↓ | δ<1.25 ↑ | Spearman vs GT ↑ | Spearman vs row rule | pixels |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["datasets"].items():
        for method in ("model", "constant", "row_rule"):
            if method not in r:
                continue
            m = r[method]
            rank = f"{m['rank_corr']:.3f}" if "rank_corr" in m else "–"
            rows = f"{m['rank_corr_row_rule']:.3f}" if "rank_corr_row_rule" in m else ("1.000" if method == "row_rule"
                                                                                     else "–")
            lines.append(f"| {name} | {method} | {m['abs_rel']:.3f} | {m['delta1']:.3f} | {rank} | {rows} | "
                         f"{m['n_pixels']} |")
    ego = result.get("ego_motion")
    if ego:
        lines += ["", "| Middlebury ego-motion | translation direction error (°) ↓ | rotation (°, true 0) | method |",
                  "|---|---|---|---|"]
        lines += [f"| {k.replace('_', ' → ')} | {v['direction_error_deg']:.1f} | {v['rotation_deg']:.2f} | "
                  f"{v['method']} |" for k, v in ego.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpm_ros.training.real_eval", description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True, help="model file: .safetensors (torch) or .onnx")
    parser.add_argument("--data", default=str(DEFAULT_DATA_ROOT), help="shared data folder (default %(default)s)")
    parser.add_argument("--json", help="also write the result as JSON to this path")
    parser.add_argument("--height", type=int, default=None, help=".safetensors only: run the network at this "
                        "resolution (default: its own; any multiple of the patch size)")
    parser.add_argument("--width", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        model = args.weights
        if (args.height or args.width) and Path(args.weights).suffix == ".safetensors":
            from dpm_ros.engine.torch_backend import TorchEngine
            from dpm_ros.model.checkpoint import load_model
            model = TorchEngine(load_model(args.weights), device="cpu", symmetric=True, source=args.weights,
                                height=args.height, width=args.width)
        result = evaluate_real_depth(model, args.data)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
