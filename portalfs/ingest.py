"""Ingest: turn folders and files on disk into a new tree in the object store.

The walk reads every source file, cuts it into chunks and hands each chunk to
a pool of worker threads that hash, seal and store it (blake3, zstandard and
AES-GCM release the GIL, so the pool uses every core); at most
``max_in_flight`` chunks are in memory at once. Each directory is finished as
soon as its walk ends (its files' nodes from their chunk refs, then its own
node), so what is held stays bounded by the depth of the tree, not by the
number of files.
Nothing here records a version: the caller commits the returned root only
after the store is synced (chunks before nodes before roots).

Unchanged files are not read again: the files cache remembers each source
file's (inode, size, mtime, ctime) and file node from the last ingest.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import BinaryIO

from . import chunking, encoding
from .errors import SourceError
from .pipeline import ChunkPipeline, store_sealed
from .sealing import ChunkRef
from .state import CACHED_FILES_PER_QUERY, CachedFile, StateDB
from .store import ObjectStore
from .tree import (
    NO_XATTRS,
    SPECIAL_TYPES,
    Entry,
    FileObjects,
    NodeLoader,
    holds_links,
    load_dir,
    new_root_entry,
    store_dir,
    validate_name,
)

__all__ = ["Ingester", "IngestStats", "Totals", "tree_totals", "moved_totals"]

# A file whose mtime is this close to the start of the ingest may still be
# changing within the same timestamp tick: never trust the cache for it.
_RACY_NS = 2_000_000_000
SETTLE_EVERY = 256  # entries of a directory walked between two passes that finish its sealed files
CACHE_ROWS = CACHED_FILES_PER_QUERY  # files of a directory whose files-cache rows are asked for at once (one query)
CACHE_ROWS_STAGED = 4096  # files-cache rows a put holds before it stages them in the state db (StateDB)


@dataclass(slots=True)
class IngestStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    special: int = 0  # FIFOs, sockets and device nodes, kept as nodes
    skipped: int = 0
    bytes_read: int = 0
    bytes_reused: int = 0
    chunks: int = 0
    chunks_stored: int = 0
    bytes_stored: int = 0
    unchanged: bool = False  # the sources changed nothing: no new version was made


@dataclass(slots=True)
class _PendingFile:
    name: bytes
    path: bytes  # absolute source path: the files-cache key
    st: os.stat_result
    xattrs: dict[bytes, bytes]
    chunks: list[Future[ChunkRef]] = field(default_factory=list)
    node: ChunkRef | None = None  # from the files cache


@dataclass(slots=True)
class _PendingDir:
    name: bytes
    st: os.stat_result
    xattrs: dict[bytes, bytes]
    children: list[_PendingFile | _PendingDir | Entry] = field(default_factory=list)
    settled: int = 0  # children before this one are finished


def _entry(name: bytes, st: os.stat_result, xattrs: dict[bytes, bytes], **content: object) -> Entry:
    return Entry(
        name=name,
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        xattrs=xattrs or NO_XATTRS,
        **content,  # type: ignore[arg-type]
    )


def _read_xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        try:
            out[os.fsencode(name)] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


Totals = tuple[int, int]  # (bytes in files, number of files) under an entry


def tree_totals(entry: Entry, load_node: NodeLoader, known: dict[bytes, Totals] | None = None) -> Totals:
    """(bytes in files, number of files) under ``entry``: every directory below is read, but those whose
    totals ``known`` holds (by node id; what is computed here is added to it)."""
    if entry.is_file:
        return entry.size, 1
    if not entry.is_dir or entry.node is None:
        return 0, 0
    if known is not None and (hit := known.get(entry.node.cid)) is not None:
        return hit
    size = files = 0
    for child in load_dir(entry.node, load_node):
        s, f = tree_totals(child, load_node, known)
        size, files = size + s, files + f
    if known is not None:
        known[entry.node.cid] = (size, files)
    return size, files


def moved_totals(new: Entry, old: Entry | None, old_totals: Totals, load_node: NodeLoader) -> Totals:
    """The totals of ``new`` from those of ``old``, the tree it was made from: only the directories whose
    nodes differ are read (what a version changed), not the whole tree."""
    size, files = _moved(new, old, load_node)
    return old_totals[0] + size, old_totals[1] + files


def _moved(new: Entry | None, old: Entry | None, load_node: NodeLoader) -> Totals:
    if new is not None and old is not None and new.is_dir and old.is_dir and new.node and old.node:
        if new.node.cid == old.node.cid:
            return 0, 0
        before = {e.name: e for e in load_dir(old.node, load_node)}
        size = files = 0
        for child in load_dir(new.node, load_node):
            s, f = _moved(child, before.pop(child.name, None), load_node)
            size, files = size + s, files + f
        for gone in before.values():
            s, f = tree_totals(gone, load_node)
            size, files = size - s, files - f
        return size, files
    now = (0, 0) if new is None else tree_totals(new, load_node)
    then = (0, 0) if old is None else tree_totals(old, load_node)
    return now[0] - then[0], now[1] - then[1]


class Ingester:
    def __init__(
        self,
        *,
        store: ObjectStore,
        convergence_secret: bytes,
        tree_secret: bytes,
        state: StateDB,
        portal: bytes,
        now_ns: int,
        workers: int | None = None,
        max_in_flight: int | None = None,
        progress: Callable[[int], None] | None = None,
        warn: Callable[[str], None] | None = None,
        file_objects: FileObjects | None = None,
    ) -> None:
        """``file_objects``: where what each new file node reaches is remembered (the device's: its publish
        lists them from there)."""
        self.store = store
        self.state = state
        self.portal = portal
        self.stats = IngestStats()
        self._convergence = convergence_secret
        self._tree_secret = tree_secret
        self._now_ns = now_ns
        self._workers = workers
        self._max_in_flight = max_in_flight
        self._progress = progress or (lambda n: None)
        self._warn = warn or (lambda msg: None)
        self._cache_rows: list[tuple[bytes, CachedFile]] = []  # staged in the state db a batch at a time
        self._cache_token = os.urandom(16)
        self._files = file_objects or FileObjects()
        self.totals: dict[bytes, Totals] = {}  # of each directory built, by node id
        self.root_totals: Totals = (0, 0)  # of the root ``ingest`` built

    # objects

    def store_node(self, plaintext: bytes) -> ChunkRef:
        ref, stored = store_sealed(self.store, self._tree_secret, plaintext, durable=False)  # synced at record
        self.stats.bytes_stored += stored
        return ref

    # the walk

    def _walk_file(
        self,
        pipeline: ChunkPipeline,
        path: bytes,
        name: bytes,
        st: os.stat_result,
        known: dict[bytes, CachedFile] | None = None,
    ) -> _PendingFile:
        """``known``: the files cache's rows of the directory's files (else the file's row is asked for)."""
        pending = _PendingFile(name, path, st, _read_xattrs(path))
        self.stats.files += 1
        cached = None
        if st.st_size:  # a size 0 file is read: it may be empty, or one whose size its file system does not
            # know (/proc, /sys)
            cached = known.get(path) if known is not None else self.state.cached_file(self.portal, path)
        if cached is not None and (cached.ino, cached.size, cached.mtime_ns, cached.ctime_ns) == (
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
        ):
            node = ChunkRef.from_cbor(_decode_ref(cached.node))
            if self.store.has([node.cid])[0]:
                pending.node = node
                self.stats.bytes_reused += st.st_size
                self._progress(st.st_size)
                return pending
        try:
            with open(path, "rb", buffering=0) as stream:
                for chunk in chunking.cdc_chunks(stream):
                    pending.chunks.append(pipeline.submit(chunk))
                    self.stats.chunks += 1
                    self.stats.bytes_read += len(chunk)
                    self._progress(len(chunk))
        except OSError as exc:
            raise SourceError(f"cannot read {os.fsdecode(path)}: {exc.strerror or exc}") from exc
        return pending

    def _walk(
        self,
        pipeline: ChunkPipeline,
        path: bytes,
        name: bytes,
        open_dir: bool = False,
        known: dict[bytes, CachedFile] | None = None,
    ) -> _PendingFile | _PendingDir | Entry | None:
        """The item at ``path``; a directory comes back finished (an Entry), or pending with ``open_dir``.
        ``known``: the files cache's rows of its directory, if asked for."""
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise SourceError(f"cannot read {os.fsdecode(path)}: {exc.strerror or exc}") from exc
        if stat.S_ISREG(st.st_mode):
            return self._walk_file(pipeline, path, name, st, known)
        if stat.S_ISLNK(st.st_mode):
            self.stats.symlinks += 1
            return _entry(name, st, {}, target=os.readlink(path))
        if stat.S_IFMT(st.st_mode) in SPECIAL_TYPES:  # the node itself: nothing is read from it
            self.stats.special += 1
            device = stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            return _entry(name, st, _read_xattrs(path), rdev=st.st_rdev if device else 0)
        if stat.S_ISDIR(st.st_mode):
            pending = _PendingDir(name, st, _read_xattrs(path))
            self.stats.dirs += 1
            try:
                children = sorted(os.listdir(path))
            except OSError as exc:
                raise SourceError(f"cannot read {os.fsdecode(path)}: {exc.strerror or exc}") from exc
            for first in range(0, len(children), CACHE_ROWS):  # the files cache asked once per CACHE_ROWS
                names = children[first : first + CACHE_ROWS]
                paths = [os.path.join(path, child) for child in names]
                known = self.state.cached_files(self.portal, paths)
                for child, child_path in zip(names, paths, strict=True):
                    item = self._walk(pipeline, child_path, child, known=known)
                    if item is not None:
                        pending.children.append(item)
                        if isinstance(item, _PendingDir) or len(pending.children) % SETTLE_EVERY == 0:
                            self._settle(pending)
            if open_dir:
                return pending
            # Finished here only if every chunk below it is sealed: else its parent finishes it once they are,
            # and the walk goes on meanwhile (waiting here left the workers idle at the end of every directory).
            self._settle(pending)
            return self._finish(pending) if pending.settled == len(pending.children) else pending
        self.stats.skipped += 1
        self._warn(f"skipping {os.fsdecode(path)}: not a file type a portal keeps")
        return None

    # finishing

    def _settle(self, pending: _PendingDir) -> None:
        """Finish, in place and in order, the files and directories of a directory whose chunks are all sealed
        (what they held goes): up to the first still being sealed."""
        items = pending.children
        while pending.settled < len(items):
            item = items[pending.settled]
            if not isinstance(item, Entry):
                if not _sealed(item):
                    return
                items[pending.settled] = self._finish(item)
            pending.settled += 1

    def _finish(self, item: _PendingFile | _PendingDir | Entry) -> Entry:
        if isinstance(item, Entry):
            return item
        if isinstance(item, _PendingFile):
            if item.st.st_size == 0 and not item.chunks:
                return _entry(item.name, item.st, item.xattrs, size=0)
            if item.node is None:
                refs = [f.result() for f in item.chunks]
                item.node, size = self._files.build(refs, self.store_node)
            else:
                size = item.st.st_size
            if item.st.st_mtime_ns < self._now_ns - _RACY_NS and item.st.st_size:
                self._cache_rows.append(
                    (
                        item.path,
                        CachedFile(
                            item.st.st_ino,
                            item.st.st_size,
                            item.st.st_mtime_ns,
                            item.st.st_ctime_ns,
                            _encode_ref(item.node),
                        ),
                    )
                )
                if len(self._cache_rows) >= CACHE_ROWS_STAGED:
                    self.state.stage_cached_files(self._cache_token, self._cache_rows)
                    self._cache_rows = []
            return _entry(item.name, item.st, item.xattrs, size=size, node=item.node)
        entries = [self._finish(child) for child in item.children]
        node = store_dir(entries, self.store_node, item.name)
        self.totals[node.cid] = self._built_totals(entries)
        return _entry(item.name, item.st, item.xattrs, node=node)

    def _built_totals(self, entries: Iterable[Entry]) -> Totals:
        """The totals of entries built here (each directory among them finished here, so its totals known)."""
        size = files = 0
        for entry in entries:
            if entry.is_file:
                size, files = size + entry.size, files + 1
            elif entry.is_dir and entry.node is not None:
                s, f = self.totals[entry.node.cid]
                size, files = size + s, files + f
        return size, files

    def _stream_entry(self, pipeline: ChunkPipeline, name: bytes, stream: BinaryIO) -> Entry:
        """A file named ``name`` holding all of ``stream``, cut into fixed-size chunks."""
        futures = []
        for chunk in chunking.fixed_chunks(stream):
            futures.append(pipeline.submit(chunk))
            self.stats.chunks += 1
            self.stats.bytes_read += len(chunk)
            self._progress(len(chunk))
        refs = [f.result() for f in futures]
        node, size = self._files.build(refs, self.store_node) if refs else (None, 0)
        self.stats.files += 1
        uid, gid, now = os.getuid(), os.getgid(), self._now_ns
        return Entry(name, stat.S_IFREG | 0o644, uid, gid, now, now, size=size, node=node)

    def ingest(
        self,
        sources: list[str],
        previous: Entry | None,
        load_node: NodeLoader,
        stream: tuple[bytes, BinaryIO] | None = None,
        previous_totals: Totals | None = None,
    ) -> Entry:
        """Build the new root entry: ``previous`` with each source placed at the top level.

        A source directory named with a trailing slash contributes its contents
        rather than itself (as rsync does). ``stream`` (name, bytes) adds one file
        read to its end. Entries of the same name are replaced. ``root_totals``
        are the new root's: from ``previous_totals`` (the version before's), only
        what was replaced is read; without them, every directory kept.
        """
        top: list[_PendingFile | _PendingDir | Entry] = []
        # not durable one by one: the version is recorded after the store's sync() (one flush for them all),
        # and a crash before leaves objects the index does not list, which are put again (section 7)
        pipeline = ChunkPipeline(self.store, self._convergence, self._workers, self._max_in_flight, durable=False)
        with pipeline:
            try:
                if stream is not None:
                    top.append(self._stream_entry(pipeline, validate_name(stream[0]), stream[1]))
                for source in sources:
                    raw = os.fsencode(source)
                    path = os.path.abspath(raw.rstrip(b"/") or b"/")
                    if raw.endswith(b"/") and os.path.isdir(path):
                        walked = self._walk(pipeline, path, b"", open_dir=True)
                        assert isinstance(walked, _PendingDir)
                        top.extend(walked.children)
                        self.stats.dirs -= 1
                    else:
                        name = os.path.basename(path)
                        if not name or name in (b".", b".."):
                            name = os.path.basename(os.path.realpath(path))
                        walked = self._walk(pipeline, path, name)
                        if walked is not None:
                            top.append(walked)
                new = {e.name: e for e in (self._finish(item) for item in top)}
            except BaseException:
                for item in top:
                    _cancel(item)
                raise
        self.stats.chunks_stored += pipeline.chunks_stored
        self.stats.bytes_stored += pipeline.bytes_stored
        before = (
            {} if previous is None or previous.node is None else {e.name: e for e in load_dir(previous.node, load_node)}
        )
        entries = before | new
        if previous_totals is None or not before:
            kept = [tree_totals(e, load_node) for name, e in before.items() if name not in new]
        else:  # the version before's totals, less what is replaced
            replaced = [tree_totals(before[name], load_node) for name in new if name in before]
            kept = [previous_totals, *((-s, -f) for s, f in replaced)]
        size, files = self._built_totals(new.values())
        self.root_totals = (size + sum(s for s, _ in kept), files + sum(f for _, f in kept))
        root_node = store_dir(list(entries.values()), self.store_node)
        if previous is None:
            return dataclasses.replace(new_root_entry(self._now_ns, os.getuid(), os.getgid()), node=root_node)
        return Entry(
            b"",
            previous.mode,
            previous.uid,
            previous.gid,
            self._now_ns,
            self._now_ns,
            node=root_node,
            xattrs=previous.xattrs,
            links=holds_links(entries.values()),  # what the put kept of the version before may hold hard links
        )

    def remember_files(self) -> None:
        """Record the files cache; call after the new version is committed."""
        with self.state.transaction():
            self.state.cache_staged_files(self.portal, self._cache_token)
            self.state.cache_files(self.portal, self._cache_rows)  # those not staged yet
        self._cache_rows = []

    def forget_files(self) -> None:
        """Drop what ``remember_files`` would have recorded (the put failed)."""
        self._cache_rows = []
        self.state.drop_staged_files(self._cache_token)


def _sealed(item: _PendingFile | _PendingDir) -> bool:
    """Whether every chunk of ``item`` is sealed (a directory's finished children are entries already)."""
    if isinstance(item, _PendingFile):
        return all(f.done() for f in item.chunks)
    return all(isinstance(c, Entry) or _sealed(c) for c in item.children[item.settled :])


def _cancel(item: _PendingFile | _PendingDir | Entry) -> None:
    if isinstance(item, _PendingFile):
        for f in item.chunks:
            f.cancel()
    elif isinstance(item, _PendingDir):
        for child in item.children:
            _cancel(child)


def _encode_ref(ref: ChunkRef) -> bytes:
    return encoding.encode(ref.to_cbor())


def _decode_ref(data: bytes) -> object:
    return encoding.decode(data)
