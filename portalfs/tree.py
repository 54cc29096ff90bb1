"""The tree: a Merkle DAG of directory, file and index nodes (docs/design.md, "Tree").

Nodes are deterministic CBOR maps, sealed like chunks (under the portal's tree
secret), so identical subtrees seal to identical objects and are shared between
versions. Metadata lives in the parent's entry, content in the child node: two
files with the same bytes share one file node whatever their names or modes.

    dir node   {"v": 1, "t": "dir",   "entries": [Entry...]}         sorted by name, unique
             | {"v": 2, "t": "dir",   "entries": [Entry...]}         when it holds a special file or a link
             | {"v": 3, "t": "dir",   "parts": [Ref...]}             past SPLIT_AT bytes: its entries in parts
    part node  {"v": 3, "t": "part",  "entries": [Entry...]}         the parts' entries, in order, are the dir's
    file node  {"v": 1, "t": "file",  "size": n, "chunks": [Ref...]}  at most FANOUT refs
             | {"v": 1, "t": "file",  "size": n, "index": [[Ref, span]...]}
    index node {"v": 1, "t": "index", "chunks": [Ref...]} | {"v": 1, "t": "index", "index": [[Ref, span]...]}
    Entry      {"name": bytes, "mode": st_mode, "uid", "gid", "mtime": ns, "ctime": ns,
                ["size": n, "node": Ref]       regular file (no "node" when n == 0)
                ["node": Ref]                  directory
                ["target": bytes]              symlink
                                               FIFO, socket: nothing more (v2 directories only)
                ["rdev": int]                  character or block device (v2 directories only)
                ["link": bytes(8)]             a name of a hard-linked file: its link group (v2 only)
                ["links": true]                a directory whose subtree holds hard links (v2 only)
                ["xattrs": {bytes: bytes}]}    only when not empty
    Ref        [cid, key, pid, length]         see sealing.ChunkRef

Pure: storing and loading nodes are callables passed in.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
import stat
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from . import encoding
from .errors import CorruptObject, DirectoryTooLarge
from .sealing import MAX_PLAINTEXT, ChunkRef

__all__ = [
    "NODE_VERSION",
    "FANOUT",
    "NAME_MAX",
    "Entry",
    "FileKind",
    "encode_dir",
    "decode_dir",
    "store_dir",
    "store_dir_parts",
    "Part",
    "open_dir",
    "load_dir",
    "load_parts",
    "build_file",
    "iter_file_chunks",
    "FileObjects",
    "validate_name",
    "new_root_entry",
    "NodeStorer",
    "NodeLoader",
    "NO_XATTRS",
]

NODE_VERSION = 1
SPECIAL_NODE_VERSION = 2  # a directory node with special files or hard links in it (version-1 readers refuse it)
LINK_ID_SIZE = 8
SPLIT_NODE_VERSION = 3  # a directory stored in parts (older readers refuse it)
DIR_VERSIONS = (NODE_VERSION, SPECIAL_NODE_VERSION)
SPLIT_AT = 4 << 20  # a directory whose one node would take more is stored in parts
PART_TARGET = 1 << 20  # the mean bytes of entries in a part
PART_LIMIT = 4 << 20  # a part ends before an entry that would take it past this (a lone entry may pass it)
SPECIAL_TYPES = (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)
FANOUT = 1024  # refs per file or index node
NAME_MAX = 255

# The extended attributes of every entry and inode without any: one shared, read-only empty mapping (an empty dict
# is 64 bytes, for each of hundreds of thousands of names). A change replaces an inode's mapping whole.
NO_XATTRS: Mapping[bytes, bytes] = MappingProxyType({})

NodeStorer = Callable[[bytes], ChunkRef]  # seal and store a node's plaintext, return its ref
NodeLoader = Callable[[ChunkRef], bytes]  # fetch, verify and open a node


def validate_name(name: bytes) -> bytes:
    if not name or name in (b".", b"..") or b"/" in name or b"\x00" in name:
        raise ValueError(f"invalid entry name {name!r}")
    if len(name) > NAME_MAX:
        raise ValueError(f"entry name longer than {NAME_MAX} bytes")
    return name


class FileKind:
    """``is_dir``, ``is_file``, ``is_symlink`` for anything with an ``st_mode``-style ``mode``."""

    __slots__ = ()
    mode: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_special(self) -> bool:
        """A FIFO, a socket, or a character or block device: a name and a mode (and a device number), no content."""
        return stat.S_IFMT(self.mode) in SPECIAL_TYPES

    @property
    def is_device(self) -> bool:
        return stat.S_ISCHR(self.mode) or stat.S_ISBLK(self.mode)


@dataclass(frozen=True, slots=True)
class Entry(FileKind):
    """One name in a directory, with its metadata and what it points to."""

    name: bytes
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    ctime_ns: int
    size: int = 0
    node: ChunkRef | None = None
    target: bytes | None = None
    xattrs: Mapping[bytes, bytes] = field(default_factory=lambda: NO_XATTRS)
    rdev: int = 0  # a device's number (st_rdev)
    link: bytes | None = None  # a hard-linked name: the group of names that are one file
    links: bool = False  # a directory whose subtree holds hard-linked names
    # Its encoding, once made (``encoded``): an entry a checkpoint keeps from the last is not encoded again.
    _encoded: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def needs_v2(self) -> bool:
        """Whether a directory node holding this entry must be version 2."""
        return self.is_special or self.link is not None or self.links

    def to_cbor(self) -> dict[str, Any]:
        """The entry's map, its keys in the deterministic order (``encoding.encode_ordered``)."""
        out: dict[str, Any] = {"gid": self.gid, "uid": self.uid}
        if self.link is not None:
            out["link"] = self.link
        out["mode"] = self.mode
        out["name"] = self.name
        if self.node is not None:
            out["node"] = self.node.to_cbor()
        if self.is_device:
            out["rdev"] = self.rdev
        if self.is_file:
            out["size"] = self.size
        out["ctime"] = self.ctime_ns
        if self.links:
            out["links"] = True
        out["mtime"] = self.mtime_ns
        if self.target is not None:
            out["target"] = self.target
        if self.xattrs:
            out["xattrs"] = {k: self.xattrs[k] for k in sorted(self.xattrs, key=encoding.key_order)}
        return out

    def encoded(self) -> bytes:
        """``encoding.encode(self.to_cbor())``, made on the first call and kept (until ``store_dir_parts``
        drops it: a part kept whole needs none)."""
        encoded = self._encoded
        if encoded is None:
            encoded = encoding.encode_ordered(self.to_cbor())
            object.__setattr__(self, "_encoded", encoded)
        return encoded

    def forget_encoding(self) -> None:
        object.__setattr__(self, "_encoded", None)

    @classmethod
    def from_cbor(cls, value: object, allow_empty_name: bool = False, allow_new_dir: bool = False) -> Entry:
        """Parse and validate an entry. ``allow_new_dir``: a directory may lack its node (journal records)."""
        if not isinstance(value, dict):
            raise ValueError("an entry is a map")
        known = {"name", "mode", "uid", "gid", "mtime", "ctime", "size", "node", "target", "xattrs", "rdev", "link",
                 "links"}  # fmt: skip
        if set(value) - known:
            raise ValueError(f"unknown entry fields {sorted(set(value) - known)}")
        name = value["name"]
        if not isinstance(name, bytes):
            raise ValueError("entry name must be bytes")
        if not (allow_empty_name and name == b""):
            validate_name(name)
        ints = [value[k] for k in ("mode", "uid", "gid", "mtime", "ctime")]
        if not all(isinstance(i, int) and i >= 0 for i in ints):
            raise ValueError("entry metadata must be non-negative integers")
        mode = value["mode"]
        node = ChunkRef.from_cbor(value["node"]) if "node" in value else None
        target = value.get("target")
        xattrs = value.get("xattrs", {})
        if not isinstance(xattrs, dict) or not all(
            isinstance(k, bytes) and isinstance(v, bytes) for k, v in xattrs.items()
        ):
            raise ValueError("xattrs must map bytes to bytes")
        xattrs = xattrs or NO_XATTRS
        size = value.get("size", 0)
        if stat.S_ISREG(mode):
            if not isinstance(size, int) or size < 0 or (size > 0) != (node is not None) or target is not None:
                raise ValueError("a file entry has a size and, when not empty, a node")
        elif stat.S_ISDIR(mode):
            if (node is None and not allow_new_dir) or target is not None or "size" in value:
                raise ValueError("a directory entry has a node and nothing else")
        elif stat.S_ISLNK(mode):
            if not isinstance(target, bytes) or node is not None or "size" in value:
                raise ValueError("a symlink entry has a target and nothing else")
        elif stat.S_IFMT(mode) in SPECIAL_TYPES:
            device = stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            rdev = value.get("rdev")
            if node is not None or target is not None or "size" in value or (rdev is not None) != device:
                raise ValueError("a FIFO or socket entry has no content; a device entry has an rdev and no content")
            if device and not (isinstance(rdev, int) and rdev >= 0):
                raise ValueError("a device number is a non-negative integer")
        else:
            raise ValueError(f"unsupported file type in mode {mode:#o}")
        if "rdev" in value and stat.S_IFMT(mode) not in SPECIAL_TYPES:
            raise ValueError("only a device entry has an rdev")
        rdev = value.get("rdev", 0)
        link = value.get("link")
        if link is not None and (not isinstance(link, bytes) or len(link) != LINK_ID_SIZE or stat.S_ISDIR(mode)):
            raise ValueError(f"a link group is {LINK_ID_SIZE} bytes, on an entry that is not a directory")
        links = value.get("links", False)
        if "links" in value and (links is not True or not stat.S_ISDIR(mode)):
            raise ValueError("only a directory entry says that hard links are below it, as true")
        return cls(
            name, mode, value["uid"], value["gid"], value["mtime"], value["ctime"], size, node, target, xattrs, rdev,
            link, links,
        )  # fmt: skip


