"""Score a node's output bag against a synthetic input bag, and draw the demo overview.

Everything is read back from bags, as a user would see it: the node's outputs (``/dpm/points``, ``/dpm/motion_mask``,
``/dpm/object_labels``, ``/dpm/objects``, ``/dpm/odometry``) from the recorded bag, and the ground truth regenerated
from the input bag's ``/dpm/synth_info``. Metrics follow dpm_theory.md (per-pair shared normalisation). No ROS.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dpm_ros.bag import header_ns
from dpm_ros.geometry import rotation_angle_deg
from dpm_ros.geometry.metrics import ape, epe, lrel, mask_iou, normalise_pair, rpe_trajectory
from dpm_ros.pointcloud import cloud_from_bytes

OUTPUT_TOPICS = ("/dpm/points", "/dpm/motion_mask", "/dpm/object_labels", "/dpm/objects", "/dpm/odometry")


@dataclass
class PairOutputs:
    """The node's outputs for one pair, decoded. Arrays at the cloud's (output) resolution unless stated."""
    stamp_ns: int
    dt: float = 0.0
    xyz: np.ndarray | None = None          # (h, w, 3) P1(t1,π1), NaN invalid
    velocity: np.ndarray | None = None     # (h, w, 3) per second
    mask: np.ndarray | None = None         # (H, W) bool at input resolution
    labels: np.ndarray | None = None       # (H, W) uint16 at input resolution
    objects: list = field(default_factory=list)  # (id, R 3×3, t 3)
    odom: np.ndarray | None = None         # 4×4 pose of the camera in odom


def _quat_to_matrix(q) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    return Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()


def read_outputs(path: str | Path) -> dict[int, PairOutputs]:
    """Decode the node's outputs of a recorded/replayed bag, keyed by I1's stamp (ns)."""
    from rosbags.highlevel import AnyReader

    from dpm_ros.bag import distro_typestore

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"output bag '{path}' does not exist")
    out: dict[int, PairOutputs] = {}
    with AnyReader([path], default_typestore=distro_typestore()) as reader:
        conns = [c for c in reader.connections if c.topic in OUTPUT_TYPES_SET]
        if not conns:   # rosbags reads every topic when given no connection
            return out
        for conn, _, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            ns = header_ns(msg)
            rec = out.setdefault(ns, PairOutputs(ns))
            if conn.topic == "/dpm/points":
                cloud = cloud_from_bytes(bytes(msg.data), int(msg.height), int(msg.width), int(msg.point_step))
                rec.xyz = np.stack([cloud["x"], cloud["y"], cloud["z"]], -1).astype(np.float64)
                rec.velocity = np.stack([cloud["vx"], cloud["vy"], cloud["vz"]], -1).astype(np.float64)
            elif conn.topic == "/dpm/motion_mask":
                rows = np.asarray(msg.data, np.uint8).reshape(int(msg.height), int(msg.step))
                rec.mask = rows[:, :int(msg.width)] > 0
            elif conn.topic == "/dpm/object_labels":
                rec.labels = np.frombuffer(bytes(msg.data), "<u2" if not msg.is_bigendian else ">u2").reshape(
                    int(msg.height), int(msg.step) // 2)[:, :int(msg.width)]
            elif conn.topic == "/dpm/objects":
                rec.dt = float(msg.dt)
                for o in msg.objects:
                    t = o.motion.translation
                    rec.objects.append((int(o.id), _quat_to_matrix(o.motion.rotation), np.array([t.x, t.y, t.z])))
            elif conn.topic == "/dpm/odometry":
                T = np.eye(4)
                T[:3, :3] = _quat_to_matrix(msg.pose.pose.orientation)
                p = msg.pose.pose.position
                T[:3, 3] = (p.x, p.y, p.z)
                rec.odom = T
    return out


OUTPUT_TYPES_SET = frozenset(OUTPUT_TOPICS)


def _resample(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resample of an (H, W, ...) array to (h, w, ...) at pixel centres (no-op when equal)."""
    H, W = a.shape[:2]
    if (H, W) == (h, w):
        return a
    rows = np.minimum(((np.arange(h) + 0.5) * H / h).astype(int), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * W / w).astype(int), W - 1)
    return a[rows][:, cols]


