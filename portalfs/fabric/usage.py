"""Bytes moved with each edge per local day, shared by the device's processes (docs/design.md, section 14,
"Limits"): an edge's daily cap holds for portald, its mounts and its commands together, not for each alone.

One small SQLite file beside the device's state (``usage.db``): each process adds what it moved since it last
did, and reads back the day's totals. Written only where some edge has a daily cap.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from ..sqlite import open_db, transaction

__all__ = ["EdgeUsage", "KEEP_DAYS"]

KEEP_DAYS = 7  # days of figures kept

_SCHEMA = """CREATE TABLE IF NOT EXISTS usage (day INTEGER NOT NULL, edge BLOB NOT NULL, bytes INTEGER NOT NULL,
    PRIMARY KEY (day, edge)) WITHOUT ROWID"""


class EdgeUsage:
    """The file is opened at the first ``add``: a process that never moves bytes with a capped edge (most of
    them) never opens it."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = open_db(self._path, durability="normal")  # a power cut may lose a few seconds of counting
            self._db.execute(_SCHEMA)
        return self._db

    def add(self, day: int, moved: dict[bytes, int]) -> dict[bytes, int]:
        """Add ``moved`` (bytes per edge key, since this process last added) to ``day``'s; return the day's
        totals, every process's, per edge."""
        with self._lock:
            opened = self._open()
        with transaction(opened, self._lock) as db:
            db.executemany(
                "INSERT INTO usage VALUES (?, ?, ?) "
                "ON CONFLICT (day, edge) DO UPDATE SET bytes = bytes + excluded.bytes",
                [(day, key, size) for key, size in moved.items() if size],
            )
            db.execute("DELETE FROM usage WHERE day < ?", (day - KEEP_DAYS,))
            return {bytes(key): size for key, size in db.execute("SELECT edge, bytes FROM usage WHERE day = ?", (day,))}