def new_root_entry(now_ns: int, uid: int, gid: int) -> Entry:
    """The root of a portal with nothing in it yet (no node until something is committed)."""
    return Entry(b"", stat.S_IFDIR | 0o755, uid, gid, now_ns, now_ns)


def _decode_node(
    plaintext: bytes, expected: tuple[str, ...], versions: tuple[int, ...] = (NODE_VERSION,)
) -> dict[str, Any]:
    try:
        node = encoding.decode(plaintext)
    except encoding.DecodeError as exc:
        raise ValueError(str(exc)) from exc
    if not isinstance(node, dict) or node.get("v") not in versions or node.get("t") not in expected:
        raise ValueError(f"not a version-{'/'.join(map(str, versions))} {'/'.join(expected)} node")
    return node


def holds_links(children: Iterable[Entry]) -> bool:
    """Whether a directory with ``children`` says ``links``: a hard-linked name in it, or below it."""
    return any(child.link is not None or child.links for child in children)


def _ordered(entries: list[Entry]) -> list[Entry]:
    ordered = sorted(entries, key=lambda e: validate_name(e.name))
    for a, b in itertools.pairwise(ordered):
        if a.name == b.name:
            raise ValueError(f"duplicate entry name {a.name!r}")
    return ordered


def _node(t: str, version: int, entries: Iterable[Entry]) -> bytes:
    # "entries" sorts after "t" and "v" (a longer key): the map's encoding ends with the array, here empty
    head = encoding.encode_ordered({"t": t, "v": version, "entries": []})
    return head[:-1] + encoding.encode_array([e.encoded() for e in entries])