def _to_output(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """An input-resolution array on the engine's (h, w) output grid: its centre crop to the output's aspect (what
    the engine saw), then nearest-neighbour resampled."""
    from dpm_ros.engine.pair_io import crop_image
    return _resample(crop_image(a, h, w), h, w)


def _crop_window(H: int, W: int, h: int, w: int) -> np.ndarray:
    """bool (H, W): the input pixels inside the engine's centre crop for an (h, w) output."""
    from dpm_ros.engine.pair_io import crop_box
    top, left, ch, cw = crop_box(H, W, h, w)
    m = np.zeros((H, W), bool)
    m[top:top + ch, left:left + cw] = True
    return m


@dataclass
class SequenceScore:
    """Per-pair metrics (lists) and trajectory metrics of one run; ``table()`` gives the markdown."""
    per_pair: dict = field(default_factory=dict)
    trajectory: dict = field(default_factory=dict)
    n_pairs: int = 0

    def mean(self, key: str) -> float:
        v = [x for x in self.per_pair.get(key, []) if np.isfinite(x)]
        return float(np.mean(v)) if v else float("nan")

    def summary(self) -> dict:
        s = {k: self.mean(k) for k in self.per_pair}
        s.update(self.trajectory)
        s["n_pairs"] = self.n_pairs
        return s


METRIC_ROWS = (
    ("lrel_p1_t1_pi1", "Lrel P1(t1,π1)", "per-pair normalised, lower is better"),
    ("lrel_p1_t2_pi1", "Lrel P1(t2,π1)", "= P1(t1) + v·dt from the cloud"),
    ("of_epe_fwd", "object-flow EPE fwd", "P1(t2,π1) − P1(t1,π1), normalised units"),
    ("of_epe_fwd_moving", "object-flow EPE fwd, moving px", "same, on ground-truth moving pixels only"),
    ("mask_iou", "motion-mask IoU", "/dpm/motion_mask vs ground-truth moving pixels (an ε-mask misses movers "
                                    "slower than eps_rel·depth per pair, even the oracle's)"),
    ("obj_rpe_rot_deg", "object RPE rot (°)", "objects matched to ground truth by label overlap"),
    ("obj_rpe_trans", "object RPE trans", "normalised units"),
    ("ego_ape_rmse_sim3", "ego APE RMSE (m, Sim(3)-aligned)", "/dpm/odometry vs ground-truth camera poses"),
    ("ego_rpe_rot_deg", "ego RPE rot (°/frame pair)", "consecutive outputs"),
    ("ego_rpe_trans_rel", "ego RPE trans (relative)", "‖Δt error‖ / ‖Δt ground truth‖"),
)


def score_sequence(input_bag: str | Path, outputs: dict[int, PairOutputs], sequence=None) -> SequenceScore:
    """Metrics of ``outputs`` (from :func:`read_outputs`) against the synthetic ground truth of ``input_bag``."""
    from dpm_ros.bag import read_synth_info
    from dpm_ros.synthetic import SyntheticSequence

    if sequence is None:
        info = read_synth_info(input_bag)
        sequence = SyntheticSequence(**info["params"], renderer=info.get("renderer", "auto"))
    index = {int(round(sequence.stamp(i) * 1e9)): i for i in range(len(sequence))}
    score = SequenceScore()
    add = lambda k, v: score.per_pair.setdefault(k, []).append(float(v))  # noqa: E731
    odo_est, odo_ref = [], []
    for ns in sorted(outputs):
        rec = outputs[ns]
        i = index.get(ns)
        if i is None or rec.xyz is None:
            continue
        j = index.get(int(round(ns + rec.dt * 1e9)))
        if j is None or j == i:
            continue
        gt = sequence.pair(i, j)
        score.n_pairs += 1
        h, w = rec.xyz.shape[:2]
        g1, g2 = _to_output(gt["p1_t1_pi1"], h, w), _to_output(gt["p1_t2_pi1"], h, w)
        valid = np.isfinite(rec.xyz).all(-1) & _to_output(gt["valid1"], h, w)
        if valid.sum() < 3:
            continue
        pred = {"p1_t1_pi1": rec.xyz, "p1_t2_pi1": rec.xyz + rec.velocity * rec.dt}
        pn, gn, (fp, fg) = normalise_pair(pred, {"p1_t1_pi1": g1, "p1_t2_pi1": g2},
                                          {"p1_t1_pi1": valid, "p1_t2_pi1": valid})
        add("lrel_p1_t1_pi1", lrel(pn["p1_t1_pi1"], gn["p1_t1_pi1"], valid))
        add("lrel_p1_t2_pi1", lrel(pn["p1_t2_pi1"], gn["p1_t2_pi1"], valid))
        f_pred, f_gt = pn["p1_t2_pi1"] - pn["p1_t1_pi1"], gn["p1_t2_pi1"] - gn["p1_t1_pi1"]
        add("of_epe_fwd", epe(f_pred, f_gt, valid))
        moving_small = _to_output(gt["moving1"], h, w) & valid
        if moving_small.any():
            add("of_epe_fwd_moving", epe(f_pred, f_gt, moving_small))
        if rec.mask is not None:
            gt_mask = _resample(gt["moving1"], *rec.mask.shape)
            seen = _resample(gt["valid1"], *rec.mask.shape) & _crop_window(*rec.mask.shape, h, w)
            add("mask_iou", mask_iou(rec.mask, gt_mask, seen))
        if rec.labels is not None and rec.objects:
            inst = _resample(gt["instances1"], *rec.labels.shape)
            T_c1_w = np.linalg.inv(gt["T_w_c1"])
            for oid, R, t in rec.objects:
                hits = inst[(rec.labels == oid) & (inst > 0)]
                if hits.size == 0:
                    continue
                k = int(np.bincount(hits).argmax())
                M = T_c1_w @ gt["object_motions"][k] @ gt["T_w_c1"]   # t1 → t2 in camera 1
                add("obj_rpe_rot_deg", rotation_angle_deg(R.T @ M[:3, :3]))
                add("obj_rpe_trans", np.linalg.norm(t / fp - M[:3, 3] / fg))
        if rec.odom is not None:
            odo_est.append(rec.odom)
            odo_ref.append(sequence.frame(i)["T_w_c"])
    if len(odo_est) >= 3:
        est, ref = np.array(odo_est), np.array(odo_ref)
        score.trajectory["ego_ape_rmse_sim3"] = ape(ref, est, align=True, correct_scale=True)["rmse"]
        r = rpe_trajectory(ref, est, 1)
        score.trajectory["ego_rpe_rot_deg"] = r["rot_deg"]["mean"]
        # translation RPE relative to the true step length: scale-free for an up-to-scale trajectory
        step_ref = np.linalg.norm(np.diff(ref[:, :3, 3], axis=0), axis=1)
        step_est = np.linalg.norm(np.diff(est[:, :3, 3], axis=0), axis=1)
        s = np.median(step_ref / np.maximum(step_est, 1e-12))
        score.trajectory["ego_rpe_trans_rel"] = float(np.mean(np.abs(s * step_est - step_ref)
                                                              / np.maximum(step_ref, 1e-12)))
    return score


def metrics_markdown(scores: dict[str, SequenceScore], title: str) -> str:
    """A markdown table: one column per method (e.g. {"model": ..., "oracle": ...})."""
    names = list(scores)
    lines = [f"# {title}", "", "| metric | " + " | ".join(names) + " | note |",
             "| --- | " + " | ".join("---:" for _ in names) + " | --- |"]
    summaries = {n: s.summary() for n, s in scores.items()}
    for key, label, note in METRIC_ROWS:
        vals = [summaries[n].get(key, float("nan")) for n in names]
        lines.append(f"| {label} | " + " | ".join(f"{v:.4f}" if np.isfinite(v) else "–" for v in vals)
                     + f" | {note} |")
    lines.append("| pairs scored | " + " | ".join(str(summaries[n]["n_pairs"]) for n in names) + " | |")
    return "\n".join(lines) + "\n"


def _aligned_xz(ref: np.ndarray, est: np.ndarray) -> np.ndarray:
    """Estimated camera positions Sim(3)-aligned to the reference (N, 3)."""
    from dpm_ros.geometry import umeyama
    R, t, s = umeyama(est, ref, with_scale=True)
    return s * est @ R.T + t


def draw_overview(outputs: dict[int, PairOutputs], sequence, score: SequenceScore, out_png: str | Path,
                  title: str = "dpm_ros demo") -> Path:
    """One PNG: input frames, depth, motion masks, objects with velocity arrows, flow, trajectory, metrics."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dpm_ros.geometry import estimate_focal

    index = {int(round(sequence.stamp(i) * 1e9)): i for i in range(len(sequence))}
    scored = [ns for ns in sorted(outputs) if ns in index and outputs[ns].xyz is not None
              and index.get(int(round(ns + outputs[ns].dt * 1e9))) is not None]
    if not scored:
        raise ValueError("no output pair matches a frame of the input sequence: nothing to draw")
    # the pair with the most moving pixels in the middle half of the run
    mid = scored[len(scored) // 4: max(len(scored) // 4 + 1, 3 * len(scored) // 4)]
    ns = max(mid, key=lambda n: sequence.frame(index[n])["instances"].astype(bool).sum())
    rec = outputs[ns]
    i, j = index[ns], index[int(round(ns + rec.dt * 1e9))]
    f1, f2, gt = sequence.frame(i), sequence.frame(j), sequence.pair(i, j)

    fig, axes = plt.subplots(2, 5, figsize=(20, 8.4))
    ax = axes.ravel()
    show = lambda a, img, t, **kw: (a.imshow(img, **kw), a.set_title(t), a.axis("off"))  # noqa: E731
    show(ax[0], f1["image"], f"I1 (newest), t1 = {f1['stamp']:.2f} s")
    show(ax[1], f2["image"], f"I2, t2 = {f2['stamp']:.2f} s (dt = {rec.dt:+.2f} s)")
    z = rec.xyz[..., 2]
    show(ax[2], z, "predicted depth z of P1(t1,π1) (model units)", cmap="magma_r")
    show(ax[3], f1["depth"], "ground-truth depth (m)", cmap="magma_r")
    overlay = f1["image"].astype(float) / 255 * 0.5
    if rec.mask is not None:
        m = _resample(rec.mask, *overlay.shape[:2])
        overlay[m] = overlay[m] * 0.4 + np.array([1.0, 0.1, 0.1]) * 0.6
    show(ax[4], overlay, "/dpm/motion_mask (red) over I1")
    show(ax[5], gt["moving1"], "ground-truth moving pixels", cmap="gray")
    # objects: labels + velocity arrows (projected with the focal estimated from the cloud)
    labels = rec.labels if rec.labels is not None else np.zeros(f1["image"].shape[:2], np.uint16)
    show(ax[6], np.where(labels[..., None] > 0, plt.cm.tab10(labels % 10)[..., :3], f1["image"] / 255 * 0.35),
         "/dpm/object_labels + velocity (0.5 s)")
    h, w = rec.xyz.shape[:2]
    try:
        f = estimate_focal(np.nan_to_num(rec.xyz, nan=0.0) + np.array([0, 0, 1e-9]))
    except ValueError:
        f = None
    if f is not None:
        from dpm_ros.engine.pair_io import crop_box
        lab_small = _to_output(labels, h, w)
        top, left, ch, cw = crop_box(*labels.shape[:2], h, w)
        sy, sx = ch / h, cw / w
        for oid in np.unique(lab_small[lab_small > 0]):
            sel = (lab_small == oid) & np.isfinite(rec.xyz).all(-1)
            if sel.sum() < 3:
                continue
            X, V = rec.xyz[sel].mean(0), rec.velocity[sel].mean(0)
            Y = X + 0.5 * V
            pu = lambda P: ((f * P[0] / P[2] + (w - 1) / 2 + 0.5) * sx - 0.5 + left,  # noqa: E731
                            (f * P[1] / P[2] + (h - 1) / 2 + 0.5) * sy - 0.5 + top)
            (u0, v0), (u1, v1) = pu(X), pu(Y)
            ax[6].annotate("", (u1, v1), (u0, v0), arrowprops=dict(arrowstyle="->", color="yellow", lw=2))
    speed = np.linalg.norm(rec.velocity, axis=-1)
    show(ax[7], speed, "‖v‖ of /dpm/points vx,vy,vz (units/s)", cmap="viridis")
    # trajectory, top-down (x, z of the world frame)
    odo = [(index[n], outputs[n].odom) for n in sorted(outputs) if n in index and outputs[n].odom is not None]
    a = ax[8]
    ref_all = np.array([sequence.frame(k)["T_w_c"][:3, 3] for k in range(len(sequence))])
    a.plot(ref_all[:, 0], ref_all[:, 2], "k-", lw=2, label="ground truth")
    if len(odo) >= 3:
        ref = np.array([sequence.frame(k)["T_w_c"][:3, 3] for k, _ in odo])
        est = _aligned_xz(ref, np.array([T[:3, 3] for _, T in odo]))
        a.plot(est[:, 0], est[:, 2], "r.-", label="/dpm/odometry (Sim(3)-aligned)")
    a.set_title("camera trajectory, top view (x, z)")
    a.set_aspect("equal", "datalim")
    a.legend(loc="best", fontsize=8)
    s = score.summary()
    text = "\n".join(f"{label}: {s[key]:.4f}" for key, label, _ in METRIC_ROWS if key in s and np.isfinite(s[key]))
    ax[9].axis("off")
    ax[9].text(0, 1, f"{title}\n{score.n_pairs} pairs\n\n{text}", va="top", family="monospace", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png
