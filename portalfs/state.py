"""The device's state database (SQLite, WAL): identity facts, portals, versions, journal, files cache.

The versions table holds the root records: a version exists once its row is
committed, and every object reachable from a recorded version is pinned
(garbage collection never removes it). The journal table holds files a mount
made durable since the newest version. See docs/design.md, sections 8 and 9.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AlreadyExists, NotFound, StorageError, StoreFull, shown
from .root import RootRecord
from .sqlite import full_disk, open_db, transaction

__all__ = ["StateDB", "PortalRow", "VersionRow", "CachedFile"]

SCHEMA_VERSION = 1
CACHED_FILES_PER_QUERY = 500  # paths in one files-cache query of ``cached_files`` (its IN list)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    public BLOB PRIMARY KEY, name TEXT NOT NULL, cert BLOB NOT NULL, enrolled_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS portals (
    id BLOB PRIMARY KEY, name TEXT NOT NULL UNIQUE, wrapped_key BLOB NOT NULL, created_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    portal BLOB NOT NULL REFERENCES portals(id), version INTEGER NOT NULL, record BLOB NOT NULL,
    time_ns INTEGER NOT NULL, device BLOB NOT NULL, size INTEGER NOT NULL, files INTEGER NOT NULL,
    PRIMARY KEY (portal, version));
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, portal BLOB NOT NULL, base INTEGER NOT NULL, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS files_cache (
    portal BLOB NOT NULL, path BLOB NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, node BLOB NOT NULL,
    PRIMARY KEY (portal, path));
CREATE TABLE IF NOT EXISTS underplaced (portal BLOB NOT NULL, cid BLOB NOT NULL, PRIMARY KEY (portal, cid))
    WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class PortalRow:
    id: bytes
    name: str
    wrapped_key: bytes
    created_ns: int


@dataclass(frozen=True, slots=True)
class VersionRow:
    portal: bytes
    version: int
    record: RootRecord
    time_ns: int
    device: bytes
    size: int
    files: int


@dataclass(frozen=True, slots=True)
class CachedFile:
    """What a source file looked like when it was last ingested, and its file node (CBOR ref)."""

    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    node: bytes


def _cached_file(row: Sequence[Any]) -> CachedFile:
    """A files_cache row's (ino, size, mtime_ns, ctime_ns, node) as a CachedFile."""
    return CachedFile(row[0], row[1], row[2], row[3], bytes(row[4]))


