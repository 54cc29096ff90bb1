"""Every SQLite database of Portal is opened, and written in transactions, here.

``open_db`` sets what each needs: write-ahead logging (readers never wait for
the writer), a busy timeout (a second process waits for the write lock rather
than failing at once), foreign keys where asked, and the durability asked for
(``full``: a committed transaction survives a power cut; ``normal``: it may be
lost, never corrupted). ``transaction`` always rolls back on an error, and says a full disk as
``StoreFull`` (a clear error, not a crash, with nothing half-written).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Literal

from .errors import StoreFull

__all__ = ["open_db", "transaction", "full_disk", "BUSY_TIMEOUT_MS"]

BUSY_TIMEOUT_MS = 10_000


def open_db(
    path: Path | str,
    *,
    durability: Literal["full", "normal"] = "full",
    foreign_keys: bool = False,
    busy_timeout_ms: int = BUSY_TIMEOUT_MS,
) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), usable from any thread that holds its lock."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=" + ("FULL" if durability == "full" else "NORMAL"))
        if foreign_keys:
            db.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        db.close()
        raise
    return db


@contextmanager
def transaction(
    db: sqlite3.Connection, lock: AbstractContextManager[object] | None = None, *, mode: str = "IMMEDIATE"
) -> Iterator[sqlite3.Connection]:
    """``BEGIN`` (IMMEDIATE: take the write lock now), then COMMIT, or ROLLBACK on any error; under ``lock``."""
    with lock if lock is not None else nullcontext():
        db.execute(f"BEGIN {mode}")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:  # a COMMIT that failed may have rolled back already
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error) and full_disk(exc):
                raise StoreFull(f"no space left to write {_file_of(db)}") from exc
            raise


def full_disk(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says the disk is full: a write, or the shared-memory file a WAL database opens with."""
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR_SHMSIZE)


def _file_of(db: sqlite3.Connection) -> str:
    row = db.execute("PRAGMA database_list").fetchone()
    return str(row[2]) if row and row[2] else "the database"
