"""The local object store: one file per object, small objects in an SQLite database beside the index.

Layout under the store directory (docs/design.md, section 8):

    objects/<hex[0:2]>/<hex>   one sealed object, named by its id in lowercase hex
    tmp/                       temp files (where O_TMPFILE is not to be had); anything here after a crash
                               is garbage
    index.db                   SQLite (WAL): objects(cid BLOB PRIMARY KEY, size INTEGER),
                               small(cid BLOB PRIMARY KEY, data BLOB): the objects of at most
                               ``small_max`` bytes, kept here instead of in a file of their own

A put of a larger object writes an unnamed file in its shard (O_TMPFILE),
fsyncs it and links it at its name (a temp file renamed into place where the
file system cannot); its index row waits in memory, and ``sync()`` fsyncs the touched shard
directories, then writes the rows in one short transaction (no write
transaction stays open between calls, so the processes that share a store
never wait on one another's). ``put(..., durable=False)``
leaves the object's fsync to ``sync()``, for callers that keep their own
durable copy meanwhile (the mount's journal does, for small files). For those
objects the files are the truth and the index a cache of them: a file that a
crash left without an index row is found again by ``ids()`` (which walks the
files) and rewritten harmlessly by the next put.

A small object (a tree node, a small file's one chunk) is a row of ``small``:
making a file for each cost more than writing it, and a mount's checkpoint of
many small files was bound by it. It waits in memory with its index row and
``sync()`` writes them in one transaction, durable when it returns
(synchronous=FULL for that commit). The database is the truth for those.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import MissingObject, StorageError, StoreFull
from ..fsutil import fsync_dir, fsync_file, storage_error, syncfs, write_atomic, write_new
from ..sqlite import full_disk, open_db, transaction
from .base import StoreStat, check_object

__all__ = ["LocalStore"]

# Files and directories to flush beyond which sync() uses syncfs(2), when some of those files are not yet
# flushed. When every file was put durably, only their shard directories are left, and they are fsync'd one
# by one (the first fsync commits the file system's journal, the rest find nothing to do): syncfs would also
# write out every other file's dirty pages, a mount's staging files among them (a 1 GiB file written into a
# mount: 2,056 MiB reached the disk, then 1,032).
SYNCFS_FROM = 64
SMALL_MAX = 64 * 1024  # objects up to this size are rows of the database, not files
PENDING_SMALL_BYTES = 8 * 1024 * 1024  # small objects held for the next sync() before they are written anyway

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (cid BLOB PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS small (cid BLOB PRIMARY KEY, data BLOB NOT NULL);
"""


