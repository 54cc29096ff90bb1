"""The local object store: one file per object, and an SQLite index.

Layout under the store directory (docs/design.md, "Local store"):

    objects/<hex[0:2]>/<hex>   one sealed object, named by its id in lowercase hex
    tmp/                       temp files; anything here after a crash is garbage
    index.db                   SQLite (WAL): objects(cid BLOB PRIMARY KEY, size INTEGER)

A put writes a temp file, fsyncs it and renames it into place, then records it
in the index inside an open transaction; ``sync()`` fsyncs the touched shard
directories and commits. ``put(..., durable=False)`` leaves the object's fsync
to ``sync()``, for callers that keep their own durable copy meanwhile (the
mount's journal does, for small files). The files are the truth and the index a cache of
them: a file that a crash left without an index row is found again by
``ids()`` (which walks the files) and rewritten harmlessly by the next put.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import MissingObject, StorageError
from ..fsutil import fsync_dir, fsync_file, storage_error, syncfs, write_atomic
from ..sqlite import open_db
from .base import StoreStat, check_object

__all__ = ["LocalStore"]

SYNCFS_FROM = 64  # files and directories to flush beyond which sync() uses syncfs(2)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (cid BLOB PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID;
"""


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._objects = self.root / "objects"
        self._tmp = self.root / "tmp"
        try:
            self._objects.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir(exist_ok=True)
            self._db = open_db(self.root / "index.db", durability="normal")  # the files are the truth
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open the store at {self.root}: {exc}") from exc
        self._lock = threading.Lock()
        self._in_txn = False
        self._dirty_shards: set[Path] = set()
        self._unsynced: set[Path] = set()  # objects put with durable=False, fsync'd by sync()
        self._known_shards: set[str] = set()

    def _path(self, cid: bytes) -> Path:
        name = cid.hex()
        return self._objects / name[:2] / name

    def put(self, cid: bytes, data: bytes | bytearray, durable: bool = True, verify: bool = True) -> bool:
        if verify:
            check_object(cid, data)
        if self.has([cid])[0]:
            return False
        path = self._path(cid)
        shard = path.parent
        if shard.name not in self._known_shards:
            shard.mkdir(exist_ok=True)
            self._known_shards.add(shard.name)
        write_atomic(path, data, mode=0o600, tmp_dir=self._tmp, fsync=durable)
        with self._lock:
            if not durable:
                self._unsynced.add(path)
            if not self._in_txn:
                self._db.execute("BEGIN")
                self._in_txn = True
            self._db.execute("INSERT OR REPLACE INTO objects (cid, size) VALUES (?, ?)", (cid, len(data)))
            self._dirty_shards.add(shard)
        return True

    def get(self, cid: bytes, verify: bool = True) -> bytes:
        try:
            data = self._path(cid).read_bytes()
        except FileNotFoundError:
            raise MissingObject(f"object {cid.hex()} is not in the store") from None
        except OSError as exc:
            raise StorageError(f"cannot read object {cid.hex()}: {exc.strerror}") from exc
        if verify:
            check_object(cid, data)
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
                self._db.execute("SELECT 1 FROM objects WHERE cid = ?", (cid,)).fetchone() is not None for cid in cids
            ]

    def delete(self, cid: bytes) -> None:
        path = self._path(cid)
        with self._lock:
            # The row first: if the index is busy this fails with the object intact, and a file
            # left without its row is only found again by ids() (the files are the truth).
            self._db.execute("DELETE FROM objects WHERE cid = ?", (cid,))
            self._unsynced.discard(path)  # gone before its flush: nothing left to flush
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def ids(self) -> Iterator[bytes]:
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
        return StoreStat(count, size)

    def sync(self) -> None:
        with self._lock:
            shards, self._dirty_shards = self._dirty_shards, set()
            files, self._unsynced = self._unsynced, set()
            try:
                if len(files) + len(shards) > SYNCFS_FROM:
                    syncfs(self.root)  # one flush of the file system beats thousands of fsyncs
                else:
                    for path in files:
                        fsync_file(path)
                    for shard in shards:
                        fsync_dir(shard)
            except OSError as exc:
                raise storage_error(exc, "the store") from exc
            if self._in_txn:
                self._db.execute("COMMIT")
                self._in_txn = False

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
