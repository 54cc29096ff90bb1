"""Small file-system helpers shared by the key file, the store and restore."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from pathlib import Path

from .errors import StorageError, StoreFull

__all__ = ["write_atomic", "fsync_dir", "fsync_file", "syncfs", "storage_error"]


def storage_error(exc: OSError, what: str) -> StorageError:
    """Translate an OSError on Portal's own state into the user-facing error."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"no space left to write {what}")
    return StorageError(f"cannot write {what}: {exc.strerror or exc}")


def fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: Path) -> None:
    """Flush everything written to the file system that holds ``path`` (syncfs(2))."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: str | Path, data: bytes | bytearray, mode: int = 0o644, tmp_dir: Path | None = None, fsync: bool = True
) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never a mix.

    Temp file in ``tmp_dir`` (same file system; default: beside ``path``), write, fsync, rename.
    The containing directory is not fsync'd here: callers that need the name durable call
    ``fsync_dir`` (the store batches that). With ``fsync=False`` the caller fsyncs ``path``
    later, before it relies on the content surviving a power loss.
    """
    head, name = os.path.split(path)
    tmp = os.path.join(tmp_dir or head, f".{name}.{os.getpid()}.{threading.get_ident():x}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise storage_error(exc, str(path)) from exc
