"""Output files of the commands that write bags (``dpm replay``, ``synth``, ``record``): what ``--overwrite`` may
replace, and replacing it only once the new output is complete.

Rules (README "Reliability"): an existing output is replaced only with ``--overwrite`` and only when it is what these
commands write: an ``.mcap`` / ``.db3`` file that starts with the MCAP / SQLite magic, or a rosbag2 folder (nothing
in it but metadata.yaml and .mcap / .db3 files). Never an input of the same command, never the working directory,
one of its parents, the home or root folder, never a symlink. The new output is written beside the old one (a
hidden sibling) and moved into place by ``os.replace`` / ``os.rename`` when it is complete, so the old output
survives a failure, a full disk or Ctrl-C.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

MCAP_MAGIC = b"\x89MCAP0\r\n"
SQLITE_MAGIC = b"SQLite format 3\x00"
BAG_FOLDER_FILES = (".mcap", ".db3", ".db3-wal", ".db3-shm", ".zstd")


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def is_bag_file(path: str | Path) -> bool:
    """An .mcap file starting with the MCAP magic, or a .db3 file starting with the SQLite magic."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    return (path.suffix == ".mcap" and _starts_with(path, MCAP_MAGIC)
            or path.suffix == ".db3" and _starts_with(path, SQLITE_MAGIC))


def is_bag_folder(path: str | Path) -> bool:
    """A rosbag2 folder: plain files only, metadata.yaml and/or bag files (at least one bag file)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    entries = list(path.iterdir())
    bags = [e for e in entries if is_bag_file(e) or e.name.endswith(".mcap.zstd")]
    others = [e for e in entries if e not in bags and not (e.name == "metadata.yaml" and e.is_file() and
                                                            not e.is_symlink())
              and not (e.is_file() and e.name.endswith((".db3-wal", ".db3-shm")))]
    return bool(bags) and not others


def check_output(path: str | Path, overwrite: bool, inputs=()) -> Path:
    """Validate an output path before anything is written (see module doc); returns it. Raises ValueError /
    FileNotFoundError with the reason."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise ValueError(f"output '{path}' is a folder reference, not a bag name")
    target = path.resolve()
    cwd = Path.cwd().resolve()
    for inp in inputs:
        src = Path(inp).resolve()
        if src == target or target in src.parents:
            raise ValueError(f"output '{path}' is (or holds) the input '{inp}'; write to another name")
        if src.is_dir() and src in target.parents:
            raise ValueError(f"output '{path}' is inside the input folder '{inp}'; write it elsewhere")
    if target == cwd or target in cwd.parents or target == Path.home().resolve() or target == Path(target.anchor):
        raise ValueError(f"output '{path}' is the working, home or root folder (or a parent of it); refusing")
    if path.is_symlink():
        raise ValueError(f"output '{path}' is a symbolic link; refusing to replace it (remove it yourself)")
    if path.exists():
        if not overwrite:
            raise ValueError(f"output '{path}' already exists (remove it, pick another name, or pass --overwrite)")
        if not (is_bag_file(path) or is_bag_folder(path)):
            raise ValueError(f"--overwrite replaces only a bag these commands write (an .mcap / .db3 file, or a "
                             f"rosbag2 folder holding only metadata.yaml and bag files); '{path}' is not one, so it "
                             "is left alone: remove or rename it yourself")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder '{path.parent}' does not exist")
    return path


def staging_dir(path: Path) -> Path:
    """A fresh hidden folder beside ``path`` (same file system, so the final move is a rename)."""
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))


def commit_output(new: Path, path: Path) -> Path:
    """Move the complete output ``new`` to ``path``, replacing an old output only now (a file by one atomic
    os.replace; a folder is renamed aside, the new one renamed in, then the old one deleted)."""
    if path.exists() and (path.is_dir() or new.is_dir()):
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent)) / "old"
        os.rename(path, aside)
        try:
            os.rename(new, path)
        except OSError:
            os.rename(aside, path)
            raise
        shutil.rmtree(aside.parent, ignore_errors=True)
    else:
        os.replace(new, path)
    return path
