"""Conflict copies: finding them in a version, and settling one as a new version (docs/design.md, section 14,
"Conflicts").

A merge or a live mount that cannot keep both devices' bytes under one name
keeps one under the name and the other beside it, marked with
``merge.CONFLICT_XATTR``: the name it was, the device whose bytes are in the
copy, and the device whose bytes kept the name. ``find`` lists the marked
copies of a version; ``settle`` makes the new version that keeps this
device's bytes (*mine*), the other device's (*theirs*), or *both* (the copy
stays, unmarked, as a file of its own).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Literal

from . import encoding
from .device import Unlocked
from .errors import NotFound, UsageError, shown
from .merge import CONFLICT_XATTR
from .portal import PortalView
from .state import VersionRow
from .tree import Entry

__all__ = ["ConflictCopy", "find", "settle", "read_mark"]

Keep = Literal["mine", "theirs", "both"]


@dataclass(frozen=True, slots=True)
class ConflictCopy:
    path: str  # the copy
    of: str  # the name it lost: the other device's bytes are there (if it is still there)
    copy_device: str  # whose bytes the copy holds
    name_device: str  # whose bytes kept the name
    copy_mtime_ns: int
    name_mtime_ns: int | None  # None: the name is gone since
    copy_key: bytes = b""  # the devices' keys (their names need not differ)
    name_key: bytes = b""

    def to_json(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        out.update(copy_key=self.copy_key.hex(), name_key=self.name_key.hex())
        return out


def read_mark(raw: bytes | None) -> dict[str, object] | None:
    """A conflict copy's mark (the value of CONFLICT_XATTR), or None when ``raw`` is none or not one."""
    if raw is None:
        return None
    try:
        mark = encoding.decode(raw)
    except encoding.DecodeError:
        return None
    ok = isinstance(mark, dict) and isinstance(mark.get("of"), bytes)
    return mark if ok and all(isinstance(mark.get(k), str) for k in ("copy", "name")) else None


def find(view: PortalView, root: Entry) -> list[ConflictCopy]:
    """Every marked conflict copy under ``root``, in path order (reads every directory of the version)."""
    found: list[ConflictCopy] = []

    def walk(directory: Entry, prefix: str) -> None:
        if directory.node is None:
            return
        children = {child.name: child for child in view.load_dir(directory.node)}
        for name, child in sorted(children.items()):
            path = prefix + os.fsdecode(name)
            if child.is_dir:
                walk(child, path + "/")
                continue
            mark = read_mark(child.xattrs.get(CONFLICT_XATTR))
            if mark is not None:
                of = mark["of"]
                assert isinstance(of, bytes)
                original = children.get(of)
                keys = [k if isinstance(k := mark.get(f), bytes) else b"" for f in ("copy_key", "name_key")]
                found.append(
                    ConflictCopy(path, prefix + os.fsdecode(of), str(mark["copy"]), str(mark["name"]),
                                 child.mtime_ns, None if original is None else original.mtime_ns, *keys)
                )  # fmt: skip

    walk(root, "")
    return found


def settle(view: PortalView, secrets: Unlocked, path: str, keep: Keep, now_ns: int) -> VersionRow:
    """A new version that settles the conflict copy at ``path`` (or the one of the name at ``path``): *mine* is
    this device's bytes (by its key). Hold the portal's writer locks."""
    head = view.version()
    copies = [c for c in find(view, view.root(head).entry) if path.strip("/") in (c.path, c.of)]
    if not copies:
        raise NotFound(f"no conflict copy at or of {shown(path)} in {view.row.name} v{head.version}")
    if len(copies) > 1:
        raise UsageError(
            f"{shown(path)} has {len(copies)} conflict copies: name one ({', '.join(c.path for c in copies)})"
        )
    copy = copies[0]
    entry = view.lookup(view.root(head).entry, copy.path)
    mine_beside = copy.copy_key == secrets.device.public  # this device's bytes are in the copy
    if keep == "both":
        changes: dict[str, Entry | None] = {copy.path: _unmarked(entry)}
    elif (keep == "mine") == mine_beside:  # the copy's bytes win: they take the name back
        changes = {copy.of: dataclasses.replace(_unmarked(entry), name=os.fsencode(copy.of.rsplit("/", 1)[-1])),
                   copy.path: None}  # fmt: skip
    else:  # the name's bytes win: the copy goes
        changes = {copy.path: None}
    return view.edit(secrets, changes, now_ns)


def _unmarked(entry: Entry) -> Entry:
    return dataclasses.replace(entry, xattrs={k: v for k, v in entry.xattrs.items() if k != CONFLICT_XATTR})
