"""The tree: a Merkle DAG of directory, file and index nodes (docs/design.md, "Tree").

Nodes are deterministic CBOR maps, sealed like chunks (under the portal's tree
secret), so identical subtrees seal to identical objects and are shared between
versions. Metadata lives in the parent's entry, content in the child node: two
files with the same bytes share one file node whatever their names or modes.

    dir node   {"v": 1, "t": "dir",   "entries": [Entry...]}         sorted by name, unique
    file node  {"v": 1, "t": "file",  "size": n, "chunks": [Ref...]}  at most FANOUT refs
             | {"v": 1, "t": "file",  "size": n, "index": [[Ref, span]...]}
    index node {"v": 1, "t": "index", "chunks": [Ref...]} | {"v": 1, "t": "index", "index": [[Ref, span]...]}
    Entry      {"name": bytes, "mode": st_mode, "uid", "gid", "mtime": ns, "ctime": ns,
                ["size": n, "node": Ref]       regular file (no "node" when n == 0)
                ["node": Ref]                  directory
                ["target": bytes]              symlink
                ["xattrs": {bytes: bytes}]}    only when not empty
    Ref        [cid, key, pid, length]         see sealing.ChunkRef

Pure: storing and loading nodes are callables passed in.
"""

from __future__ import annotations

import itertools
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import encoding
from .errors import CorruptObject
from .sealing import ChunkRef

__all__ = [
    "NODE_VERSION",
    "FANOUT",
    "NAME_MAX",
    "Entry",
    "FileKind",
    "encode_dir",
    "decode_dir",
    "build_file",
    "iter_file_chunks",
    "validate_name",
    "new_root_entry",
    "NodeStorer",
    "NodeLoader",
]

NODE_VERSION = 1
FANOUT = 1024  # refs per file or index node
NAME_MAX = 255

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
    xattrs: dict[bytes, bytes] = field(default_factory=dict)

    def to_cbor(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "mtime": self.mtime_ns,
            "ctime": self.ctime_ns,
        }
        if self.is_file:
            out["size"] = self.size
        if self.node is not None:
            out["node"] = self.node.to_cbor()
        if self.target is not None:
            out["target"] = self.target
        if self.xattrs:
            out["xattrs"] = dict(self.xattrs)
        return out

    @classmethod
    def from_cbor(cls, value: object, allow_empty_name: bool = False, allow_new_dir: bool = False) -> Entry:
        """Parse and validate an entry. ``allow_new_dir``: a directory may lack its node (journal records)."""
        if not isinstance(value, dict):
            raise ValueError("an entry is a map")
        known = {"name", "mode", "uid", "gid", "mtime", "ctime", "size", "node", "target", "xattrs"}
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
        else:
            raise ValueError(f"unsupported file type in mode {mode:#o}")
        return cls(name, mode, value["uid"], value["gid"], value["mtime"], value["ctime"], size, node, target, xattrs)


def new_root_entry(now_ns: int, uid: int, gid: int) -> Entry:
    """The root of a portal with nothing in it yet (no node until something is committed)."""
    return Entry(b"", stat.S_IFDIR | 0o755, uid, gid, now_ns, now_ns)


def _decode_node(plaintext: bytes, expected: tuple[str, ...]) -> dict[str, Any]:
    try:
        node = encoding.decode(plaintext)
    except encoding.DecodeError as exc:
        raise ValueError(str(exc)) from exc
    if not isinstance(node, dict) or node.get("v") != NODE_VERSION or node.get("t") not in expected:
        raise ValueError(f"not a version-{NODE_VERSION} {'/'.join(expected)} node")
    return node


def encode_dir(entries: list[Entry]) -> bytes:
    ordered = sorted(entries, key=lambda e: validate_name(e.name))
    for a, b in itertools.pairwise(ordered):
        if a.name == b.name:
            raise ValueError(f"duplicate entry name {a.name!r}")
    return encoding.encode({"v": NODE_VERSION, "t": "dir", "entries": [e.to_cbor() for e in ordered]})


def decode_dir(plaintext: bytes) -> list[Entry]:
    """Parse a directory node; raise CorruptObject when it is not a valid one."""
    try:
        node = _decode_node(plaintext, ("dir",))
        if set(node) != {"v", "t", "entries"} or not isinstance(node["entries"], list):
            raise ValueError("malformed directory node")
        entries = [Entry.from_cbor(e) for e in node["entries"]]
        names = [e.name for e in entries]
        if names != sorted(set(names)):
            raise ValueError("directory entries are not sorted and unique")
        return entries
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptObject(f"directory node: {exc}") from exc


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