def _too_large(name: bytes, what: str, size: int) -> DirectoryTooLarge:
    shown = name.decode(errors="replace") or "/"
    return DirectoryTooLarge(
        f"the directory {shown!r} cannot be stored: {what} {size} bytes, more than the {MAX_PLAINTEXT} of one node"
    )


def encode_dir(entries: list[Entry], name: bytes = b"") -> bytes:
    """A directory as one node: version 1, or 2 when it holds a special file (so that trees without any stay
    byte for byte what they were, and share their objects with older versions). Raises DirectoryTooLarge
    past MAX_PLAINTEXT bytes, naming the directory by ``name`` (b"": the top). ``store_dir`` splits a
    directory that one node should not hold."""
    return _single(_ordered(entries), name)


def _single(ordered: list[Entry], name: bytes) -> bytes:
    version = SPECIAL_NODE_VERSION if any(e.needs_v2 for e in ordered) else NODE_VERSION
    node = _node("dir", version, ordered)
    if len(node) > MAX_PLAINTEXT:
        raise _too_large(name, f"its {len(ordered)} entries take", len(node))
    return node


def _cut_after(entry: Entry, size: int) -> bool:
    """Whether a part ends after ``entry`` (``size`` bytes encoded): with a chance of size / PART_TARGET, drawn
    from the name alone, so that a part's end stays where it was when entries before it come and go."""
    return zlib.crc32(entry.name) * PART_TARGET < size << 32


