"""Small file-system helpers shared by the key file, the store and restore."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from pathlib import Path

from .errors import StorageError, StoreFull

__all__ = ["write_atomic", "write_new", "fsync_dir", "fsync_file", "syncfs", "punch_hole", "storage_error"]


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
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def syncfs(path: Path) -> None:
    """Flush everything written to the file system that holds ``path`` (syncfs(2))."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Give back the blocks and cached pages of ``length`` bytes at ``offset`` (they read as zeros after; the
    size stays). Raises OSError, EOPNOTSUPP where the file system cannot."""
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray, fsync: bool, cache: bool = True) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    if fsync:
        os.fsync(fd)
        if not cache:  # flushed, so the pages can go now, and be the next ones written
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def write_new(path: str, data: bytes | bytearray, mode: int = 0o644, fsync: bool = True, cache: bool = True) -> bool:
    """Write ``data`` as a new file at ``path``, born whole: an unnamed file (O_TMPFILE) in its directory,
    written (and fsync'd, with ``fsync``), then linked at ``path``. A crash leaves no file and no temp file.
    ``cache=False`` (with ``fsync``): its pages leave the page cache once flushed.
    One change to a directory where ``write_atomic`` makes two (a temp name, then the rename), which on a
    busy ext4 was most of a small file's cost. False where this file system or kernel cannot (no O_TMPFILE,
    no /proc): use ``write_atomic``. Raises FileExistsError if ``path`` exists."""
    try:
        fd = os.open(os.path.dirname(path), os.O_WRONLY | os.O_TMPFILE, mode)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return False
        raise storage_error(exc, path) from exc
    try:
        _write_all(fd, data, fsync, cache)
        # linkat(AT_SYMLINK_FOLLOW) of the descriptor's /proc link (os.link takes that form when given a dir
        # fd, ignored for an absolute path); AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH
        os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=fd, follow_symlinks=True)
    except FileExistsError:
        raise
    except FileNotFoundError as exc:
        if not os.path.exists(f"/proc/self/fd/{fd}"):
            return False  # no /proc
        raise storage_error(exc, path) from exc
    except OSError as exc:
        raise storage_error(exc, path) from exc
    finally:
        os.close(fd)
    return True


def write_atomic(
    path: str | Path,
    data: bytes | bytearray,
    mode: int = 0o644,
    tmp_dir: Path | None = None,
    fsync: bool = True,
    cache: bool = True,
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
            _write_all(fd, data, fsync, cache)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise storage_error(exc, str(path)) from exc
