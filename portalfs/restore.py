"""Restore: write a tree (or one file) from a portal version back to disk.

Each file is written to a temp name beside its destination and renamed into
place once complete, so a restore interrupted at any point leaves whole files
only. Existing paths are never overwritten unless asked to. Chunks are fetched
and unsealed by worker threads, a bounded window ahead of the writer; on a
device whose store fetches from a fabric, a file's chunks come from the edges
in batches, many batches ahead (one location lookup and parallel requests
each), and the chunks of a directory's small files in batches of many files.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .errors import AlreadyExists, PortalError
from .fsutil import storage_error
from .portal import PortalView
from .sealing import ChunkRef
from .tree import Entry

__all__ = ["Restorer", "RestoreStats"]

# a directory's small files whose nodes, then chunks, are fetched from the fabric together: up to this many,
# and up to PREFETCH_BYTES of them (bench/small, 100 files of 64 KiB: 64 a group gave 9-11% more files/s than 32,
# a hub lookup and a request per edge fewer)
PREFETCH_BATCH = 64
PREFETCH_BYTES = 16 << 20
FETCHING_BATCHES = 3  # groups of them fetched at once (and one more fetched and not yet written)
CHUNK_BATCH = 8  # a large file's chunks fetched together: the writer takes a batch once all of it came
CHUNK_BATCHES = 12  # of them fetched at once: as many chunks in flight as 3 x 32, in smaller steps
SMALL_FILE = 1 << 20  # files up to this size have their chunks fetched with their neighbours'
WHOLE_FILE = 256 * 1024  # files up to this size are read whole (fetched and opened) with their neighbours'


def _temporary(path: Path) -> Path:
    """The name ``path`` is written under before it is renamed into place: ".NAME.portal-tmp" beside it, or,
    where that would pass the 255 bytes a name may take, the same made of a digest of NAME (always the same
    for one name, so that what a run left behind is replaced)."""
    name = path.name
    if len(os.fsencode(name)) + len(".." + "portal-tmp") > 255:
        name = hashlib.sha256(os.fsencode(name)).hexdigest()[:32]
    return path.with_name(f".{name}.portal-tmp")


T = TypeVar("T")
R = TypeVar("R")


def batches_ahead(
    items: Iterable[T],
    fetch: Callable[[list[T]], R],
    size: int = PREFETCH_BATCH,
    depth: int = FETCHING_BATCHES,
    weigh: Callable[[T], int] | None = None,
    most: int = PREFETCH_BYTES,
) -> Iterator[tuple[list[T], R]]:
    """``items`` in batches of ``size`` (or, with ``weigh``, fewer, whose weights add up to ``most``), each with
    what ``fetch`` made of it, fetched on worker threads ``depth`` batches at once ahead of the caller: the edges
    are not idle while the end of one batch waits on its slowest edge, since the next ones keep the others
    busy."""
    with ThreadPoolExecutor(depth, thread_name_prefix="prefetch") as fetcher:
        ahead: deque[tuple[list[T], Future[R]]] = deque()
        batch: list[T] = []
        weight = 0
        for item in items:
            batch.append(item)
            weight += 0 if weigh is None else weigh(item)
            if len(batch) == size or weight >= most:
                ahead.append((batch, fetcher.submit(fetch, batch)))
                batch, weight = [], 0
                if len(ahead) > depth:
                    done, fetched = ahead.popleft()
                    yield done, fetched.result()
        if batch:
            ahead.append((batch, fetcher.submit(fetch, batch)))
        while ahead:
            done, fetched = ahead.popleft()
            yield done, fetched.result()


def _small_bytes(entry: Entry) -> int:
    """What a group of small files holds of ``entry`` once fetched (``Restorer._read_small``)."""
    return entry.size if entry.is_file and entry.size <= SMALL_FILE else 0


@dataclass(slots=True)
class RestoreStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    special: int = 0  # FIFOs, sockets and device nodes made
    bytes: int = 0


class Restorer:
    def __init__(
        self,
        view: PortalView,
        overwrite: bool = False,
        workers: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.view = view
        self.overwrite = overwrite
        self.stats = RestoreStats()
        self._workers = workers or os.cpu_count() or 2
        self._progress = progress or (lambda n: None)
        self._as_root = os.geteuid() == 0
        self._linked: dict[bytes, Path] = {}  # link group -> the path its first name was restored at

    def restore(self, entry: Entry, dest: Path) -> None:
        """Restore ``entry`` at ``dest``; an existing directory ``dest`` receives it by name.

        The portal root (an unnamed entry) and any directory restored onto an
        existing directory merge into it.
        """
        with ThreadPoolExecutor(self._workers, thread_name_prefix="unseal") as pool:
            try:
                if dest.is_dir() and not dest.is_symlink():
                    if entry.is_dir:
                        self._fill_dir(pool, entry, dest)
                        self._apply_meta(entry, dest)
                    else:
                        self._restore(pool, entry, dest / os.fsdecode(entry.name))
                else:
                    self._restore(pool, entry, dest)
            except OSError as exc:
                raise storage_error(exc, str(getattr(exc, "filename", None) or dest)) from exc

    def _restore(
        self, pool: ThreadPoolExecutor, entry: Entry, path: Path, content: list[ChunkRef] | bytes | None = None
    ) -> None:
        """``content``: a file's bytes or chunk refs, when they were read already (``_read_small``)."""
        exists = os.path.lexists(path)
        if entry.is_dir:
            if exists and not path.is_dir():
                self._refuse(path)
            path.mkdir(exist_ok=True)
            self._fill_dir(pool, entry, path)
        elif exists and not self.overwrite:
            self._refuse(path)
        elif entry.link is not None and entry.link in self._linked:  # another name of a file restored here
            tmp = _temporary(path)
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.link(self._linked[entry.link], tmp, follow_symlinks=False)
            os.replace(tmp, path)
            return
        elif entry.is_file:
            self._write_file(pool, entry, path, content)
        elif entry.is_symlink:
            assert entry.target is not None
            tmp = _temporary(path)
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(entry.target, tmp)
            os.replace(tmp, path)
            self.stats.symlinks += 1
        elif entry.is_special:
            tmp = _temporary(path)
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.mknod(tmp, entry.mode, entry.rdev)  # a device node needs root (CAP_MKNOD): EPERM otherwise
            os.replace(tmp, path)
            self.stats.special += 1
        if entry.link is not None:
            self._linked[entry.link] = path  # its other names become hard links to it
        self._apply_meta(entry, path)

    def _refuse(self, path: Path) -> None:
        raise AlreadyExists(f"{path} already exists (use --overwrite to replace it)")

    def _fill_dir(self, pool: ThreadPoolExecutor, entry: Entry, path: Path) -> None:
        assert entry.node is not None
        self.stats.dirs += 1
        children = self.view.load_dir(entry.node)
        for group, contents in batches_ahead(children, self._read_small, weigh=_small_bytes):
            for child, content in zip(group, contents, strict=True):
                self._restore(pool, child, path / os.fsdecode(child.name), content)

    def _read_small(self, group: list[Entry]) -> list[list[ChunkRef] | bytes | None]:
        """For each small file of ``group``, its bytes (up to WHOLE_FILE) or its chunk refs (up to SMALL_FILE);
        None for the rest. Its file node and chunks are fetched with those of its neighbours, so a directory
        of many small files costs two requests per group, not two round trips per file, and a file read whole
        is opened here, on a fetching thread, beside the groups ahead. A larger file fetches its own, in
        ``_fetched_ahead``."""
        small = [e.is_file and e.node is not None and e.size <= SMALL_FILE and e.link is None for e in group]
        if self.view.fetches:
            self.view.prefetch([e.node for e, s in zip(group, small, strict=True) if s and e.node is not None])
        chunks = [list(self.view.file_chunks(e)) if s else None for e, s in zip(group, small, strict=True)]
        if self.view.fetches:
            self.view.prefetch([ref for refs in chunks if refs for ref in refs])
        return [
            b"".join(self.view.load_chunk(ref) for ref in refs) if refs is not None and e.size <= WHOLE_FILE else refs
            for e, refs in zip(group, chunks, strict=True)
        ]

    def _write_file(
        self, pool: ThreadPoolExecutor, entry: Entry, path: Path, content: list[ChunkRef] | bytes | None = None
    ) -> None:
        """``content``: the file's bytes, or its chunk refs, when they were read (and fetched) already."""
        tmp = _temporary(path)
        window: deque[Future[bytes | memoryview]] = deque()
        if isinstance(content, bytes):
            refs: Iterator[ChunkRef] = iter(())
        else:
            refs = iter(content) if content is not None else self._fetched_ahead(self.view.file_chunks(entry))
        try:
            with open(tmp, "wb") as out:
                if isinstance(content, bytes):
                    self._write_chunk(out, content)
                for ref in refs:
                    window.append(pool.submit(self.view.load_chunk, ref))
                    if len(window) > 2 * self._workers:
                        self._write_chunk(out, window.popleft().result())
                while window:
                    self._write_chunk(out, window.popleft().result())
            os.replace(tmp, path)
        except (OSError, PortalError):
            for f in window:
                f.cancel()
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise
        self.stats.files += 1

    def _fetched_ahead(self, refs: Iterator[ChunkRef]) -> Iterator[ChunkRef]:
        """``refs``, each batch of them brought from the fabric together while the batch before is written."""
        if not self.view.fetches:
            yield from refs
            return
        for batch, _ in batches_ahead(refs, self.view.prefetch, CHUNK_BATCH, CHUNK_BATCHES):
            yield from batch

    def _write_chunk(self, out: object, data: bytes | memoryview) -> None:
        out.write(data)  # type: ignore[attr-defined]
        self.stats.bytes += len(data)
        self._progress(len(data))

    def _apply_meta(self, entry: Entry, path: Path) -> None:
        follow = not entry.is_symlink
        for name, value in entry.xattrs.items():
            try:
                os.setxattr(path, name, value, follow_symlinks=follow)
            except OSError:
                pass  # the destination file system may not take this attribute
        if self._as_root:
            os.chown(path, entry.uid, entry.gid, follow_symlinks=follow)
        if follow:
            os.chmod(path, stat.S_IMODE(entry.mode))
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=follow)
