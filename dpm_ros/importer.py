"""``dpm import``: a folder or glob of images, a video file or a TUM-style ``rgb.txt`` list → a rosbag2 MCAP that
``dpm play`` / ``dpm replay`` / the node take as they are (no ROS needed: rosbags + OpenCV).

Per frame, all with the frame's stamp and ``frame_id``:
  - ``TOPIC``                 sensor_msgs/Image rgb8 (``--format raw``), or ``TOPIC/compressed``
                              sensor_msgs/CompressedImage jpeg/png (image_transport's convention: the node subscribes
                              there with ``image_transport:=compressed``);
  - ``<ns of TOPIC>/camera_info`` sensor_msgs/CameraInfo when intrinsics are given (``--K`` or a calibration YAML),
                              scaled to the written image size;
  - ``DEPTH_TOPIC``           sensor_msgs/Image 16UC1 (millimetres) or 32FC1 (metres), when depth images are given.
Stamps: ``start + i / rate``, or numbers in the file names, or one per line of a timestamps file, or the TUM list's
first column; kept as integer nanoseconds from the decimal text (no float rounding of 10-digit Unix times).
"""
from __future__ import annotations

import glob
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def decimal_ns(text: str, ns_per_unit: int = 1_000_000_000) -> int:
    """Decimal text of a time in some unit → integer nanoseconds, exactly (rounded below 1 ns)."""
    from decimal import Decimal, InvalidOperation

    try:
        value = Decimal(text.strip()) * ns_per_unit
    except InvalidOperation:
        raise ValueError(f"not a number: '{text}'") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"not a time ≥ 0: '{text}'")
    return int(value.to_integral_value())


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


@dataclass
class FrameList:
    """What to import: image files (or one video), each with its stamp (ns) when the source gives one."""
    kind: str                              # "images" | "video"
    files: list[Path] = field(default_factory=list)
    stamps: Optional[list[int]] = None     # ns, from a TUM list
    video: Optional[Path] = None
    fps: float = 0.0                       # video's own rate (0 = unknown)
    count: int = 0                         # frames (video: as the container reports, may be approximate)


def tum_list(path: Path) -> tuple[list[int], list[Path]]:
    """(stamps ns, files) of a TUM-style list: ``timestamp filename`` per line, ``#`` comments; files relative to
    the list's folder."""
    stamps, files = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            stamps.append(decimal_ns(parts[0]))
            files.append(path.parent / parts[1])
        except (ValueError, IndexError):
            raise ValueError(f"{path}:{n}: expected 'timestamp filename', got '{line}'") from None
    if not files:
        raise ValueError(f"{path}: no 'timestamp filename' lines")
    return stamps, files


def find_frames(src: str) -> FrameList:
    """Resolve SRC (folder, glob, video file, TUM list) to a FrameList. ValueError/FileNotFoundError naming SRC."""
    path = Path(src)
    if any(ch in src for ch in "*?["):
        files = sorted((Path(p) for p in glob.glob(src) if Path(p).suffix.lower() in IMAGE_SUFFIXES),
                       key=_natural_key)
        if not files:
            raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) match '{src}'")
        return FrameList("images", files, count=len(files))
    if not path.exists():
        raise FileNotFoundError(f"'{src}' does not exist")
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                       key=_natural_key)
        if not files:
            raise FileNotFoundError(f"folder '{src}' holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return FrameList("images", files, count=len(files))
    if path.suffix.lower() == ".txt":
        stamps, files = tum_list(path)
        return FrameList("images", files, stamps=stamps, count=len(files))
    if path.suffix.lower() in VIDEO_SUFFIXES:
        import cv2

        cap = cv2.VideoCapture(str(path))
        try:
            if not cap.isOpened():
                raise ValueError(f"video '{src}' cannot be opened by OpenCV (unsupported codec or not a video)")
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        finally:
            cap.release()
        return FrameList("video", video=path, fps=fps if math.isfinite(fps) and fps > 0 else 0.0, count=max(count, 0))
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return FrameList("images", [path], count=1)
    raise ValueError(f"'{src}': not a folder, glob, video ({', '.join(VIDEO_SUFFIXES)}), image or TUM .txt list")


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file (grey and 16-bit images converted). ValueError naming the file."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot read image '{path}' (missing, truncated or not an image)")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f"image '{path}': unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_depth(path: Path, units_per_metre: float) -> np.ndarray:
    """(H, W) float32 metres of a single-channel depth image (0 / non-finite = no depth → NaN)."""
    import cv2

    d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if d is None:
        raise ValueError(f"cannot read depth image '{path}' (missing, truncated or not an image)")
    if d.ndim != 2:
        raise ValueError(f"depth image '{path}' has {d.shape[2]} channels, expected one")
    m = d.astype(np.float32) / np.float32(units_per_metre)
    m[~np.isfinite(m) | (m <= 0)] = np.nan
    return m


