"""A device's local store as a test sees it: each object a file, or a row of the index (docs/design.md, section 8)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import blake3


def _db(home: Path) -> closing[sqlite3.Connection]:
    return closing(sqlite3.connect(home / "store" / "index.db", isolation_level=None))


def object_files(home: Path) -> list[Path]:
    """The objects kept as files (those over the small-object size)."""
    objects = home / "store" / "objects"
    return sorted(p for p in objects.rglob("*") if p.is_file() and len(p.name) == 64) if objects.exists() else []


def held(home: Path) -> list[str]:
    """The id (lowercase hex) of every object the device holds, files and rows."""
    if not (home / "store" / "index.db").exists():
        return [p.name for p in object_files(home)]
    with _db(home) as db:
        rows = [bytes(cid).hex() for (cid,) in db.execute("SELECT cid FROM small")]
    return sorted(rows + [p.name for p in object_files(home)])


def largest(home: Path) -> Path:
    """The file of the largest object the device holds."""
    return max(object_files(home), key=lambda p: p.stat().st_size)


def read(home: Path, cid: str) -> bytes | None:
    path = home / "store" / "objects" / cid[:2] / cid
    if path.exists():
        return path.read_bytes()
    with _db(home) as db:
        row = db.execute("SELECT data FROM small WHERE cid = ?", (bytes.fromhex(cid),)).fetchone()
    return None if row is None else bytes(row[0])


def flip(home: Path, cid: str) -> None:
    """Flip one bit in the middle of a held object, wherever it is kept."""
    data = read(home, cid)
    assert data is not None, f"{cid} is not held"
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0x10
    path = home / "store" / "objects" / cid[:2] / cid
    if path.exists():
        path.write_bytes(bytes(damaged))
        return
    with _db(home) as db:
        db.execute("UPDATE small SET data = ? WHERE cid = ?", (bytes(damaged), bytes.fromhex(cid)))


def intact(home: Path, cid: str) -> bool:
    data = read(home, cid)
    return data is not None and blake3.blake3(data).hexdigest() == cid