@dataclass(frozen=True, slots=True)
class Part:
    """A part node of a directory stored in parts (``store_dir_parts``): its entries, its ref, the bytes of their
    encodings, and why it ended. Where its very entries (the same objects: entries are immutable) start a part
    again, it is that part again if it ended where ``_cut_after`` says, or before the same entry at PART_LIMIT,
    or with the directory, still ending it."""

    entries: tuple[Entry, ...]
    ref: ChunkRef | None  # None until stored
    size: int
    closed: bool  # ended after its last entry, where _cut_after says
    limit: Entry | None = None  # ... or ended before this entry, which would have taken it past PART_LIMIT

    def again(self, ordered: list[Entry], start: int) -> bool:
        """Whether this part is the one that ``ordered[start:]``, at the start of a part, begins with."""
        end = start + len(self.entries)
        if self.ref is None or end > len(ordered):
            return False
        if not (self.closed or (ordered[end] is self.limit if end < len(ordered) else self.limit is None)):
            return False
        return all(map(operator.is_, self.entries, ordered[start:end]))


def _parts(ordered: list[Entry], kept: Iterable[Part] = ()) -> Iterator[Part]:
    """``ordered`` cut into parts, one at a time: a part of ``kept`` where one begins again (its entries not
    encoded), new ones (``ref`` None) elsewhere."""
    starts = {id(part.entries[0]): part for part in kept if part.entries}
    current: list[Entry] = []
    taken = start = 0
    while start < len(ordered):
        entry = ordered[start]
        again = starts.get(id(entry)) if not current else None
        if again is not None and again.again(ordered, start):
            yield again
            start += len(again.entries)
            continue
        size = len(entry.encoded())
        if current and taken + size > PART_LIMIT:
            yield Part(tuple(current), None, taken, False, entry)
            current, taken = [], 0
        current.append(entry)
        taken += size
        start += 1
        if _cut_after(entry, size):
            yield Part(tuple(current), None, taken, True)
            current, taken = [], 0
    if current:
        yield Part(tuple(current), None, taken, False)


def store_dir(entries: list[Entry], store_node: NodeStorer, name: bytes = b"") -> ChunkRef:
    """Store a directory's node and return its ref: one node (``encode_dir``) up to SPLIT_AT bytes; past that,
    a version-3 node listing part nodes, each ending where ``_cut_after`` says (or before PART_LIMIT), so
    that a change stores anew the part it falls in and the list, not the whole directory."""
    return store_dir_parts(entries, store_node, name)[0]


def store_dir_parts(
    entries: list[Entry], store_node: NodeStorer, name: bytes = b"", kept: Iterable[Part] = ()
) -> tuple[ChunkRef, list[Part]]:
    """``store_dir``, and the parts it stored the directory in (none: one node). ``kept``: the parts of an
    earlier store of the directory; one that its entries make again is not encoded or stored again.

    The entries of a directory in parts do not keep their encodings (``Entry.encoded``): what a later store
    needs of a part that did not change is the part itself. A directory of hundreds of thousands of names
    would otherwise keep about 200 bytes per name that nothing reads."""
    ordered = _ordered(entries)
    parts: list[Part] = []
    stored = taken = 0  # the parts stored so far, the bytes of all the entries cut so far
    for part in _parts(ordered, kept):
        parts.append(part)
        taken += part.size
        # Once past SPLIT_AT the directory is in parts: each is stored as soon as it is cut, and its entries'
        # encodings let go, so that a large directory is never held encoded whole.
        while taken > SPLIT_AT and stored < len(parts):
            parts[stored] = _store_part(parts[stored], store_node, name)
            stored += 1
    if taken <= SPLIT_AT:
        return store_node(_single(ordered, name)), []
    refs = [part.ref for part in parts if part.ref is not None]
    head = encoding.encode_ordered({"t": "dir", "v": SPLIT_NODE_VERSION, "parts": [r.to_cbor() for r in refs]})
    if len(head) > MAX_PLAINTEXT:
        raise _too_large(name, f"the list of its {len(refs)} parts takes", len(head))
    return store_node(head), parts