def video_frames(path: Path) -> Iterator[tuple[int, np.ndarray, float]]:
    """(index, RGB frame, position in s as the container says) of every decodable frame of a video."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        i = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield i, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), float(cap.get(cv2.CAP_PROP_POS_MSEC)) / 1e3
            i += 1
    finally:
        cap.release()


def stamps_from_names(files: list[Path], ns_per_unit: int) -> list[int]:
    """Stamps in ns: the last number in each file's stem in the given unit (e.g. 1305031102.175304.png in s;
    cam_1700000000123.png in ms). ValueError naming a file without a number; stamps must increase."""
    out = []
    for f in files:
        nums = _NUMBER.findall(f.stem)
        if not nums:
            raise ValueError(f"file name '{f.name}' holds no number to take a stamp from")
        out.append(decimal_ns(nums[-1], ns_per_unit))
    for a, b, f in zip(out, out[1:], files[1:]):
        if b <= a:
            raise ValueError(f"stamp from '{f.name}' ({b} ns) does not increase (previous {a} ns): sort or rename the "
                             "files")
    return out


def read_timestamps(path: Path, n: int) -> list[int]:
    """Stamps in ns: one time in seconds per non-comment line (first column); exactly ``n`` of them."""
    out = []
    for k, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            out.append(decimal_ns(line.split()[0]))
        except ValueError:
            raise ValueError(f"{path}:{k}: not a time in seconds: '{line}'") from None
    if len(out) != n:
        raise ValueError(f"timestamps file '{path}' has {len(out)} stamps for {n} frames")
    return out


@dataclass
class Calibration:
    """Pinhole intrinsics for a given image size (None = the size of the imported images)."""
    K: np.ndarray
    D: np.ndarray
    distortion_model: str = "plumb_bob"
    size_hw: Optional[tuple[int, int]] = None


def parse_K(text: str) -> Calibration:
    """``fx,fy,cx,cy`` (pixels of the source images)."""
    try:
        fx, fy, cx, cy = (float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise ValueError(f"--K expects fx,fy,cx,cy (pixels), got '{text}'") from None
    if not (fx > 0 and fy > 0 and all(math.isfinite(v) for v in (cx, cy))):
        raise ValueError(f"--K: focal lengths must be > 0 and the principal point finite, got '{text}'")
    return Calibration(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]), np.zeros(5))


def load_calibration_yaml(path: Path) -> Calibration:
    """A ROS camera calibration YAML (camera_info_manager / camera_calibration format: image_width, image_height,
    camera_matrix{rows, cols, data}, distortion_model, distortion_coefficients{data})."""
    import yaml

    try:
        y = yaml.safe_load(Path(path).read_text())
        K = np.asarray(y["camera_matrix"]["data"], float).reshape(3, 3)
        size = (int(y["image_height"]), int(y["image_width"]))
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"calibration '{path}' is not a ROS camera calibration YAML (image_width, image_height, "
                         f"camera_matrix.data with 9 numbers): {type(exc).__name__}: {exc}") from None
    D = np.asarray((y.get("distortion_coefficients") or {}).get("data") or [], float)
    if not (K[0, 0] > 0 and K[1, 1] > 0 and np.isfinite(K).all()):
        raise ValueError(f"calibration '{path}': camera_matrix needs fx, fy > 0 (got {K[0, 0]}, {K[1, 1]})")
    return Calibration(K, D, str(y.get("distortion_model") or "plumb_bob"), size)


def parse_size(text: str) -> tuple[str, float, float]:
    """``--resize``: ``WxH`` (pixels) → ("size", W, H), or a factor ``0.5`` → ("factor", f, f)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if m:
        w, h = int(m.group(1)), int(m.group(2))
        if w < 1 or h < 1:
            raise ValueError(f"--resize: size must be ≥ 1x1, got '{text}'")
        return "size", float(w), float(h)
    try:
        f = float(text)
    except ValueError:
        raise ValueError(f"--resize expects WxH or a factor, got '{text}'") from None
    if not (0 < f <= 16):
        raise ValueError(f"--resize factor must be in (0, 16], got {f}")
    return "factor", f, f


