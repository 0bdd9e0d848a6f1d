"""Atomic writes: write a hidden temporary beside the target, fsync it, os.replace it over the final name, so a
reader or a killed writer sees the old complete file (or folder) or the new one, never a partial one."""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def temp_path(path: str | os.PathLike) -> Path:
    """A temporary in `path`'s folder, `.<name>.<pid>.<thread>.<random>.tmp`: unique per process and thread,
    hidden and ending in `.tmp`, so globs for the final names (`part-*.parquet`) skip it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_native_id()}.{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def replacing(path: str | os.PathLike, fsync: Callable[[int], None] = os.fsync) -> Iterator[Path]:
    """Yield a temporary path beside `path` for the caller to create (a file, or a folder); on success it is
    fsynced (a folder: every file in it, then the folder), renamed over `path` (a folder replaces a folder
    there, which is removed first), and the rename is fsynced; on any exception it is removed and the old
    `path` is untouched. `fsync(fd)` flushes each descriptor (tests substitute it)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        _sync(tmp, fsync)
        if tmp.is_dir() and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)  # os.replace cannot rename over a non-empty folder
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` with `data` atomically."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str, encoding: str | None = None) -> None:
    """Replace `path` with `text` atomically (`encoding` as for Path.write_text: None is the locale's)."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def create_text(path: str | os.PathLike, text: str) -> bool:
    """Write `path` whole, only if it does not exist yet (a hard link of a synced temporary: atomic, and the
    first of several processes racing to create it wins). Returns whether this call created it."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        tmp.write_text(text)
        _sync_file(tmp, os.fsync)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        _fsync_dir(path.parent)
        return True
    finally:
        _remove(tmp)


def _sync(tmp: Path, fsync: Callable[[int], None]) -> None:
    if tmp.is_dir():
        for folder, _, files in os.walk(tmp, topdown=False):
            for name in files:
                _sync_file(Path(folder) / name, fsync)
            _fsync_dir(Path(folder))
    else:
        _sync_file(tmp, fsync)


def _sync_file(file: Path, fsync: Callable[[int], None]) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Best effort: make a rename in `path` durable (folders cannot be opened or synced on some platforms)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(tmp: Path) -> None:
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
