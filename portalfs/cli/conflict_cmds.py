"""portalctl conflicts and resolve: the conflict copies of a portal, and settling one (docs/design.md, section
14, "Conflicts")."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..conflicts import ConflictCopy, find, read_mark, settle
from ..device import Device
from ..errors import NotFound, UsageError, shown
from ..merge import CONFLICT_XATTR
from ..worktree.journal import writing
from .common import emit, open_view, unlock

__all__ = ["register"]


def _when(ns: int | None) -> str:
    if ns is None:
        return "(gone)"
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def cmd_conflicts(device: Device, args: argparse.Namespace) -> int:
    secrets = unlock(device, args)
    names = args.names or [row.name for row in device.state.portals()]
    found: list[tuple[str, ConflictCopy]] = []
    for name in names:
        view = open_view(device, secrets, name, keep=True)  # NotFound names an unknown portal
        head = device.state.head(view.row.id)
        if head is not None:
            found += [(name, copy) for copy in find(view, view.root(head).entry)]
    lines = [
        f"{name}: {c.path}  ({c.copy_device}, {_when(c.copy_mtime_ns)})  beside {c.of}  "
        f"({c.name_device}, {_when(c.name_mtime_ns)})"
        for name, c in found
    ]
    emit(args, [{"portal": name, **c.to_json()} for name, c in found], "\n".join(lines) or "no conflicts")
    return 0


def cmd_resolve(device: Device, args: argparse.Namespace) -> int:
    """Settle a conflict: in the read-write mount when one is mounted, else as a new version."""
    from .portalfs import live_mounts

    secrets = unlock(device, args)
    mounts = [m for m in live_mounts(device) if m["portal"] == args.name and m["writable"]]
    if mounts:
        what = _settle_in_mount(Path(mounts[0]["mountpoint"]), args.path, args.keep, secrets.device.public)
        emit(args, {"portal": args.name, "kept": args.keep, "mount": mounts[0]["mountpoint"]}, what)
        return 0
    view = open_view(device, secrets, args.name)
    with writing(view, secrets, f"resolve {args.name}"), device.exclusive():
        version = settle(view, secrets, args.path, args.keep, time.time_ns())
    emit(args, {"portal": args.name, "kept": args.keep, "version": version.version},
         f"{args.name} v{version.version}: kept {args.keep}")  # fmt: skip
    return 0


def _settle_in_mount(mnt: Path, path: str, keep: str, me: bytes) -> str:
    """The same settlement through the mount's files (the mount commits and publishes it)."""
    target = mnt / path.strip("/")
    marked = [(target, _mark(target))]
    if marked[0][1] is None and target.parent.is_dir():  # PATH names the original: its copies beside it
        marked = [(p, _mark(p)) for p in target.parent.iterdir()]
        marked = [(p, mark) for p, mark in marked if mark is not None and mark["of"] == os.fsencode(target.name)]
    candidates = [(p, mark) for p, mark in marked if mark is not None]
    if not candidates:
        raise NotFound(f"no conflict copy at or of {shown(path)} in {mnt}")
    if len(candidates) > 1:
        raise UsageError(f"{shown(path)} has {len(candidates)} conflict copies: name one")
    copy, mark = candidates[0]
    of = mark["of"]
    assert isinstance(of, bytes)  # read_mark checked it
    original = copy.parent / os.fsdecode(of)
    if keep == "both":
        os.removexattr(copy, CONFLICT_XATTR.decode())
        return f"kept both: {copy} and {original}"
    if (keep == "mine") == (mark.get("copy_key") == me):
        os.removexattr(copy, CONFLICT_XATTR.decode())
        os.replace(copy, original)
    else:
        os.unlink(copy)
    return f"kept {keep} at {original}"


def _mark(path: Path) -> dict[str, object] | None:
    try:
        return read_mark(os.getxattr(path, CONFLICT_XATTR.decode(), follow_symlinks=False))
    except OSError:  # no such file, or no mark on it
        return None


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    c = command("conflicts", cmd_conflicts, "list the conflict copies of portals (all, or NAME...)")
    c.add_argument("names", nargs="*", metavar="NAME")
    c = command("resolve", cmd_resolve, "settle a conflict: keep this device's bytes, the other's, or both")
    c.add_argument("name", metavar="NAME")
    c.add_argument("path", metavar="PATH", help="the conflict copy, or the name it is beside")
    c.add_argument("--keep", choices=["mine", "theirs", "both"], required=True)