def target_size(resize: Optional[tuple[str, float, float]], h: int, w: int) -> tuple[int, int]:
    """(H, W) of the written images for a source image of h×w."""
    if resize is None:
        return h, w
    kind, a, b = resize
    if kind == "size":
        return int(b), int(a)
    return max(1, int(round(h * a))), max(1, int(round(w * b)))


@dataclass
class ImportOptions:
    topic: str = "/camera/image_raw"
    fmt: str = "raw"                     # raw | jpeg | png
    jpeg_quality: int = 90
    frame_id: str = "camera_optical_frame"
    rate: Optional[float] = None         # Hz; default: the video's own rate, else 10
    start: float = 1.0                   # s, stamp of the first frame when stamps come from the rate
    stamps_from_names: Optional[int] = None     # unit of the numbers in the file names (ns per unit)
    timestamps: Optional[Path] = None
    resize: Optional[tuple[str, float, float]] = None
    calibration: Optional[Calibration] = None
    camera_info_topic: Optional[str] = None
    depth: Optional[str] = None          # folder / glob / TUM list of depth images
    depth_scale: float = 1000.0          # depth image units per metre (1000 = mm; TUM = 5000)
    depth_encoding: str = "16UC1"        # 16UC1 mm | 32FC1 m
    depth_topic: str = "/camera/depth/image_raw"
    max_frames: Optional[int] = None
    every: int = 1
    skip_unreadable: bool = False
    progress: bool = True


@dataclass
class ImportStats:
    frames: int = 0
    skipped: list = field(default_factory=list)   # (file, reason)
    depth_frames: int = 0
    size_hw: tuple = (0, 0)
    K: Optional[np.ndarray] = None
    topics: dict = field(default_factory=dict)
    first_stamp: int = 0    # ns
    last_stamp: int = 0


def camera_info_topic(image_topic: str) -> str:
    """``/camera/image_raw`` → ``/camera/camera_info`` (the image topic's namespace)."""
    ns = image_topic.rstrip("/").rsplit("/", 1)[0]
    return f"{ns}/camera_info"


def _compressed_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str, fmt: str, quality: int):
    import cv2

    from dpm_ros.bag import _header, typestore

    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {fmt} image")
    # format string as image_transport writes it: "<encoding>; <codec> compressed <transport encoding>"
    return typestore().types["sensor_msgs/msg/CompressedImage"](
        header=_header(stamp_ns, frame_id), format=f"rgb8; {fmt} compressed bgr8",
        data=np.asarray(buf, np.uint8).ravel())


def _depth_msg(metres: np.ndarray, stamp_ns: int, frame_id: str, encoding: str):
    """sensor_msgs/Image of a depth map in metres: 32FC1 metres, or 16UC1 millimetres with 0 = no depth (REP 118)."""
    from dpm_ros.bag import image_msg

    if encoding == "32FC1":
        return image_msg(metres.astype(np.float32), stamp_ns, frame_id)
    mm = np.where(np.isfinite(metres), np.round(metres * 1000.0), 0.0)
    return image_msg(np.clip(mm, 0, 65535).astype(np.uint16), stamp_ns, frame_id)


def _camera_info(cal: Calibration, src_hw: tuple[int, int], out_hw: tuple[int, int], stamp_ns: int, frame_id: str):
    from dpm_ros.bag import camera_info_msg
    from dpm_ros.geometry.camera import scale_intrinsics

    K = scale_intrinsics(cal.K, cal.size_hw or src_hw, out_hw)
    msg = camera_info_msg(K, out_hw[0], out_hw[1], stamp_ns, frame_id)
    if cal.D.size:
        msg.d = np.asarray(cal.D, float)
    msg.distortion_model = cal.distortion_model
    return msg, K


def _depth_files(spec: str) -> tuple[list[Path], Optional[list[float]]]:
    frames = find_frames(spec)
    if frames.kind != "images":
        raise ValueError(f"--depth '{spec}': expected depth images (folder, glob or TUM depth.txt), not a video")
    return frames.files, frames.stamps


