"""rosbag2 sequences without ROS (rosbags): write synthetic sequences with ground truth, read images and ground truth
back as numpy.

A synthetic sequence bag holds, per frame (all with the frame's stamp, frame_id ``camera_optical_frame``):
  - ``/camera/image_raw``   sensor_msgs/Image rgb8;
  - ``/camera/camera_info`` sensor_msgs/CameraInfo (K, P, plumb_bob with zero distortion);
  - ``/tf``                 tf2_msgs/TFMessage, ``world`` -> ``camera_optical_frame`` (ground-truth camera pose)
                            and ``world`` -> ``object_<k>`` for each moving object k (its ground-truth pose);
  - ``/gt/depth``           sensor_msgs/Image 32FC1, z in metres, NaN where no surface (REP 118);
  - ``/gt/instances``       sensor_msgs/Image 32SC1, 0 = static, k = moving object k;
and once, at the first stamp, ``/dpm/synth_info`` std_msgs/String: JSON with the generator parameters, so that
``SyntheticSequence(**json.loads(...)["params"])`` regenerates the sequence exactly. Schemas come from rosbags'
ROS 2 Kilted typestore, so Foxglove and the ROS 2 tools open the bag. Storage: MCAP (default) or sqlite3; a path
ending in ``.mcap`` / ``.db3`` is written as one bare file, any other path as a rosbag2 directory.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import __version__
from .output_files import MCAP_MAGIC

IMAGE_TOPIC = "/camera/image_raw"
INFO_TOPIC = "/camera/camera_info"
DEPTH_TOPIC = "/gt/depth"
INSTANCES_TOPIC = "/gt/instances"
TF_TOPIC = "/tf"
SYNTH_INFO_TOPIC = "/dpm/synth_info"
WORLD_FRAME = "world"
CAMERA_FRAME = "camera_optical_frame"
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def distro_typestore():
    """A fresh rosbags typestore of the ROS 2 distribution's own types: Kilted when this rosbags knows it, else its
    newest ROS 2 distribution. The one place that picks the distribution (bag I/O, the recorder, the player)."""
    from rosbags.typesys import Stores, get_typestore

    names = [s for s in Stores.__members__ if s.startswith("ROS2_")]
    name = "ROS2_KILTED" if "ROS2_KILTED" in names else names[-1]
    return get_typestore(Stores[name])


@lru_cache(maxsize=1)
def distro_msgtypes() -> frozenset:
    """Names ('pkg/msg/Name') of the distribution's own types (nothing registered from a file)."""
    return frozenset(distro_typestore().fielddefs)


@lru_cache(maxsize=1)
def typestore():
    """The process-wide typestore of bag I/O: :func:`distro_typestore` plus the types registered from bags'
    stored definitions (:func:`register_bag_types`). The live recorder keeps its own, filled only from installed
    .msg files (``ros.bag_recorder.bag_typestore``), so a definition read from a file never changes what it writes."""
    return distro_typestore()


def _stamp(ns: int):
    Time = typestore().types["builtin_interfaces/msg/Time"]
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def _header(ns: int, frame_id: str):
    return typestore().types["std_msgs/msg/Header"](stamp=_stamp(ns), frame_id=frame_id)


def image_msg(array: np.ndarray, stamp_ns: int, frame_id: str = CAMERA_FRAME):
    """sensor_msgs/Image from (H, W, 3) uint8 RGB (rgb8), (H, W) float32 (32FC1), (H, W) int32 (32SC1) or (H, W)
    uint16 (16UC1: depth in millimetres, REP 118); little-endian data."""
    a = np.ascontiguousarray(array)
    encodings = {(3, "uint8"): "rgb8", (2, "float32"): "32FC1", (2, "int32"): "32SC1", (2, "uint16"): "16UC1"}
    enc = encodings.get((a.ndim, a.dtype.name))
    if enc is None or (enc == "rgb8" and a.shape[2] != 3):
        raise ValueError(f"image_msg: need (H, W, 3) uint8, (H, W) float32, int32 or uint16, got {a.shape} {a.dtype}")
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return typestore().types["sensor_msgs/msg/Image"](
        header=_header(stamp_ns, frame_id), height=a.shape[0], width=a.shape[1], encoding=enc, is_bigendian=0,
        step=a.strides[0], data=np.frombuffer(a.tobytes(), np.uint8))


