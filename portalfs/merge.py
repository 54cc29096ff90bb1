"""Three-way merge of two versions' trees over the version both were made from.

When another device published first, what this device made since the last
version it published (*ours*) is merged into the hub's newest version
(*theirs*) over that common version (*base*), name by name, directory by
directory (a change is one of content, kind, mode, link target or xattrs, not
of times or owners): a change made on one side only is taken; the same change on both
is taken once; a directory changed on both sides is merged inside; a file (or
a symlink, or a file against a directory) changed differently on both sides is
a true conflict, and both are kept: theirs under its name, ours beside it as
``name (conflict DEVICE YYYY-MM-DD).ext``. A deletion on one side against a
change on the other keeps the change; a directory deleted on one side and
changed inside on the other is merged inside as if emptied, so that only
what the other side changed stays. Each name of a hard-linked file is
merged as a file; a conflict copy is a file of its own (it leaves the link
group), and a link group whose names came out with different content or
metadata is split, one group per variant, so that no name's bytes are hidden
behind another's (``split_links``). Nothing but the two callables touches
storage: nodes are read with ``load_node`` and new directory nodes written
with ``store_node``. See docs/design.md, "Sync".
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from . import encoding
from .sealing import ChunkRef
from .tree import Entry, holds_links, load_dir, store_dir

__all__ = ["MergeResult", "merge_trees", "conflict_name", "conflict_copy", "CONFLICT_XATTR", "Beside", "Writer"]

CONFLICT_XATTR = b"user.portal.conflict"  # on a conflict copy: CBOR {of, copy, name} (docs/design.md, section 14)
Beside = Callable[[Entry, set[bytes]], Entry]  # (the entry to keep beside, names taken) -> the conflict copy

NodeLoader = Callable[[ChunkRef], bytes]
NodeStorer = Callable[[bytes], ChunkRef]
MAX_NAME = 255  # bytes in a name (tree.validate_name)


@dataclass(slots=True)
class MergeResult:
    root: Entry
    conflicts: list[str] = field(default_factory=list)  # paths where ours was kept beside theirs


def conflict_name(name: bytes, device: str, date: str, taken: set[bytes]) -> bytes:
    """``report.txt`` → ``report (conflict laptop 2026-12-02).txt``, numbered past names already ``taken``."""
    stem, dot, ext = name.rpartition(b".")
    if not stem or not dot:  # no extension, or a name like ".profile"
        stem, dot, ext = name, b"", b""
    for n in range(1, 10_000):
        label = f" (conflict {device} {date}{'' if n == 1 else f' {n}'})".encode()
        room = MAX_NAME - len(label) - len(dot) - len(ext)
        candidate = stem[: max(1, room)] + label + dot + ext
        if candidate not in taken:
            return candidate
    raise ValueError(f"no free name beside {name!r}")


@dataclass(frozen=True, slots=True)
class Writer:
    """A device, as a conflict copy names it: its name, and its key (names need not differ)."""

    name: str
    key: bytes


def conflict_copy(entry: Entry, taken: set[bytes], copy: Writer, kept: Writer, date: str) -> Entry:
    """``entry`` (``copy``'s bytes) kept beside the name it lost to ``kept``'s, as a conflict copy: renamed
    (``conflict_name``), out of any link group, and marked with CONFLICT_XATTR, CBOR
    ``{of: the name, copy: name, copy_key: key, name: name, name_key: key}``."""
    name = conflict_name(entry.name, copy.name, date, taken)
    mark = encoding.encode(
        {"of": entry.name, "copy": copy.name, "copy_key": copy.key, "name": kept.name, "name_key": kept.key}
    )
    return dataclasses.replace(entry, name=name, link=None, xattrs={**entry.xattrs, CONFLICT_XATTR: mark})


def merge_trees(
    base: Entry | None,
    ours: Entry,
    theirs: Entry,
    load_node: NodeLoader,
    store_node: NodeStorer,
    beside: Beside,
) -> MergeResult:
    """Merge the root directories ``ours`` and ``theirs`` over ``base`` (None: they share no version);
    ``beside`` makes the conflict copy of ours' entry (``conflict_copy``)."""
    merger = _Merger(load_node, store_node, beside)
    root = merger.directory(base, ours, theirs, b"")
    return MergeResult(split_links(root, load_node, store_node), merger.conflicts)


def _variant(entry: Entry) -> tuple[object, ...]:
    """What the names of one hard-linked file must share: everything but the name."""
    return (entry.mode, entry.uid, entry.gid, entry.mtime_ns, entry.ctime_ns, entry.size, entry.node, entry.target,
            tuple(sorted(entry.xattrs.items())), entry.rdev)  # fmt: skip


def split_links(root: Entry, load_node: NodeLoader, store_node: NodeStorer) -> Entry:
    """``root`` with every link group whose names differ split into one group per variant (a variant with one
    name leaves its group), walking only the directories that hold links."""
    variants: dict[bytes, dict[tuple[object, ...], int]] = {}  # link -> variant -> names

    def collect(entry: Entry) -> None:
        if entry.is_dir and entry.links and entry.node is not None:
            for child in load_dir(entry.node, load_node):
                if child.link is not None:
                    seen = variants.setdefault(child.link, {})
                    seen[_variant(child)] = seen.get(_variant(child), 0) + 1
                collect(child)

    collect(root)
    new_ids: dict[tuple[bytes, tuple[object, ...]], bytes | None] = {}
    for link, seen in variants.items():
        for i, (variant, names) in enumerate(seen.items()):
            if names < 2:
                new_ids[(link, variant)] = None
            elif i > 0:
                new_ids[(link, variant)] = os.urandom(len(link))
    if not new_ids:
        return root

    def rewrite(entry: Entry) -> Entry:
        if not (entry.is_dir and entry.links and entry.node is not None):
            return entry
        children = []
        for child in load_dir(entry.node, load_node):
            if child.link is not None and (child.link, _variant(child)) in new_ids:
                child = dataclasses.replace(child, link=new_ids[(child.link, _variant(child))])
            child = rewrite(child)
            children.append(child)
        node = store_dir(children, store_node, entry.name)
        return dataclasses.replace(entry, node=node, links=holds_links(children))

    return rewrite(root)


def _one_dir(mine: Entry | None, other: Entry | None) -> bool:
    """One side deleted the name and the other has a directory there."""
    survivor = mine if other is None else other if mine is None else None
    return survivor is not None and survivor.is_dir


class _Merger:
    def __init__(self, load_node: NodeLoader, store_node: NodeStorer, beside: Beside):
        self._load = load_node
        self._store = store_node
        self._beside = beside
        self.conflicts: list[str] = []

    def _same(self, a: Entry | None, b: Entry | None) -> bool:
        """The same content: kind and mode, bytes, link target, xattrs, device number; for a directory, the same in it.

        Times and owners are not compared: a file copied out and put back, or
        put by another user, is not a change.
        """
        if a is None or b is None:
            return a is b
        if (a.mode, a.size, a.target, a.xattrs, a.rdev) != (b.mode, b.size, b.target, b.xattrs, b.rdev):
            return False
        if a.node == b.node or not a.is_dir:
            return a.node == b.node
        mine, other = self._children(a), self._children(b)
        return mine.keys() == other.keys() and all(self._same(mine[n], other[n]) for n in mine)

    def _children(self, entry: Entry | None) -> dict[bytes, Entry]:
        if entry is None or not entry.is_dir or entry.node is None:
            return {}
        return {child.name: child for child in load_dir(entry.node, self._load)}

    def directory(self, base: Entry | None, ours: Entry, theirs: Entry, path: bytes) -> Entry:
        b, o, t = self._children(base), self._children(ours), self._children(theirs)
        out = dict(t)
        for name in sorted(set(b) | set(o) | set(t)):
            was, mine, other = b.get(name), o.get(name), t.get(name)
            if self._same(mine, was) or self._same(mine, other):
                continue  # we left it as it was, or made their very change: theirs stands
            if self._same(other, was):  # changed here only
                if mine is None:
                    del out[name]
                else:
                    out[name] = mine
            elif mine is not None and other is not None and mine.is_dir and other.is_dir:
                inside = was if was is not None and was.is_dir else None
                out[name] = self.directory(inside, mine, other, path + name + b"/")
            elif was is not None and was.is_dir and _one_dir(mine, other):
                # a directory deleted on one side and changed inside on the other: merged inside, as if emptied,
                # so that what the deleting side removed and the other left alone stays removed
                empty = dataclasses.replace(was, node=store_dir([], self._store), links=False)
                inside = self.directory(was, mine or empty, other or empty, path + name + b"/")
                if self._children(inside):
                    out[name] = dataclasses.replace(inside, name=name)
                else:
                    out.pop(name, None)
            elif mine is None:
                continue  # deleted here, changed there: the change stands
            elif other is None:
                out[name] = mine  # changed here, deleted there: the change stands
            else:
                copy = self._beside(mine, set(out) | set(o))  # a file of its own
                out[copy.name] = copy
                self.conflicts.append(os.fsdecode(path + copy.name))
        if out == t:
            return theirs
        node = store_dir(list(out.values()), self._store, theirs.name)
        return dataclasses.replace(theirs, node=node, links=holds_links(out.values()))