def _associate(image_stamps: list[float], depth_stamps: list[float], max_dt: float = 0.02) -> list[Optional[int]]:
    """Index of the depth stamp nearest each image stamp (None beyond ``max_dt`` s), vectorised."""
    d = np.asarray(depth_stamps, float)
    order = np.argsort(d)
    d = d[order]
    t = np.asarray(image_stamps, float)
    j = np.clip(np.searchsorted(d, t), 1, len(d) - 1) if len(d) > 1 else np.zeros(len(t), int)
    if len(d) > 1:
        j = np.where(np.abs(d[j - 1] - t) <= np.abs(d[j] - t), j - 1, j)
    ok = np.abs(d[j] - t) <= max_dt
    return [int(order[k]) if good else None for k, good in zip(j, ok)]


def _rate_ns(start_s: float, k: int, rate_hz: float) -> int:
    """Stamp of frame ``k`` at ``rate_hz`` from ``start_s``, in ns."""
    return decimal_ns(repr(float(start_s))) + round(k * 1e9 / rate_hz)


def import_frames(src: str, out: str | Path, opt: ImportOptions, overwrite: bool = False) -> ImportStats:
    """Write SRC (see ``find_frames``) to the rosbag2 ``out`` (``.mcap`` = one file). Nothing is left at ``out``
    when an error stops the import."""
    import cv2
    from tqdm import tqdm

    from dpm_ros.bag import SequenceBagWriter, image_msg

    if opt.fmt not in ("raw", "jpeg", "png"):
        raise ValueError(f"--format must be raw, jpeg or png, got '{opt.fmt}'")
    if opt.depth_encoding not in ("16UC1", "32FC1"):
        raise ValueError(f"--depth-encoding must be 16UC1 or 32FC1, got '{opt.depth_encoding}'")
    if opt.every < 1:
        raise ValueError(f"--every must be ≥ 1, got {opt.every}")
    if opt.rate is not None and not (opt.rate > 0 and math.isfinite(opt.rate)):
        raise ValueError(f"--rate must be > 0 Hz, got {opt.rate}")
    if not opt.topic.startswith("/"):
        raise ValueError(f"--topic must be an absolute topic name (/camera/image_raw), got '{opt.topic}'")
    from dpm_ros.output_files import check_output, commit_output

    out = check_output(out, overwrite, [src])   # --overwrite replaces only a bag, never SRC or an unrelated folder
    frames = find_frames(src)

    # --- which frames, with which stamps
    n_total = frames.count
    index = list(range(0, n_total, opt.every)) if frames.kind == "images" else None
    if frames.kind == "images":
        files = [frames.files[i] for i in index]
        if opt.max_frames is not None:
            files, index = files[:opt.max_frames], index[:opt.max_frames]
        if opt.timestamps is not None:
            given = read_timestamps(opt.timestamps, n_total)
            stamps = [given[i] for i in index]
        elif opt.stamps_from_names is not None:
            stamps = stamps_from_names(files, opt.stamps_from_names)
        elif frames.stamps is not None and opt.rate is None:
            stamps = [frames.stamps[i] for i in index]
        else:
            rate = opt.rate or 10.0
            stamps = [_rate_ns(opt.start, k * opt.every, rate) for k in range(len(files))]
        source = ((i, f, s) for i, f, s in zip(index, files, stamps))
        n_out = len(files)
    else:
        if opt.stamps_from_names is not None:
            raise ValueError("--stamps-from-names needs image files, not a video")
        rate = opt.rate or frames.fps or 10.0
        ts = read_timestamps(opt.timestamps, n_total) if opt.timestamps is not None else None
        limit = opt.max_frames

        def video_source():
            k = 0
            for i, rgb, _ in video_frames(frames.video):
                if i % opt.every:
                    continue
                if limit is not None and k >= limit:
                    return
                stamp = ts[i] if ts is not None and i < len(ts) else _rate_ns(opt.start, i, rate)
                yield i, rgb, stamp
                k += 1
        source = video_source()
        n_est = (n_total + opt.every - 1) // opt.every if n_total else None
        n_out = min(n_est, opt.max_frames) if (n_est and opt.max_frames) else (n_est or opt.max_frames)

    depth_files, depth_for = None, None
    if opt.depth:
        depth_files, depth_stamps = _depth_files(opt.depth)
        if frames.kind == "images" and depth_stamps is not None and frames.stamps is not None:
            # two TUM lists: nearest depth stamp to each image stamp (TUM's associate.py rule, 20 ms)
            assoc = _associate([frames.stamps[i] * 1e-9 for i in index], [d * 1e-9 for d in depth_stamps])
            depth_for = {i: a for i, a in zip(index, assoc)}
        elif frames.kind == "images" and len(depth_files) != n_total:
            raise ValueError(f"--depth '{opt.depth}' holds {len(depth_files)} images for {n_total} frames (pairs "
                             "are taken in sorted order; give TUM lists to associate by stamp)")
        else:
            depth_for = None  # by index

    info_topic = opt.camera_info_topic or camera_info_topic(opt.topic)
    image_topic = opt.topic.rstrip("/") + ("/compressed" if opt.fmt != "raw" else "")
    stats = ImportStats()
    if not out.parent.is_dir():
        raise FileNotFoundError(f"output folder '{out.parent}' does not exist")
    # written beside OUT under a hidden name, moved into place only when complete
    tmp = out.with_name(f".{out.stem}.importing{out.suffix}")
    writer = SequenceBagWriter(tmp, storage="sqlite3" if out.suffix == ".db3" else "mcap", overwrite=True)
    written_path = tmp
    ok = False
    try:
        bar = tqdm(total=n_out, desc="dpm import", unit="frame", disable=not opt.progress)
        last = -1
        for i, item, stamp in source:
            try:
                rgb = read_image(item) if isinstance(item, Path) else item
            except ValueError as exc:
                if not opt.skip_unreadable:
                    raise
                stats.skipped.append((str(item), str(exc)))
                bar.update(1)
                continue
            if not stamp > last:
                raise ValueError(f"frame {i} ({item if isinstance(item, Path) else 'video'}): stamp {stamp} ns does "
                                 f"not increase (previous {last} ns)")
            last = ns = stamp
            src_hw = rgb.shape[:2]
            out_hw = target_size(opt.resize, *src_hw)
            if out_hw != src_hw:
                rgb = cv2.resize(rgb, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_AREA)
            if stats.frames == 0:
                stats.size_hw, stats.first_stamp = out_hw, stamp
            elif out_hw != stats.size_hw:
                raise ValueError(f"frame {i} ({item if isinstance(item, Path) else 'video'}) is {src_hw[1]}x"
                                 f"{src_hw[0]}, the first was another size: give --resize WxH")
            if opt.calibration is not None:
                info, stats.K = _camera_info(opt.calibration, src_hw, out_hw, ns, opt.frame_id)
                writer.write(info_topic, info, ns)
                stats.topics[info_topic] = stats.topics.get(info_topic, 0) + 1
            if opt.fmt == "raw":
                writer.write(image_topic, image_msg(np.ascontiguousarray(rgb), ns, opt.frame_id), ns)
            else:
                writer.write(image_topic, _compressed_msg(rgb, ns, opt.frame_id, opt.fmt, opt.jpeg_quality), ns)
            stats.topics[image_topic] = stats.topics.get(image_topic, 0) + 1
            if depth_files is not None:
                k = depth_for.get(i) if depth_for is not None else i
                if k is not None and k < len(depth_files):
                    d = read_depth(depth_files[k], opt.depth_scale)
                    if d.shape != src_hw:
                        raise ValueError(f"depth image '{depth_files[k]}' is {d.shape[1]}x{d.shape[0]}, its colour "
                                         f"image {src_hw[1]}x{src_hw[0]}")
                    if out_hw != src_hw:  # nearest: never blend depth across edges
                        d = cv2.resize(d, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_NEAREST)
                    writer.write(opt.depth_topic, _depth_msg(d, ns, opt.frame_id, opt.depth_encoding), ns)
                    stats.depth_frames += 1
                    stats.topics[opt.depth_topic] = stats.topics.get(opt.depth_topic, 0) + 1
            stats.frames += 1
            stats.last_stamp = stamp
            bar.update(1)
        bar.close()
        if stats.frames == 0:
            raise ValueError(f"'{src}': no frame could be read")
        writer.close()
        commit_output(written_path, out)   # an old bag (checked above) is replaced only now
        ok = True
    finally:
        if not ok:
            import shutil

            try:
                writer.close()
            except Exception:
                pass
            if written_path.exists():
                shutil.rmtree(written_path, ignore_errors=True) if written_path.is_dir() else written_path.unlink()
    return stats