def camera_info_msg(K: np.ndarray, height: int, width: int, stamp_ns: int, frame_id: str = CAMERA_FRAME):
    """sensor_msgs/CameraInfo of an undistorted pinhole camera with intrinsics K (3×3, pixels)."""
    types = typestore().types
    P = np.hstack([K, np.zeros((3, 1))])
    return types["sensor_msgs/msg/CameraInfo"](
        header=_header(stamp_ns, frame_id), height=height, width=width, distortion_model="plumb_bob",
        d=np.zeros(5), k=np.asarray(K, float).ravel(), r=np.eye(3).ravel(), p=P.ravel(), binning_x=0, binning_y=0,
        roi=types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def tf_msg(T_parent_child: np.ndarray, stamp_ns: int, parent: str = WORLD_FRAME, child: str = CAMERA_FRAME,
           extra: dict[str, np.ndarray] | None = None):
    """tf2_msgs/TFMessage: the pose of ``child`` in ``parent`` (4×4), plus ``extra`` {child frame: 4×4 pose in
    ``parent``}."""
    from scipy.spatial.transform import Rotation

    types = typestore().types
    transforms = []
    for name, T in [(child, T_parent_child), *(extra or {}).items()]:
        x, y, z, w = Rotation.from_matrix(T[:3, :3]).as_quat()
        tx, ty, tz = (float(v) for v in T[:3, 3])
        transform = types["geometry_msgs/msg/Transform"](
            translation=types["geometry_msgs/msg/Vector3"](x=tx, y=ty, z=tz),
            rotation=types["geometry_msgs/msg/Quaternion"](x=float(x), y=float(y), z=float(z), w=float(w)))
        transforms.append(types["geometry_msgs/msg/TransformStamped"](
            header=_header(stamp_ns, parent), child_frame_id=name, transform=transform))
    return types["tf2_msgs/msg/TFMessage"](transforms=transforms)


def _latched_qos():
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    inf = QosTime(sec=9223372036, nsec=854775807)
    return Qos(history=QosHistory.KEEP_LAST, depth=1, reliability=QosReliability.RELIABLE,
               durability=QosDurability.TRANSIENT_LOCAL, deadline=inf, lifespan=inf,
               liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=inf,
               avoid_ros_namespace_conventions=False)


class BagWriter:
    """The one rosbag2 writer: (topic, stamp ns, CDR bytes) with schemas. ``storage`` "mcap" or "sqlite3"; ``path``
    ending in .mcap / .db3: one bare file; otherwise a rosbag2 directory. ``dpm_ros.output_files`` rules: an existing
    output is replaced only with ``overwrite``,
    only when it is a bag, never one of ``inputs``, and only once the new one is complete.

    Default: written in a hidden folder beside ``path`` and moved into place by ``close``; a failure (or an
    exception in the ``with`` block) removes it. ``live`` (``dpm record``): the MCAP file being written is visible
    from the start at ``live_path`` (``path`` itself, or ``<name>.recording.mcap`` beside it while an old output is
    still there) and ``flush`` writes the pending chunk out, so a recorder killed or stopped by a full disk leaves a
    file readable up to its last complete chunk (``dpm_ros.bag.open_bag`` reads such a file)."""

    def __init__(self, path: str | Path, overwrite: bool = False, keep_partial: bool = True, inputs=(),
                 live: bool = False, storage: str = "mcap"):
        from rosbags.rosbag2 import StoragePlugin, Writer

        from dpm_ros.output_files import check_output, staging_dir

        if storage not in ("mcap", "sqlite3") or (live and storage != "mcap"):
            raise ValueError(f"storage must be 'mcap' or 'sqlite3' ('mcap' when live), got {storage!r}")
        self.path = check_output(path, overwrite, inputs)
        self._suffix = ".mcap" if storage == "mcap" else ".db3"
        self.bare = self.path.suffix in (".mcap", ".db3")
        self.keep_partial, self.live = keep_partial, live
        existed = self.path.exists()
        self._tmp = staging_dir(self.path)
        self._target = self._tmp / ("bag" if self.bare else self.path.name)   # same bytes for any name
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        try:
            self._writer = Writer(self._target, version=9, storage_plugin=plugin)
            self._writer.open()
            inner = next(self._target.glob("*" + self._suffix))
            self.live_path = inner
            if live:   # rename the open file: rosbags keeps writing to the same inode
                if self.bare:
                    self.live_path = self._free(self.path.with_name(f"{self.path.stem}.recording.mcap")) \
                        if existed else self.path
                else:
                    folder = self._free(self.path.with_name(f"{self.path.name}.recording")) if existed else self.path
                    folder.mkdir()
                    self.live_path = folder / inner.name
                os.rename(inner, self.live_path)
                shutil.rmtree(self._tmp)   # nothing hidden left behind by a kill (close recreates it)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self.connections: dict[str, object] = {}
        self.counts: dict[str, int] = {}
        self.total = 0     # messages handed to write()
        self.durable = 0   # of those, how many are in complete chunks on disk (all of them after close)

    @staticmethod
    def _free(path: Path) -> Path:
        n = 1
        candidate = path
        while candidate.exists() or candidate.is_symlink():
            n += 1
            candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
        return candidate

    def add_topic(self, topic: str, msgtype: str, qos=(), store=None) -> None:
        """Declare ``topic`` once, with its schema from ``store`` (default :func:`typestore`) and ``qos`` (rosbags
        Qos profiles offered by its publishers)."""
        if topic in self.connections:
            return
        self.connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=store if store is not None else typestore(), offered_qos_profiles=list(qos))
        self.counts[topic] = 0

    def write(self, topic: str, stamp_ns: int, data: bytes) -> None:
        self._writer.write(self.connections[topic], int(stamp_ns), data)
        self.counts[topic] += 1
        self.total += 1
        storage = getattr(self._writer, "storage", None)
        if self.live and storage is not None and getattr(storage, "chunk", None) is not None \
                and storage.chunk.bio.tell() == 0:
            storage.bio.flush()   # rosbags just closed a full chunk (1 MiB): put it on disk now
            self.durable = self.total

    def flush(self) -> None:
        """Close the pending MCAP chunk (if any) and write it to the file: what was written so far survives a kill.
        Uses rosbags' McapWriter (``close_chunk``); a no-op for other storages."""
        storage = getattr(self._writer, "storage", None) if self._writer is not None else None
        if storage is None or not hasattr(storage, "close_chunk"):
            return
        if storage.chunk.bio.tell():
            storage.close_chunk()
        storage.bio.flush()
        self.durable = self.total

    def close(self) -> Path:
        """Finish the file(s) and move them into place; returns the written path. On failure (e.g. a full disk)
        the partial output is removed (``live``: left at ``live_path``, readable up to its last complete chunk)
        and the error raised."""
        from dpm_ros.output_files import commit_output

        if self._writer is None:
            return self.path
        writer, self._writer = self._writer, None
        try:
            try:
                if self.live:
                    self._target.mkdir(parents=True, exist_ok=True)   # rosbags writes metadata.yaml there
                writer.close()
            except BaseException:
                try:
                    writer.abort()
                except OSError:
                    pass
                if not self.live:
                    raise
                raise OSError(f"could not finish '{self.live_path}' (it stays readable up to its last complete "
                              f"chunk)") from None
            self.durable = self.total
            if self.live:
                if self.bare:
                    if self.live_path != self.path:
                        os.replace(self.live_path, self.path)
                else:
                    os.replace(self._target / "metadata.yaml", self.live_path.parent / "metadata.yaml")
                    if self.live_path.parent != self.path:
                        commit_output(self.live_path.parent, self.path)
            elif self.bare:
                commit_output(next(self._target.glob("*" + self._suffix)), self.path)
            else:
                commit_output(self._target, self.path)
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        """Stop writing: drop the partial output (``live``: keep it, readable up to its last complete chunk)."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        try:
            if self.live:
                try:
                    self.flush_writer(writer)
                except OSError:
                    pass
            writer.abort()
        except OSError:
            pass
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    @staticmethod
    def flush_writer(writer) -> None:
        storage = getattr(writer, "storage", None)
        if storage is not None and hasattr(storage, "bio"):
            storage.bio.flush()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None and not self.keep_partial:   # a failed run leaves no half-written output
            self.abort()
        else:
            self.close()


class SequenceBagWriter(BagWriter):
    """:class:`BagWriter` of deserialised rosbags messages (schemas from :func:`typestore`), topics declared on
    first write; an exception in the ``with`` block removes the partial output. ``inputs``: paths the output must
    not be."""

    def __init__(self, path: str | Path, storage: str = "mcap", overwrite: bool = False, inputs=()):
        super().__init__(path, overwrite, keep_partial=False, inputs=inputs, storage=storage)

    def write(self, topic: str, msg, stamp_ns: int, latched: bool = False) -> None:  # type: ignore[override]
        """Serialise ``msg`` (a typestore message; its type is taken from the class) and write it at ``stamp_ns``."""
        msgtype = msg.__msgtype__
        self.add_topic(topic, msgtype, [_latched_qos()] if latched else ())
        super().write(topic, stamp_ns, typestore().serialize_cdr(msg, msgtype))


def write_sequence(sequence, path: str | Path, storage: str = "mcap", overwrite: bool = False,
                   progress: bool = False) -> Path:
    """Write every frame of a ``dpm_ros.synthetic.SyntheticSequence`` (see the module docstring for topics).
    ``progress``: show a tqdm bar. Returns the written path."""
    from tqdm import tqdm

    from .synthetic import gl_available

    renderer = "gl" if sequence.renderer == "gl" or (sequence.renderer == "auto" and gl_available()) else "numpy"
    info = dict(generator="dpm_ros.synthetic.SyntheticSequence", dpm_ros_version=__version__,
                params=sequence.params(), renderer=renderer, world_frame=WORLD_FRAME, camera_frame=CAMERA_FRAME,
                topics=dict(image=IMAGE_TOPIC, camera_info=INFO_TOPIC, depth=DEPTH_TOPIC,
                            instances=INSTANCES_TOPIC, tf=TF_TOPIC))
    String = typestore().types["std_msgs/msg/String"]
    with SequenceBagWriter(path, storage, overwrite) as writer:
        for i in tqdm(range(len(sequence)), desc="dpm synth", unit="frame", disable=not progress):
            f = sequence.frame(i)
            ns = stamp_ns(f["stamp"])
            if i == 0:
                writer.write(SYNTH_INFO_TOPIC, String(data=json.dumps(info)), ns, latched=True)
            objects = {f"object_{k}": T for k, T in sequence.object_poses(i).items()}
            writer.write(TF_TOPIC, tf_msg(f["T_w_c"], ns, extra=objects), ns)
            writer.write(INFO_TOPIC, camera_info_msg(f["K"], *f["image"].shape[:2], ns), ns)
            writer.write(IMAGE_TOPIC, image_msg(f["image"], ns), ns)
            writer.write(DEPTH_TOPIC, image_msg(f["depth"], ns), ns)
            writer.write(INSTANCES_TOPIC, image_msg(f["instances"], ns), ns)
    return Path(path)


def stamp_ns(seconds: float) -> int:
    """Seconds -> integer nanoseconds (rounded)."""
    return int(round(seconds * 1e9))


_RECOVERED_OPS = (0x01, 0x03, 0x04, 0x05, 0x06)   # header, schema, channel, message, chunk


def recover_mcap(src: str | Path, dst: str | Path) -> dict:
    """Copy the complete records of an MCAP file that was never closed (recorder killed, disk full: no summary or
    footer, maybe a torn last record) to ``dst`` and close it with an empty summary and a footer, so any MCAP reader
    opens it. Chunks are checked whole (their record fits in the file and decompresses to its stated size).
    Returns {"messages", "chunks", "bytes_kept", "bytes_total"}; ValueError when ``src`` is not an MCAP file."""
    import struct

    from rosbags.rosbag2.storage_mcap import decompress

    src, dst = Path(src), Path(dst)
    total = src.stat().st_size
    kept = dict(messages=0, chunks=0, bytes_kept=0, bytes_total=total)
    with open(src, "rb") as f, open(dst, "xb") as out:
        if f.read(8) != MCAP_MAGIC:
            raise ValueError(f"'{src}' is not an MCAP file (no MCAP magic)")
        out.write(MCAP_MAGIC)
        pos = 8
        while pos + 9 <= total:
            head = f.read(9)
            op, length = head[0], struct.unpack("<Q", head[1:])[0]
            if op == 0x02 or pos + 9 + length > total:          # footer, or a record cut by the kill
                break
            body = f.read(length)
            if op == 0x06:
                try:
                    start_end_size, = struct.unpack_from("<Q", body, 16)
                    crc, = struct.unpack_from("<I", body, 24)
                    n, = struct.unpack_from("<I", body, 28)
                    compression = body[32:32 + n].decode()
                    size, = struct.unpack_from("<Q", body, 32 + n)
                    records = body[40 + n:40 + n + size]
                    raw = decompress(records, compression, start_end_size, crc) if compression else records
                    if len(records) != size or len(raw) != start_end_size:
                        break
                except Exception:   # a torn or damaged chunk: stop at the last good one
                    break
                kept["chunks"] += 1
                q = 0
                while q + 9 <= len(raw):
                    kept["messages"] += raw[q] == 0x05
                    q += 9 + struct.unpack_from("<Q", raw, q + 1)[0]
            elif op == 0x05:
                kept["messages"] += 1
            if op in _RECOVERED_OPS:
                out.write(head + body)
            pos += 9 + length
        kept["bytes_kept"] = pos
        out.write(bytes([0x0F]) + struct.pack("<QI", 4, 0))                   # data end, no CRC
        out.write(bytes([0x02]) + struct.pack("<QQQI", 20, 0, 0, 0) + MCAP_MAGIC)   # footer: no summary
    return kept


def _open_unfinished_mcap(path: Path, cause: Exception):
    """A rosbags Reader on the recovered copy of an MCAP that was never closed (see ``recover_mcap``); the copy
    lives in a temporary folder removed when the reader is closed."""
    import tempfile

    from rosbags.rosbag2 import Reader

    tmp = Path(tempfile.mkdtemp(prefix="dpm_recovered_"))
    try:
        kept = recover_mcap(path, tmp / path.name)
        if kept["messages"] == 0:
            raise ValueError(f"bag '{path}' cannot be read (corrupt, truncated or not a rosbag2): {cause}; it holds "
                             "no complete message")
        reader = Reader(tmp / path.name)
        reader.open()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    import sys
    print(f"warning: bag '{path}' was never closed (recorder killed, or disk full): reading its "
          f"{kept['messages']} messages in {kept['chunks']} complete chunks ({kept['bytes_kept']} of "
          f"{kept['bytes_total']} bytes); anything after them is lost", file=sys.stderr, flush=True)
    close = reader.close

    def close_and_clean() -> None:
        try:
            close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    reader.close = close_and_clean
    return reader


def open_bag(path: str | Path):
    """An opened rosbags Reader for a rosbag2 directory or a bare .mcap / .db3 file (close it when done).
    Raises FileNotFoundError when missing, ValueError naming the file when it is corrupt, truncated or not a bag.
    An MCAP file that was never closed (killed recorder, full disk) is read up to its last complete chunk, with a
    warning (``recover_mcap``); so is a rosbag2 folder without metadata.yaml that holds one such file."""
    from rosbags.rosbag2 import Reader
    from rosbags.rosbag2.errors import ReaderError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag '{path}' does not exist")
    if path.is_dir() and not (path / "metadata.yaml").exists():
        inner = sorted(path.glob("*.mcap"))
        if len(inner) == 1:
            return open_bag(inner[0])
    try:
        reader = Reader(path)
        reader.open()
    except ReaderError as exc:
        if path.is_file() and path.suffix == ".mcap" and ("end magic" in str(exc) or "footer" in str(exc)):
            with open(path, "rb") as f:
                if f.read(8) == MCAP_MAGIC:
                    return _open_unfinished_mcap(path, exc)
        raise ValueError(f"bag '{path}' cannot be read (corrupt, truncated or not a rosbag2): {exc}") from exc
    except FileNotFoundError as exc:
        raise ValueError(f"bag '{path}' is not a rosbag2 bag (no metadata.yaml, .mcap or .db3): {exc}") from exc
    except (struct_error(), TypeError, EOFError) as exc:
        raise ValueError(f"bag '{path}' cannot be read (corrupt, truncated or not a rosbag2): "
                         f"{type(exc).__name__}: {exc}") from exc
    return reader


def iterate_messages(reader, connections):
    """(connection, timestamp ns, CDR bytes) in bag order; a corrupt record raises ValueError naming the bag."""
    from rosbags.rosbag2.errors import ReaderError
    try:
        for conn, stamp, data in reader.messages(connections=connections):
            yield conn, stamp, bytes(data)
    except (ReaderError, EOFError, ValueError, KeyError, IndexError) as exc:
        raise ValueError(f"bag '{reader.path}' is corrupt: reading a message failed: {exc}") from exc


def register_bag_types(reader, connections=None) -> None:
    """Add to ``typestore()`` every message type of ``connections`` (default: all of the bag's) that it lacks, from
    the definitions stored in the bag (MCAP schemas / rosbag2 metadata), so our own ``dpm_ros/msg/*`` and any
    custom type deserialise. ValueError naming the topic when a bag stores no definition for an unknown type."""
    from rosbags.typesys import get_types_from_msg

    store = typestore()
    added: dict = {}
    for conn in connections if connections is not None else reader.connections:
        if conn.msgtype in store.fielddefs or conn.msgtype in added:
            continue
        msgdef = getattr(conn, "msgdef", None)
        text = getattr(msgdef, "data", msgdef) if msgdef is not None else ""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"topic {conn.topic}: type {conn.msgtype} is not a standard ROS 2 type and the bag "
                             "stores no definition for it")
        try:
            types = get_types_from_msg(text, conn.msgtype)
        except Exception as exc:
            raise ValueError(f"topic {conn.topic}: the bag's definition of {conn.msgtype} cannot be parsed: "
                             f"{exc}") from None
        added.update({name: fields for name, fields in types.items() if name not in store.fielddefs})
    if added:
        store.register(added)


def struct_error():
    import struct
    return struct.error


def read_messages(path: str | Path, topics: list[str], msgtypes=None) -> Iterator[tuple[str, int, object]]:
    """(topic, bag timestamp ns, deserialised message) for ``topics``, in bag order. A topic missing from the bag
    yields nothing (rosbags reads *every* topic when given no connection: never passed on). ``msgtypes``: the
    types the caller can use; a listed topic of another type raises ValueError before anything is read, and so
    does a message whose CDR cannot be decoded (naming the bag, topic and position). Types outside the ROS 2
    typestore (``dpm_ros/msg/ObjectMotionArray``, ...) are read with the definitions stored in the bag."""
    reader = open_bag(path)
    try:
        conns = [c for c in reader.connections if c.topic in topics]
        wrong = [c for c in conns if msgtypes is not None and c.msgtype not in msgtypes]
        if wrong:
            raise ValueError(f"bag '{path}': topic {wrong[0].topic} holds {wrong[0].msgtype}, expected "
                             f"{' or '.join(msgtypes)}")
        if not conns:
            return
        register_bag_types(reader, conns)
        for i, (conn, ns, raw) in enumerate(iterate_messages(reader, conns)):
            try:
                msg = typestore().deserialize_cdr(raw, conn.msgtype)
            except Exception as exc:   # rosbags raises assorted errors on garbage bytes
                raise ValueError(f"bag '{path}': message {i} on {conn.topic} is not valid {conn.msgtype} CDR "
                                 f"({type(exc).__name__}: {exc})") from None
            yield conn.topic, ns, msg
    finally:
        reader.close()


def header_ns(msg) -> int:
    """Header stamp of a message in integer nanoseconds."""
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def image_to_numpy(msg, encoding: str | None = "rgb8") -> np.ndarray:
    """Image or CompressedImage message -> numpy via rosbags-image. ``encoding``: target colour space ("rgb8",
    "bgr8", "mono8"...) for colour images; None keeps the message's own (use for 32FC1 / 32SC1)."""
    from rosbags.image import message_to_cvimage

    if encoding is None or getattr(msg, "encoding", "") in ("32FC1", "32SC1", "16UC1", "mono16", "64FC1"):
        return np.asarray(message_to_cvimage(msg))
    return np.asarray(message_to_cvimage(msg, encoding))


def image_topics(path: str | Path) -> list[str]:
    reader = open_bag(path)
    try:
        return sorted({c.topic for c in reader.connections if c.msgtype in IMAGE_TYPES})
    finally:
        reader.close()


def read_images(path: str | Path, topic: str | None = None, encoding: str | None = "rgb8"
                ) -> Iterator[tuple[int, np.ndarray, str]]:
    """(header stamp ns, image array, frame_id) for every message of an Image/CompressedImage ``topic`` (default:
    ``/camera/image_raw`` when present, else the only image topic). Colour images come as (H, W, 3) uint8 RGB."""
    if topic is None:
        found = image_topics(path)
        if IMAGE_TOPIC in found:
            topic = IMAGE_TOPIC
        elif len(found) == 1:
            topic = found[0]
        else:
            raise ValueError(f"bag '{path}': name the image topic, candidates: {found or 'none'}")
    for _, _, msg in read_messages(path, [topic], IMAGE_TYPES):
        yield header_ns(msg), image_to_numpy(msg, encoding), msg.header.frame_id


def read_synth_info(path: str | Path) -> dict:
    """The generator JSON of a synthetic bag (``/dpm/synth_info``). ValueError if the bag has none."""
    for _, _, msg in read_messages(path, [SYNTH_INFO_TOPIC], ("std_msgs/msg/String",)):
        try:
            info = json.loads(msg.data)
        except ValueError as exc:
            raise ValueError(f"bag '{path}': {SYNTH_INFO_TOPIC} is not JSON ({exc})") from None
        if not isinstance(info, dict) or not isinstance(info.get("params"), dict):
            raise ValueError(f"bag '{path}': {SYNTH_INFO_TOPIC} has no generator 'params' object")
        return info
    raise ValueError(f"bag '{path}' has no {SYNTH_INFO_TOPIC} topic: it was not written by `dpm synth`")


def read_poses(path: str | Path, child: str = CAMERA_FRAME, parent: str = WORLD_FRAME) -> list[tuple[int, np.ndarray]]:
    """(stamp ns, 4×4 pose of ``child`` in ``parent``) for every /tf transform between those frames."""
    from scipy.spatial.transform import Rotation

    out = []
    for _, _, msg in read_messages(path, [TF_TOPIC], ("tf2_msgs/msg/TFMessage",)):
        for ts in msg.transforms:
            if ts.child_frame_id == child and ts.header.frame_id == parent:
                T = np.eye(4)
                q, t = ts.transform.rotation, ts.transform.translation
                T[:3, :3] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
                T[:3, 3] = (t.x, t.y, t.z)
                out.append((header_ns(ts), T))
    return out


def read_camera_info(path: str | Path, topic: str = INFO_TOPIC) -> tuple[np.ndarray, int, int]:
    """(K 3×3, height, width) from the first CameraInfo on ``topic``."""
    for _, _, msg in read_messages(path, [topic], ("sensor_msgs/msg/CameraInfo",)):
        return np.asarray(msg.k, float).reshape(3, 3), int(msg.height), int(msg.width)
    raise ValueError(f"bag '{path}' has no CameraInfo on {topic}")