class LocalStore:
    """``small_max``: objects up to this size are kept in the database (0: every object is a file).

    Rows wait in memory until ``sync()`` writes them in one short transaction (small objects sooner, once
    PENDING_SMALL_BYTES of them wait): no write transaction stays open between calls, so other processes
    using the store (a mount, portald, a command) never wait on one another's.
    """

    def __init__(self, root: Path, small_max: int = SMALL_MAX) -> None:
        self.root = Path(root)
        self.small_max = small_max
        self._write_new = True  # files are born whole (fsutil.write_new) where the file system can
        self._objects = self.root / "objects"
        self._objects_dir = os.fspath(self._objects)
        self._tmp = self.root / "tmp"
        try:
            self._objects.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir(exist_ok=True)
            # NORMAL: a delete lost to a crash only leaves garbage for gc; what sync() writes is FULL (_durably)
            self._db = open_db(self.root / "index.db", durability="normal")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            if isinstance(exc, sqlite3.Error) and full_disk(exc):
                raise StoreFull(f"no space left to open the store at {self.root}") from exc
            raise StorageError(f"cannot open the store at {self.root}: {exc}") from exc
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()  # one sync at a time; its flush outside ``_lock``
        self._pending: dict[bytes, int] = {}  # index rows of objects put since the last sync: id -> size
        self._pending_small: dict[bytes, bytes] = {}  # of those, the small ones' bytes
        self._pending_small_bytes = 0
        self._dirty_shards: set[Path] = set()
        self._unsynced: set[bytes] = set()  # ids of the objects put with durable=False, fsync'd by sync()
        self._shards: dict[str, Path] = {}  # the shard directories made or found, by name

    def _path(self, cid: bytes) -> str:
        """Where object ``cid``'s file is: a string, joined as one (a Path's joins cost more than reading a
        small object from the page cache)."""
        name = cid.hex()
        return f"{self._objects_dir}/{name[:2]}/{name}"

    def put(
        self, cid: bytes, data: bytes | bytearray, durable: bool = True, verify: bool = True, cache: bool = True
    ) -> bool:
        if verify:
            check_object(cid, data)
        small = self.small_max > 0 and len(data) <= self.small_max
        if self.has([cid])[0] and (small or os.path.exists(self._path(cid))):
            return False  # a row whose file a failed delete took is written again
        if small:
            with self._lock:
                self._pending[cid] = len(data)
                self._pending_small[cid] = bytes(data)
                self._pending_small_bytes += len(data)
                if self._pending_small_bytes > PENDING_SMALL_BYTES:
                    self._write_rows({})
            return True
        shard_name = cid.hex()[:2]
        shard = self._shards.get(shard_name)
        if shard is None:
            shard = self._objects / shard_name
            shard.mkdir(exist_ok=True)
            self._shards[shard_name] = shard
        path = self._path(cid)
        try:
            born = self._write_new and write_new(path, data, mode=0o600, fsync=durable, cache=cache)
            self._write_new = born  # False: this file system cannot, temp files from now on
        except FileExistsError:  # a file a crash left without its row (or a damaged one): replaced whole
            born = False
        if not born:
            write_atomic(path, data, mode=0o600, tmp_dir=self._tmp, fsync=durable, cache=cache)
        with self._lock:
            if not durable:
                self._unsynced.add(cid)
            self._pending[cid] = len(data)
            self._dirty_shards.add(shard)
        return True

    def _write_rows(self, files: dict[bytes, int]) -> None:
        """Write the small objects that wait and their index rows, and the rows of ``files`` (objects whose
        files ``sync()`` has just flushed), in one durable transaction (lock held).

        A small object's row holds its bytes, so it may go before ``sync()``; a file's row waits for its fsync.
        On an error (a full disk: StoreFull) nothing is written and everything still waits."""
        small = {cid: len(data) for cid, data in self._pending_small.items()}
        with self._durably():
            self._db.executemany("INSERT OR REPLACE INTO small (cid, data) VALUES (?, ?)", self._pending_small.items())
            self._db.executemany("INSERT OR REPLACE INTO objects (cid, size) VALUES (?, ?)", (small | files).items())
        for cid in small | files:
            del self._pending[cid]
        self._pending_small.clear()
        self._pending_small_bytes = 0

    @contextmanager
    def _durably(self) -> Iterator[None]:
        """A transaction whose COMMIT returns once it is on the disk (synchronous=FULL for it alone)."""
        self._db.execute("PRAGMA synchronous=FULL")
        try:
            with transaction(self._db):
                yield
        finally:
            self._db.execute("PRAGMA synchronous=NORMAL")

    def get(self, cid: bytes, verify: bool = True) -> bytes:
        try:
            with open(self._path(cid), "rb", buffering=0) as f:
                data = f.read()
        except FileNotFoundError:
            data = self._small(cid)
        except OSError as exc:
            raise StorageError(f"cannot read object {cid.hex()}: {exc.strerror}") from exc
        if verify:
            check_object(cid, data)
        return data

    def _small(self, cid: bytes) -> bytes:
        """A small object's bytes: waiting for the next sync, or a row."""
        with self._lock:
            data = self._pending_small.get(cid)
            if data is None:
                row = self._db.execute("SELECT data FROM small WHERE cid = ?", (cid,)).fetchone()
                data = None if row is None else row[0]
        if data is None:
            raise MissingObject(f"object {cid.hex()} is not in the store")
        return data

    def read_cached(self, cid: bytes) -> bytearray | None:
        """The bytes stored under ``cid``, unchecked, if the kernel holds every one in memory; else None.

        Never waits for a disk (``RWF_NOWAIT``), so an event loop may call it:
        None means the object is absent, only partly cached, or the file system
        cannot say, and the caller reads it with ``get`` on a worker thread.
        What an edge serves this way its reader checks against the id (docs/design.md, section 12).
        """
        try:
            fd = os.open(self._path(cid), os.O_RDONLY)
        except OSError:
            return None
        try:
            data = bytearray(os.fstat(fd).st_size)
            try:
                n = os.preadv(fd, [data], 0, os.RWF_NOWAIT)
            except OSError:  # EAGAIN: not all in memory; EOPNOTSUPP: the file system cannot tell
                return None
            return data if n == len(data) else None
        finally:
            os.close(fd)

    def has(self, cids: Sequence[bytes]) -> list[bool]:
        with self._lock:
            return [
                cid in self._pending
                or self._db.execute("SELECT 1 FROM objects WHERE cid = ?", (cid,)).fetchone() is not None
                for cid in cids
            ]

    def delete(self, cid: bytes) -> None:
        self.delete_many([cid])

    def delete_many(self, cids: Sequence[bytes]) -> None:
        """Delete these objects: their index rows in one transaction, then their files.

        The rows go first: if the index is busy this fails with every object intact, and a file left
        without its row is only found again by ids() (the files are the truth). On a full disk the
        transaction itself cannot be written; then the files go first, to make it room, and a row left
        behind by a second failure is harmless: ``put`` looks for an object's file, not its row."""
        paths = [self._path(cid) for cid in cids]
        with self._lock:
            try:
                self._delete_rows(cids)
            except StoreFull:
                self._unlink(paths)
                self._delete_rows(cids)
            for cid in cids:
                self._pending.pop(cid, None)
                if (data := self._pending_small.pop(cid, None)) is not None:
                    self._pending_small_bytes -= len(data)
                self._unsynced.discard(cid)  # gone before its flush: nothing left to flush
            self._unlink(paths)

    def _delete_rows(self, cids: Sequence[bytes]) -> None:
        with transaction(self._db):
            self._db.executemany("DELETE FROM objects WHERE cid = ?", ((cid,) for cid in cids))
            self._db.executemany("DELETE FROM small WHERE cid = ?", ((cid,) for cid in cids))

    @staticmethod
    def _unlink(paths: Sequence[str]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def ids(self) -> Iterator[bytes]:
        with self._lock:
            small = list(self._pending_small) + [bytes(cid) for (cid,) in self._db.execute("SELECT cid FROM small")]
        yield from small
        for shard in sorted(self._objects.iterdir()):
            for entry in os.scandir(shard):
                if len(entry.name) == 64:
                    try:
                        yield bytes.fromhex(entry.name)
                    except ValueError:
                        continue

    def stat(self) -> StoreStat:
        with self._lock:
            count, size = self._db.execute("SELECT count(*), coalesce(sum(size), 0) FROM objects").fetchone()
            return StoreStat(count + len(self._pending), size + sum(self._pending.values()))

    def sync(self) -> None:
        """Make everything put so far durable: flush the files written, then write their index rows (and the
        small objects) in one durable transaction. The flush holds no lock: puts (and reads) go on beside it,
        and what they put is left to the next sync. What fails (a full disk) is left to the next sync, whole."""
        with self._sync_lock:
            with self._lock:
                shards, files = self._dirty_shards, self._unsynced
                self._dirty_shards, self._unsynced = set(), set()
                written = dict(self._pending)  # their files are written by now (put adds both under the lock)
            try:
                if files and len(files) + len(shards) > SYNCFS_FROM:
                    syncfs(self.root)  # one flush of the file system beats thousands of fsyncs (an ingest)
                else:
                    for cid in files:
                        with contextlib.suppress(FileNotFoundError):  # deleted since: nothing to flush
                            fsync_file(self._path(cid))
                    for shard in shards:
                        fsync_dir(shard)
            except OSError as exc:
                with self._lock:
                    self._dirty_shards |= shards
                    self._unsynced |= files
                raise storage_error(exc, "the store") from exc
            with self._lock:
                # rows of what was written before the flush and is still there: not one deleted since, nor
                # one deleted and put again since (its new file is in the next flush)
                rows = {
                    cid: size
                    for cid, size in written.items()
                    if self._pending.get(cid) == size and cid not in self._unsynced
                }
                if rows or self._pending_small:
                    self._write_rows(rows)

    def remove_temp_files(self) -> int:
        """Delete temp files a crash left behind; return how many."""
        removed = 0
        for entry in os.scandir(self._tmp):
            os.unlink(entry.path)
            removed += 1
        return removed

    def close(self) -> None:
        self.sync()
        self._db.close()
