"""Atomic, owner-only file writes: nothing is ever half-written."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

OWNER_ONLY_FILE = 0o600
OWNER_ONLY_DIR = 0o700


def sha256_of(path: Path, *, chunk_size: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _make_missing_dirs(path: Path) -> None:
    """Create `path` and its missing parents owner-only; directories that exist keep their mode."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=OWNER_ONLY_DIR)
        except FileExistsError:  # made meanwhile by another process
            continue
        os.chmod(folder, OWNER_ONLY_DIR)


def make_private_dir(path: Path) -> Path:
    """Create a directory (and its missing parents) readable by the owner only."""
    path = Path(path)
    _make_missing_dirs(path)
    os.chmod(path, OWNER_ONLY_DIR)
    return path


def fsync_dir(path: Path) -> None:
    """Make a rename or new file in `path` durable (fsync the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: Path, *, mode: int = OWNER_ONLY_FILE, binary: bool = True) -> Iterator[Any]:
    """Open a temporary file beside `path`; on success fsync and rename it into place.

    On any exception the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    _make_missing_dirs(path.parent)  # a folder this write creates is owner-only, whatever the file's mode
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes, *, mode: int = OWNER_ONLY_FILE) -> None:
    """Write bytes to `path` atomically, owner-only by default."""
    with atomic_write(path, mode=mode) as stream:
        stream.write(data)


def write_json_atomic(path: Path, obj: Any, *, mode: int = OWNER_ONLY_FILE) -> None:
    """Write JSON (indented, sorted keys, trailing newline) to `path` atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"), mode=mode)


def publish_dir(staging: Path, final: Path) -> None:
    """Move a fully written staging directory to its final name in one rename."""
    for child in staging.rglob("*"):
        if child.is_file():
            with open(child, "rb") as stream:
                os.fsync(stream.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    fsync_dir(final.parent)


def npz_bytes(arrays: dict[str, Any] | list[tuple[str, Any]]) -> bytes:
    """Serialise arrays as a deterministic .npz: stored entries, fixed 1980 date, given order.

    np.savez stamps the current time into each zip entry; a de-identified
    record must carry no date, and a model file must hash the same each time.
    """
    items = arrays.items() if isinstance(arrays, dict) else arrays
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in items:
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o600 << 16
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()