class _Serialized:
    """A connection whose statements each wait for ``lock`` (held by a transaction in another thread)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock) -> None:
        self._db = db
        self._lock = lock

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, parameters)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> sqlite3.Cursor:
        with self._lock:
            return self._db.executemany(sql, rows)


class StateDB:
    def __init__(self, path: Path) -> None:
        try:
            self._connection = open_db(path, durability="full", foreign_keys=True)
            self._connection.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            if full_disk(exc):
                raise StoreFull(f"no space left to open the device state {path}") from exc
            raise StorageError(f"cannot open the device state {path}: {exc}") from exc

        # One connection, used by several threads of a process (a mount's commits and journal writes, its
        # publisher): a transaction holds the lock, so another thread's statement waits for its end rather
        # than landing inside it.
        self._lock = threading.RLock()
        self._db = _Serialized(self._connection, self._lock)

    def close(self) -> None:
        self._connection.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction; inside one this thread holds already, a part of that one."""
        with self._lock:
            if self._connection.in_transaction:  # the lock is held for a transaction's length: it is this thread's
                yield
                return
            with transaction(self._connection, self._lock):
                yield

    # meta

    def get_meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def set_meta(self, key: str, value: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def delete_meta(self, key: str) -> None:
        self._db.execute("DELETE FROM meta WHERE key = ?", (key,))

    # devices

    def add_device(self, public: bytes, name: str, cert: bytes, enrolled_ns: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO devices (public, name, cert, enrolled_ns) VALUES (?, ?, ?, ?)",
            (public, name, cert, enrolled_ns),
        )

    def device_cert(self, public: bytes) -> bytes | None:
        row = self._db.execute("SELECT cert FROM devices WHERE public = ?", (public,)).fetchone()
        return None if row is None else bytes(row[0])

    def device_certs(self) -> dict[bytes, bytes]:
        """Every known device's enrollment certificate (this identity's devices, and writers' of shared portals)."""
        return {bytes(p): bytes(c) for p, c in self._db.execute("SELECT public, cert FROM devices")}

    def device_names(self) -> dict[bytes, str]:
        return {bytes(p): n for p, n in self._db.execute("SELECT public, name FROM devices")}

    # portals

    def add_portal(self, row: PortalRow) -> None:
        try:
            self._db.execute(
                "INSERT INTO portals (id, name, wrapped_key, created_ns) VALUES (?, ?, ?, ?)",
                (row.id, row.name, row.wrapped_key, row.created_ns),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"portal {shown(row.name)} already exists") from None

    def set_portal_key(self, portal: bytes, wrapped_key: bytes) -> None:
        self._db.execute("UPDATE portals SET wrapped_key = ? WHERE id = ?", (wrapped_key, portal))

    def portal(self, name: str) -> PortalRow:
        row = self._db.execute(
            "SELECT id, name, wrapped_key, created_ns FROM portals WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no portal named {shown(name)} (see `portalctl portal ls`)")
        return PortalRow(bytes(row[0]), row[1], bytes(row[2]), row[3])

    def portals(self) -> list[PortalRow]:
        rows = self._db.execute("SELECT id, name, wrapped_key, created_ns FROM portals ORDER BY name")
        return [PortalRow(bytes(r[0]), r[1], bytes(r[2]), r[3]) for r in rows]

    # versions

    def _version_row(self, row: tuple[Any, ...]) -> VersionRow:
        return VersionRow(
            bytes(row[0]), row[1], RootRecord.from_bytes(bytes(row[2])), row[3], bytes(row[4]), row[5], row[6]
        )

    def add_version(self, record: RootRecord, size: int, files: int) -> None:
        """Record a new head. The caller holds the device lock, so the parent check cannot race."""
        head = self.head(record.portal)
        expected = 1 if head is None else head.version + 1
        if record.version != expected or record.parent != (None if head is None else head.record.record_id):
            raise StorageError(f"version {record.version} does not follow the recorded head")
        self._db.execute(
            "INSERT INTO versions (portal, version, record, time_ns, device, size, files) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (record.portal, record.version, record.to_bytes(), record.time_ns, record.device, size, files),
        )

    def deleted_until(self, portal: bytes) -> int | None:
        """When a deleted portal stops being restorable (ns since the epoch); None if it is not deleted."""
        raw = self.get_meta(f"deleted:{portal.hex()}")
        return None if raw is None else int(raw)

    def set_deleted(self, portal: bytes, until_ns: int | None, here: bool = False) -> None:
        """Mark the portal deleted, restorable until ``until_ns``; None: not deleted (restored).

        ``here``: deleted on this device alone (no hub), which garbage collection forgets after ``until_ns``;
        a portal deleted at the hub stays in the identity's keyring, and on this device.
        """
        if until_ns is None:
            self.delete_meta(f"deleted:{portal.hex()}")
            self.delete_meta(f"deleted-here:{portal.hex()}")
        else:
            self.set_meta(f"deleted:{portal.hex()}", str(until_ns).encode())
            if here:
                self.set_meta(f"deleted-here:{portal.hex()}", b"1")

    def forgotten_after(self, portal: bytes) -> int | None:
        """When garbage collection forgets a portal deleted on this device alone; None for any other."""
        return self.deleted_until(portal) if self.get_meta(f"deleted-here:{portal.hex()}") else None

    def remove_portal(self, portal: bytes) -> None:
        """Forget the portal on this device: its versions, journal, files cache and what is recorded of it."""
        with self.transaction():
            for table in ("journal", "files_cache", "versions", "underplaced"):
                self._db.execute(f"DELETE FROM {table} WHERE portal = ?", (portal,))  # noqa: S608 - fixed names
            self._db.execute("DELETE FROM portals WHERE id = ?", (portal,))
            self._db.execute("DELETE FROM meta WHERE key LIKE ?", (f"%:{portal.hex()}",))

    def underplaced(self, portal: bytes) -> list[bytes]:
        """The portal's objects that a push placed on fewer edges than R: the next push places them again."""
        return [bytes(r[0]) for r in self._db.execute("SELECT cid FROM underplaced WHERE portal = ?", (portal,))]

    def set_underplaced(self, portal: bytes, cids: list[bytes]) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM underplaced WHERE portal = ?", (portal,))
            self._db.executemany("INSERT INTO underplaced VALUES (?, ?)", [(portal, cid) for cid in cids])

    def drop_versions_after(self, portal: bytes, version: int) -> None:
        """Forget the portal's versions after ``version`` (unpublished ones a merge replaced); in a transaction."""
        self._db.execute("DELETE FROM versions WHERE portal = ? AND version > ?", (portal, version))

    def head(self, portal: bytes) -> VersionRow | None:
        row = self._db.execute(
            "SELECT portal, version, record, time_ns, device, size, files FROM versions"
            " WHERE portal = ? ORDER BY version DESC LIMIT 1",
            (portal,),
        ).fetchone()
        return None if row is None else self._version_row(row)

    def version(self, portal: bytes, version: int) -> VersionRow:
        row = self._db.execute(
            "SELECT portal, version, record, time_ns, device, size, files FROM versions"
            " WHERE portal = ? AND version = ?",
            (portal, version),
        ).fetchone()
        if row is None:
            raise NotFound(f"no version {version}")
        return self._version_row(row)

    def versions(self, portal: bytes | None = None, after: int = 0) -> list[VersionRow]:
        """A portal's versions past ``after`` (every portal's, with ``portal`` None), in order; each record is
        parsed and its signature checked, so a caller that needs the newest asks for those alone."""
        query = "SELECT portal, version, record, time_ns, device, size, files FROM versions"
        rows = (
            self._db.execute(query + " WHERE portal = ? AND version > ? ORDER BY version", (portal, after))
            if portal is not None
            else self._db.execute(query + " WHERE version > ? ORDER BY portal, version", (after,))
        )
        return [self._version_row(r) for r in rows]

    # journal: changes made durable since the newest version, replayed on top of it

    def add_journal(self, portal: bytes, base: int, record: bytes) -> int:
        """Append a record; return its sequence number."""
        cursor = self._db.execute("INSERT INTO journal (portal, base, record) VALUES (?, ?, ?)", (portal, base, record))
        return int(cursor.lastrowid or 0)

    def journal(self, portal: bytes | None = None) -> list[tuple[bytes, int, bytes]]:
        """(portal, base version, record) in the order they were written."""
        query = "SELECT portal, base, record FROM journal"
        rows = (
            self._db.execute(query + " WHERE portal = ? ORDER BY seq", (portal,))
            if portal is not None
            else self._db.execute(query + " ORDER BY seq")
        )
        return [(bytes(p), b, bytes(r)) for p, b, r in rows]

    def journal_records(self, portal: bytes) -> list[tuple[int, bytes]]:
        """The portal's (sequence number, record), in the order they were written."""
        rows = self._db.execute("SELECT seq, record FROM journal WHERE portal = ? ORDER BY seq", (portal,))
        return [(seq, bytes(record)) for seq, record in rows]

    def clear_journal(self, portal: bytes, up_to: int | None = None) -> None:
        """Delete the portal's records (only those numbered up to ``up_to``, when given)."""
        if up_to is None:
            self._db.execute("DELETE FROM journal WHERE portal = ?", (portal,))
        else:
            self._db.execute("DELETE FROM journal WHERE portal = ? AND seq <= ?", (portal, up_to))

    # files cache

    def cached_files(self, portal: bytes, paths: list[bytes]) -> dict[bytes, CachedFile]:
        """``cached_file`` of many paths (a directory's), a query per CACHED_FILES_PER_QUERY of them, not one each."""
        found: dict[bytes, CachedFile] = {}
        for i in range(0, len(paths), CACHED_FILES_PER_QUERY):
            batch = paths[i : i + CACHED_FILES_PER_QUERY]
            rows = self._db.execute(
                "SELECT path, ino, size, mtime_ns, ctime_ns, node FROM files_cache WHERE portal = ? AND path IN"
                f" ({', '.join('?' * len(batch))})",
                (portal, *batch),
            ).fetchall()
            found.update((bytes(r[0]), _cached_file(r[1:])) for r in rows)
        return found

    def cached_file(self, portal: bytes, path: bytes) -> CachedFile | None:
        row = self._db.execute(
            "SELECT ino, size, mtime_ns, ctime_ns, node FROM files_cache WHERE portal = ? AND path = ?", (portal, path)
        ).fetchone()
        return None if row is None else _cached_file(row)

    def cache_files(self, portal: bytes, rows: list[tuple[bytes, CachedFile]]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO files_cache (portal, path, ino, size, mtime_ns, ctime_ns, node)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(portal, path, c.ino, c.size, c.mtime_ns, c.ctime_ns, c.node) for path, c in rows],
        )

    # Rows of the files cache that a put has found but may not record yet (their nodes are in no version
    # until it commits), kept in a TEMP table of this connection rather than in the put's memory: a put of
    # a million files held about 400 bytes for each. The table goes with the process; ``drop_staged_files``
    # empties a put's share when it fails.

    def stage_cached_files(self, token: bytes, rows: list[tuple[bytes, CachedFile]]) -> None:
        """Keep ``rows`` under ``token`` (one put's) until ``cache_staged_files`` or ``drop_staged_files``."""
        self._staged_table()
        self._db.executemany(
            "INSERT OR REPLACE INTO temp.staged_files (token, path, ino, size, mtime_ns, ctime_ns, node)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(token, path, c.ino, c.size, c.mtime_ns, c.ctime_ns, c.node) for path, c in rows],
        )

    def cache_staged_files(self, portal: bytes, token: bytes) -> None:
        """Record the rows staged under ``token`` as the portal's files cache (in the caller's transaction)."""
        self._staged_table()
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO files_cache (portal, path, ino, size, mtime_ns, ctime_ns, node)"
                " SELECT ?, path, ino, size, mtime_ns, ctime_ns, node FROM temp.staged_files WHERE token = ?",
                (portal, token),
            )
            self._db.execute("DELETE FROM temp.staged_files WHERE token = ?", (token,))

    def drop_staged_files(self, token: bytes) -> None:
        self._staged_table()
        self._db.execute("DELETE FROM temp.staged_files WHERE token = ?", (token,))

    def _staged_table(self) -> None:
        self._db.execute(
            "CREATE TEMP TABLE IF NOT EXISTS staged_files (token BLOB NOT NULL, path BLOB NOT NULL,"
            " ino INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,"
            " node BLOB NOT NULL, PRIMARY KEY (token, path))"
        )
