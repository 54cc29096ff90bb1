"""put and get as `portalctl` runs them: in its own process, or handed to portald (docs/design.md, section 16,
"put and get in portald"). Each gives the command's answer as a JSON-ready dict; the words for a person are
``portalfs.cli.handoff``'s."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from .device import Unlocked
from .errors import NotFound, StoreFull
from .portal import PortalView
from .restore import Restorer
from .state import VersionRow
from .tree import Entry
from .worktree.journal import writing

__all__ = ["put_sources", "get_target", "get_into", "fetched_since"]


def put_sources(
    view: PortalView,
    secrets: Unlocked,
    sources: Sequence[str],
    *,
    stream: tuple[bytes, BinaryIO] | None = None,
    progress: Callable[[int], None] | None = None,
    warn: Callable[[str], None],
) -> dict[str, Any]:
    """Put ``sources`` (and ``stream``, a name and its bytes) into ``view``'s portal as a new version."""
    with writing(view, secrets, f"put {view.row.name}"):
        started = time.monotonic()
        with view.device.exclusive():
            try:
                version, stats = view.put(
                    secrets, list(sources), time.time_ns(), progress=progress, warn=warn, stream=stream
                )
            except StoreFull as exc:  # no version was made: what it stored, no version names
                raise StoreFull(f"{exc} (no version made; `portalctl gc` drops what this put stored)") from exc
        elapsed = time.monotonic() - started
    return {
        "portal": view.row.name,
        "version": version.version,
        "files": stats.files,
        "dirs": stats.dirs,
        "symlinks": stats.symlinks,
        "skipped": stats.skipped,
        "bytes_read": stats.bytes_read,
        "bytes_reused": stats.bytes_reused,
        "bytes_stored": stats.bytes_stored,
        "chunks": stats.chunks,
        "chunks_stored": stats.chunks_stored,
        "seconds": round(elapsed, 3),
        "unchanged": stats.unchanged,
    }


def get_target(view: PortalView, dest: Path, version: int | None, path: str | None) -> tuple[VersionRow, Entry]:
    """What a get restores: ``view``'s portal at ``version`` (the newest by default), or its ``path``; raises
    NotFound for those, and for a ``dest`` with no directory to go in."""
    row = view.version(version)
    entry = view.lookup(view.root(row).entry, path or "")
    if not dest.parent.is_dir() and not dest.is_dir():
        what = "is not a directory" if dest.parent.exists() else "does not exist"
        raise NotFound(f"destination {dest}: {dest.parent} {what}")
    return row, entry


def get_into(
    view: PortalView,
    target: tuple[VersionRow, Entry],
    dest: Path,
    *,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Restore ``target`` (``get_target``'s) into ``dest``."""
    row, entry = target
    restorer = Restorer(view, overwrite=overwrite, progress=progress)
    restorer.restore(entry, dest)
    s = restorer.stats
    return {"version": row.version, "files": s.files, "dirs": s.dirs, "symlinks": s.symlinks, "bytes": s.bytes}


def fetched_since(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, Any]:
    """A swarm's figures (``Swarm.fetched``) for what it did between ``before`` and ``after``: its counts less
    those before, its rates and what is left as they are now (portald's swarm serves every command and sync)."""
    if before is None:
        return after
    since = dict(after)
    for key in ("asked_bytes", "duplicate_bytes", "wasted_bytes"):
        since[key] = after[key] - before.get(key, 0)
    since["sends"] = {k: n - before["sends"].get(k, 0) for k, n in after["sends"].items()}
    since["edges"] = {
        name: {**figures, "bytes": figures["bytes"] - before["edges"].get(name, {}).get("bytes", 0)}
        for name, figures in after["edges"].items()
    }
    return since
