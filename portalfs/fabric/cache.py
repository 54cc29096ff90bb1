"""Which objects in the local store were fetched from the edges, and dropping the least used of them.

A mount keeps what it fetches, so a second read needs no network; on a device
whose portals are larger than its disk that would fill the disk. The objects a
device fetched (never those it made: they may exist nowhere else yet) are
recorded here with their size and when they were last read, and once they
take more than the limit the least recently used are deleted from the local
store until they take at most ``LOW_WATER`` of it. A deleted object is fetched
again when next read. Directory nodes a mount fetches before it serves are
not recorded: the mount reads them on its event loop, where it must not wait
for the network.

State: ``fetched.db`` (SQLite, WAL) beside the store's index, table
``fetched (cid BLOB PRIMARY KEY, size INTEGER, used INTEGER)``; it is a cache
of a cache: losing it only makes those objects permanent until a gc.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..device import Device
from ..errors import StorageError
from ..sqlite import open_db

__all__ = ["FetchCache", "DEFAULT_LIMIT", "LOW_WATER", "cache_limit", "set_cache_limit"]

LIMIT_KEY = "fetch_cache_limit"  # in the device's meta table: the limit in bytes, as decimal digits

DEFAULT_LIMIT = 10 << 30  # bytes of fetched objects a device keeps, unless told otherwise
LOW_WATER = 0.9  # after dropping, what is kept is at most this share of the limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fetched (cid BLOB PRIMARY KEY, size INTEGER NOT NULL, used INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fetched_by_use ON fetched (used);
"""


def cache_limit(device: Device) -> int:
    """The device's limit on what it keeps of what it fetched (bytes; 0: none)."""
    value = device.state.get_meta(LIMIT_KEY)
    return DEFAULT_LIMIT if value is None else int(value)


def set_cache_limit(device: Device, limit: int) -> None:
    device.state.set_meta(LIMIT_KEY, str(limit).encode())


class FetchCache:
    """The fetched objects of one local store; ``delete`` removes an object from that store."""

    def __init__(
        self, path: Path, limit: int, delete: Callable[[bytes], None], clock: Callable[[], int] = time.time_ns
    ) -> None:
        self.limit = limit  # bytes; 0: no limit
        self._delete = delete
        self._clock = clock
        self._lock = threading.Lock()
        self._read: dict[bytes, int] = {}  # reads not yet written down: cid -> when
        try:
            self._db = open_db(path, durability="normal")  # a cache: a lost write costs a refetch
            self._db.executescript(_SCHEMA)
            self._bytes = int(self._db.execute("SELECT coalesce(sum(size), 0) FROM fetched").fetchone()[0])
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the fetch cache at {path}: {exc}") from exc

    def statistics(self) -> dict[str, int]:
        with self._lock:
            objects = int(self._db.execute("SELECT count(*) FROM fetched").fetchone()[0])
            return {"objects": objects, "bytes": self._bytes, "limit": self.limit}

    def fetched(self, cid: bytes, size: int) -> None:
        """``cid`` (``size`` bytes) was fetched and stored; drop the least used if that passes the limit."""
        with self._lock:
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO fetched (cid, size, used) VALUES (?, ?, ?)", (cid, size, self._clock())
            ).rowcount
            self._bytes += size if inserted else 0
        self.trim()

    def trim(self) -> int:
        """Past the limit, drop the least recently read down to ``LOW_WATER`` of it; how many were dropped."""
        with self._lock:
            over = bool(self.limit) and self._bytes > self.limit
        return self.shrink(int(self.limit * LOW_WATER)) if over else 0

    def read(self, cid: bytes) -> None:
        """``cid`` was read from the local store (written down at the next shrink or close)."""
        with self._lock:
            self._read[cid] = self._clock()

    def shrink(self, keep: int) -> int:
        """Delete the least recently used fetched objects until at most ``keep`` bytes are left; how many."""
        dropped = 0
        with self._lock:
            self._write_reads()
            while self._bytes > keep:
                rows = self._db.execute("SELECT cid, size FROM fetched ORDER BY used LIMIT 64").fetchall()
                if not rows:
                    self._bytes = 0
                    break
                for cid, size in rows:
                    self._delete(cid)  # the object first: a row without its object is harmless, not the reverse
                    self._db.execute("DELETE FROM fetched WHERE cid = ?", (cid,))
                    self._bytes -= size
                    dropped += 1
                    if self._bytes <= keep:
                        break
        return dropped

    def forget(self, cid: bytes) -> None:
        """``cid`` left the store otherwise (gc): no longer counted."""
        with self._lock:
            row = self._db.execute("DELETE FROM fetched WHERE cid = ? RETURNING size", (cid,)).fetchone()
            if row is not None:
                self._bytes -= row[0]

    def _write_reads(self) -> None:
        if not self._bytes:  # nothing fetched is held: the reads were of this device's own objects
            self._read.clear()
        if self._read:
            self._db.executemany("UPDATE fetched SET used = ? WHERE cid = ?", [(t, c) for c, t in self._read.items()])
            self._read.clear()

    def close(self) -> None:
        with self._lock:
            self._write_reads()
            self._db.close()
