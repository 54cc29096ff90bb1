"""Trees of nodes kept in a dict, for tests of what walks trees: no store, no keys."""

from __future__ import annotations

import stat

import blake3

from portalfs.sealing import ChunkRef
from portalfs.tree import LINK_ID_SIZE, Entry, decode_dir, encode_dir, holds_links

__all__ = ["Nodes", "Tree"]

Tree = dict[str, "str | Tree"]  # a name maps to file content ("content|group": a hard link) or to a directory


class Nodes:
    def __init__(self) -> None:
        self.nodes: dict[bytes, bytes] = {}

    def store(self, plaintext: bytes) -> ChunkRef:
        cid = blake3.blake3(plaintext).digest()
        self.nodes[cid] = plaintext
        return ChunkRef(cid, bytes(32), cid, len(plaintext))

    def load(self, ref: ChunkRef) -> bytes:
        return self.nodes[ref.cid]

    def build(self, tree: Tree, name: bytes = b"", when: int = 1) -> Entry:
        children = []
        for child, value in tree.items():
            if isinstance(value, str):
                value, _, group = value.partition("|")
                content = self.store(value.encode())  # a file's node stands for its content
                link = group.encode().ljust(LINK_ID_SIZE, b"_") if group else None
                children.append(
                    Entry(child.encode(), stat.S_IFREG | 0o644, 0, 0, when, when, len(value), content, link=link)
                )
            else:
                children.append(self.build(value, child.encode(), when))
        node = self.store(encode_dir(children))
        return Entry(name, stat.S_IFDIR | 0o755, 0, 0, when, when, 0, node, links=holds_links(children))

    def groups(self, entry: Entry, path: str = "") -> dict[bytes, set[str]]:
        """The link groups below ``entry``: each group's paths."""
        assert entry.node is not None
        found: dict[bytes, set[str]] = {}
        for child in decode_dir(self.load(entry.node)):
            name = path + child.name.decode()
            if child.is_dir:
                for link, paths in self.groups(child, name + "/").items():
                    found.setdefault(link, set()).update(paths)
            elif child.link is not None:
                found.setdefault(child.link, set()).add(name)
        return found

    def read(self, entry: Entry) -> Tree:
        assert entry.node is not None
        out: Tree = {}
        for child in decode_dir(self.load(entry.node)):
            if child.is_dir:
                out[child.name.decode()] = self.read(child)
            else:
                assert child.node is not None
                out[child.name.decode()] = self.load(child.node).decode()
        return out