def _store_part(part: Part, store_node: NodeStorer, name: bytes) -> Part:
    """``part`` stored (unless a kept part, stored already), its entries' encodings let go."""
    if part.ref is not None:
        return part
    node = _node("part", SPLIT_NODE_VERSION, part.entries)
    if len(node) > MAX_PLAINTEXT:
        raise _too_large(name, f"its entry {part.entries[0].name.decode(errors='replace')!r} takes", len(node))
    for entry in part.entries:
        entry.forget_encoding()
    return dataclasses.replace(part, ref=store_node(node))


def _entries(node: dict[str, Any]) -> list[Entry]:
    if set(node) != {"v", "t", "entries"} or not isinstance(node["entries"], list):
        raise ValueError("malformed directory node")
    entries = [Entry.from_cbor(e) for e in node["entries"]]
    if node["v"] == NODE_VERSION and any(e.needs_v2 for e in entries):
        raise ValueError("a version-1 directory node holds no special files or links")
    return entries


def _check_names(entries: list[Entry]) -> list[Entry]:
    names = [e.name for e in entries]
    if names != sorted(set(names)):
        raise ValueError("directory entries are not sorted and unique")
    return entries


def open_dir(plaintext: bytes) -> tuple[list[Entry], list[ChunkRef]]:
    """A directory node, decoded once: (its entries, no parts) for a node of one object (version 1 or 2), (no
    entries, its parts' refs) for a node of parts (version 3). CorruptObject when it is not a valid one."""
    try:
        node = _decode_node(plaintext, ("dir",), (*DIR_VERSIONS, SPLIT_NODE_VERSION))
        if node["v"] != SPLIT_NODE_VERSION:
            return _check_names(_entries(node)), []
        if set(node) != {"v", "t", "parts"} or not isinstance(node["parts"], list) or not node["parts"]:
            raise ValueError("malformed directory node")
        return [], [ChunkRef.from_cbor(r) for r in node["parts"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptObject(f"directory node: {exc}") from exc


def decode_dir(plaintext: bytes) -> list[Entry]:
    """Parse a directory node of one object (version 1 or 2); raise CorruptObject when it is not a valid one."""
    entries, parts = open_dir(plaintext)
    if parts:
        raise CorruptObject("directory node: a node of parts, not of entries")
    return entries


def load_parts(
    ref: ChunkRef, parts: list[ChunkRef], load_node: NodeLoader, visit_node: Callable[[ChunkRef], None] | None = None
) -> list[Entry]:
    """The entries of the directory whose node ``ref`` lists ``parts`` (``open_dir``), loading each part;
    ``visit_node`` is called with the ref of each. CorruptObject when a part is not valid."""
    entries: list[Entry] = []
    for part in parts:
        if visit_node is not None:
            visit_node(part)
        try:
            got = _entries(_decode_node(load_node(part), ("part",), (SPLIT_NODE_VERSION,)))
            if not got:
                raise ValueError("an empty part")
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptObject(f"directory part node {part.cid.hex()}: {exc}") from exc
        entries += got
    try:
        return _check_names(entries)
    except ValueError as exc:
        raise CorruptObject(f"directory node {ref.cid.hex()}: {exc}") from exc


def load_dir(
    ref: ChunkRef,
    load_node: NodeLoader,
    visit_node: Callable[[ChunkRef], None] | None = None,
    prefetch: Callable[[list[ChunkRef]], None] | None = None,
) -> list[Entry]:
    """The entries of the directory whose node is ``ref``, loading its parts when it has them; raise
    CorruptObject when a node is not valid. ``visit_node`` is called with the ref of each part loaded;
    ``prefetch`` with the refs of all of them before the first is loaded (a store that fetches brings them
    in together)."""
    entries, parts = open_dir(load_node(ref))
    if not parts:
        return entries
    if prefetch is not None:
        prefetch(parts)
    return load_parts(ref, parts, load_node, visit_node)


def _span_list(refs: list[tuple[ChunkRef, int]]) -> list[Any]:
    return [[ref.to_cbor(), span] for ref, span in refs]


def build_file(chunks: list[ChunkRef], store_node: NodeStorer, fanout: int = FANOUT) -> tuple[ChunkRef, int]:
    """Store the file node (and index nodes) for ``chunks``; return its ref and the file size.

    ``fanout`` is FANOUT in the format; tests lower it to exercise index nodes.
    """
    size = sum(c.length for c in chunks)
    if len(chunks) <= fanout:
        body = {"chunks": [c.to_cbor() for c in chunks]}
    else:
        level: list[tuple[ChunkRef, int]] = []
        for i in range(0, len(chunks), fanout):
            group = chunks[i : i + fanout]
            node = encoding.encode({"v": NODE_VERSION, "t": "index", "chunks": [c.to_cbor() for c in group]})
            level.append((store_node(node), sum(c.length for c in group)))
        while len(level) > fanout:
            upper = []
            for i in range(0, len(level), fanout):
                group_spans = level[i : i + fanout]
                node = encoding.encode({"v": NODE_VERSION, "t": "index", "index": _span_list(group_spans)})
                upper.append((store_node(node), sum(span for _, span in group_spans)))
            level = upper
        body = {"index": _span_list(level)}
    node = encoding.encode({"v": NODE_VERSION, "t": "file", "size": size, **body})
    return store_node(node), size


class FileObjects:
    """What files reach, by their node's id: the node, its index nodes and its chunks. A node's bytes never
    change (its id is their hash), so what it reaches is known for good once its node was built or read:
    a publish that follows a put in the same process (portald) lists a new file's objects from here, without
    loading and decoding its node again. Holds the most recently added files, up to ``limit`` ids in all
    (131,072: about 10 MB; a file that reaches more is not held)."""

    def __init__(self, limit: int = 1 << 17) -> None:
        self._limit = limit
        self._reached: dict[bytes, tuple[bytes, ...]] = {}
        self._held = 0  # ids in ``_reached``
        self._lock = threading.Lock()  # the ingest's walk adds while a sync's thread reads

    def get(self, node: bytes) -> tuple[bytes, ...] | None:
        with self._lock:
            return self._reached.get(node)

    def add(self, node: bytes, reached: Iterable[bytes]) -> tuple[bytes, ...]:
        value = tuple(reached)
        if len(value) > self._limit:
            return value
        with self._lock:
            self._held += len(value) - len(self._reached.pop(node, ()))
            self._reached[node] = value
            while self._held > self._limit:
                self._held -= len(self._reached.pop(next(iter(self._reached))))  # the oldest added
        return value

    def build(self, chunks: list[ChunkRef], store_node: NodeStorer, fanout: int = FANOUT) -> tuple[ChunkRef, int]:
        """``build_file``, remembering what the new file node reaches."""
        nodes: list[bytes] = []

        def stored(plaintext: bytes) -> ChunkRef:
            ref = store_node(plaintext)
            nodes.append(ref.cid)
            return ref

        ref, size = build_file(chunks, stored, fanout)
        self.add(ref.cid, [*nodes, *(c.cid for c in chunks)])
        return ref, size


def iter_file_chunks(
    file_ref: ChunkRef,
    load_node: NodeLoader,
    visit_node: Callable[[ChunkRef], None] | None = None,
    depth_limit: int = 8,
) -> Iterator[ChunkRef]:
    """The chunk refs of a file, in order, walking index nodes; checks that sizes add up.

    ``visit_node`` is called with the ref of the file node and of every index node loaded.
    """

    def parse(ref: ChunkRef, kinds: tuple[str, ...]) -> dict[str, Any]:
        if visit_node is not None:
            visit_node(ref)
        try:
            return _decode_node(load_node(ref), kinds)
        except ValueError as exc:
            raise CorruptObject(f"file node {ref.cid.hex()}: {exc}") from exc

    def walk(ref: ChunkRef, node: dict[str, Any], expected_size: int, depth: int) -> Iterator[ChunkRef]:
        if depth > depth_limit:
            raise CorruptObject(f"file node {file_ref.cid.hex()}: index nesting too deep")
        try:
            if "chunks" in node:
                items = [ChunkRef.from_cbor(c) for c in node["chunks"]]
                spans = None
                total = sum(c.length for c in items)
            else:
                spans = [(ChunkRef.from_cbor(r), s) for r, s in node["index"]]
                total = sum(s for _, s in spans)
            if total != expected_size:
                raise ValueError("chunk lengths do not add up to the node's size")
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptObject(f"file node {ref.cid.hex()}: {exc}") from exc
        if spans is None:
            yield from items
        else:
            for child, span in spans:
                yield from walk(child, parse(child, ("index",)), span, depth + 1)

    top = parse(file_ref, ("file",))
    size = top.get("size")
    if not isinstance(size, int):
        raise CorruptObject(f"file node {file_ref.cid.hex()}: no size")
    yield from walk(file_ref, top, size, 0)
