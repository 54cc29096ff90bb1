"""One portal opened on this device: its versions, its tree, and committing new versions.

Write ordering (docs/design.md, "Write ordering"): every chunk, then every node,
is in the store and the store is synced before the root record is written to
the journal; a version is visible only once its journal row is committed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from .device import Device, Unlocked
from .errors import CorruptObject, NotFound
from .ingest import Ingester, IngestStats, Totals, moved_totals, tree_totals
from .merge import split_links
from .pipeline import store_sealed
from .root import PortalKeys, RootPayload, RootRecord, make_root_record, verify_chain
from .sealing import ChunkRef, unseal
from .state import PortalRow, VersionRow
from .store.base import ObjectStore, Prefetching, Priority
from .tree import Entry, holds_links, iter_file_chunks, load_dir, store_dir

__all__ = ["PortalView", "VerifyReport"]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    versions: int
    nodes: int
    chunks: int
    bytes: int


class PortalView:
    def __init__(self, device: Device, row: PortalRow, keys: PortalKeys, store: ObjectStore | None = None) -> None:
        """``store``: where the portal's objects are read and written; the device's local store unless given
        (a store that also fetches from the edges, built by the device's fabric and passed in)."""
        self.device = device
        self.row = row
        self.keys = keys
        self.store: ObjectStore = store if store is not None else device.store_local
        # Whether objects this device lacks come from a fabric (then ``prefetch`` is worth a batch): asked once
        # here, for every read of a mount would ask isinstance of a Protocol, which inspects the class (~13 us).
        self.fetches = isinstance(self.store, Prefetching)

    @classmethod
    def open(cls, device: Device, name: str, secrets: Unlocked, store: ObjectStore | None = None) -> PortalView:
        row = device.state.portal(name)
        return cls(device, row, secrets.unwrap_portal_key(row), store)

    # reading

    def load_node(self, ref: ChunkRef) -> bytes:
        return bytes(self._open(ref, "node"))

    def load_chunk(self, ref: ChunkRef, verify: bool = False) -> bytes | memoryview:
        """``verify``: check the id of a chunk the device holds too (``portalctl check``), not its tag alone."""
        return self._open(ref, "chunk", verify)

    def _open(self, ref: ChunkRef, what: str, verify: bool = False) -> bytes | memoryview:
        """Each byte verified once (docs/design.md, section 4, "What a reader checks"): what the device holds
        itself by its tag alone, what comes from an edge by its id too (the store checks it as it arrives)."""
        try:
            return unseal(ref, self.store.get(ref.cid, verify=verify), what, id_checked=True)
        except CorruptObject:
            if verify:  # the id was checked (and a damaged copy replaced): the reference is at fault
                raise
            # Damaged where it is kept (or a damaged reference): a verified get names a damaged copy, or a
            # store that fetches replaces it from the edges; an intact one that still does not open is the
            # reference's fault, and unseal says so.
            return unseal(ref, self.store.get(ref.cid), what, id_checked=True)

    def load_dir(self, ref: ChunkRef, visit_node: Callable[[ChunkRef], None] | None = None) -> list[Entry]:
        """The entries of a directory node (``tree.load_dir``), its parts brought in together where the store
        fetches."""
        return load_dir(ref, self.load_node, visit_node, self.prefetch if self.fetches else None)

    def prefetch(self, refs: Sequence[ChunkRef], priority: Priority = Priority.READAHEAD) -> None:
        """Bring the objects of ``refs`` this device lacks in together (one location lookup, fetched in parallel),
        as urgently as ``priority`` says."""
        store = self.store
        if isinstance(store, Prefetching):
            store.prefetch([ref.cid for ref in refs], priority, {ref.cid: ref.length for ref in refs})

    def objects(self, entry: Entry, into: set[bytes]) -> set[bytes]:
        """Add to ``into`` the id of every node and chunk ``entry`` reaches; subtrees already there are skipped."""
        if entry.node is None or entry.node.cid in into:
            return into
        if entry.is_dir:
            into.add(entry.node.cid)
            for child in self.load_dir(entry.node, lambda part: into.add(part.cid)):
                self.objects(child, into)
        else:
            reached = self.device.file_objects.get(entry.node.cid)
            if reached is None:
                found: list[bytes] = []
                for chunk in iter_file_chunks(entry.node, self.load_node, visit_node=lambda r: found.append(r.cid)):
                    found.append(chunk.cid)
                reached = self.device.file_objects.add(entry.node.cid, found)
            into.update(reached)
        return into

    def changed_objects(self, entry: Entry, base: Entry | None, into: set[bytes]) -> set[bytes]:
        """Add to ``into`` what ``entry`` reaches that ``base``, the same path in an older version, does not
        share there: a subtree whose node is base's is skipped whole, a changed file adds only its chunks and
        nodes that base's file lacks. What is left out is reachable from ``base``. O(change), not O(portal)."""
        if entry.node is None or (base is not None and base.node == entry.node):
            return into
        if base is None or base.node is None or base.is_dir != entry.is_dir:
            return self.objects(entry, into)
        if entry.is_dir:
            into.add(entry.node.cid)
            before = {child.name: child for child in self.load_dir(base.node)}
            for child in self.load_dir(entry.node, lambda part: into.add(part.cid)):
                self.changed_objects(child, before.get(child.name), into)
            return into
        old: set[bytes] = set()
        self.objects(base, old)
        new: set[bytes] = set()
        self.objects(entry, new)
        into.update(new - old)
        return into

    def version(self, number: int | None = None) -> VersionRow:
        """The version ``number``, or the newest one."""
        if number is None:
            head = self.device.state.head(self.row.id)
            if head is None:
                raise NotFound(f"portal {self.row.name!r} has no versions yet (add files with `portalctl put`)")
            return head
        try:
            return self.device.state.version(self.row.id, number)
        except NotFound:
            raise NotFound(f"portal {self.row.name!r} has no version {number}") from None

    def root(self, version: VersionRow) -> RootPayload:
        return version.record.open(self.keys)

    def lookup(self, root: Entry, path: str) -> Entry:
        """The entry at ``path`` (slash-separated, relative to the portal root)."""
        entry = root
        for part in [p for p in path.split("/") if p and p != "."]:
            if not entry.is_dir or entry.node is None:
                raise NotFound(f"{path!r} is not in portal {self.row.name!r}")
            name = os.fsencode(part)
            match = [e for e in self.load_dir(entry.node) if e.name == name]
            if not match:
                raise NotFound(f"{path!r} is not in portal {self.row.name!r}")
            entry = match[0]
        return entry

    def file_chunks(self, entry: Entry) -> Iterator[ChunkRef]:
        if entry.node is None:
            return iter(())
        return iter_file_chunks(entry.node, self.load_node)

    # writing

    def put(
        self,
        secrets: Unlocked,
        sources: list[str],
        now_ns: int,
        progress: Callable[[int], None] | None = None,
        warn: Callable[[str], None] | None = None,
        stream: tuple[bytes, BinaryIO] | None = None,
    ) -> tuple[VersionRow, IngestStats]:
        """Ingest ``sources`` into a new version. Hold ``device.exclusive()`` around it.

        A source ending in "/" contributes its contents rather than itself.
        """
        head = self.device.state.head(self.row.id)
        before = None if head is None else self.root(head)
        previous = None if before is None else before.entry
        ingester = Ingester(
            store=self.store,
            convergence_secret=secrets.identity.convergence_secret,
            tree_secret=self.keys.tree_secret,
            state=self.device.state,
            portal=self.row.id,
            now_ns=now_ns,
            progress=progress,
            warn=warn,
            file_objects=self.device.file_objects,
        )
        try:
            entry = ingester.ingest(
                sources, previous, self.load_node, stream, None if before is None else (before.size, before.files)
            )
            if head is not None and previous is not None and entry.node == previous.node:
                ingester.remember_files()  # the same tree: the newest version stands
                ingester.stats.unchanged = True
                return head, ingester.stats
            version = self._record(secrets, head, entry, now_ns, ingester.remember_files, ingester.root_totals)
        finally:
            ingester.forget_files()  # what it did not record (nothing, once it did)
        return version, ingester.stats

    def graft(self, secrets: Unlocked, path: str, entry: Entry, now_ns: int) -> VersionRow:
        """A new version: the newest one with ``entry`` placed at ``path``. Hold the writer locks."""
        return self.edit(secrets, {path: entry}, now_ns)

    def edit(self, secrets: Unlocked, changes: dict[str, Entry | None], now_ns: int) -> VersionRow:
        """A new version: the newest one with each path of ``changes`` given its entry (None: removed), in
        order. Hold the writer locks."""
        head = self.version()

        def store_node(plaintext: bytes) -> ChunkRef:
            return store_sealed(self.store, self.keys.tree_secret, plaintext)[0]

        def place(directory: Entry, names: list[bytes], entry: Entry | None, path: str) -> Entry:
            if not directory.is_dir or directory.node is None:
                raise NotFound(f"{path!r}: a parent of it is not a directory in the newest version")
            children = {e.name: e for e in self.load_dir(directory.node)}
            if len(names) == 1:
                if entry is None:
                    if children.pop(names[0], None) is None:
                        raise NotFound(f"{path!r} is not in the newest version")
                else:
                    children[names[0]] = dataclasses.replace(entry, name=names[0])
            elif names[0] in children:
                children[names[0]] = place(children[names[0]], names[1:], entry, path)
            else:
                raise NotFound(f"{path!r}: its parent directory is not in the newest version")
            node = store_dir(list(children.values()), store_node, directory.name)
            return dataclasses.replace(directory, node=node, mtime_ns=now_ns, links=holds_links(children.values()))

        root = self.root(head).entry
        for path, entry in changes.items():
            parts = [os.fsencode(p) for p in path.split("/") if p and p != "."]
            if not parts:
                raise NotFound("give the path of a file or directory inside the portal, not its root")
            root = place(root, parts, entry, path)
        # an old name of a hard-linked file may differ from its group now: it becomes a file of its own
        root = split_links(root, self.load_node, store_node)
        return self._record(secrets, head, root, now_ns)

    def _record(
        self,
        secrets: Unlocked,
        head: VersionRow | None,
        root: Entry,
        now_ns: int,
        also: Callable[[], None] | None = None,
        totals: Totals | None = None,
    ) -> VersionRow:
        """Sign and record a version for ``root`` after the store is synced (chunks, nodes, root). Its
        ``totals`` (bytes and files), unless given, are the version before's moved by what differs from it."""
        if totals is None:
            before = None if head is None else self.root(head)
            totals = (
                tree_totals(root, self.load_node)
                if before is None
                else moved_totals(root, before.entry, (before.size, before.files), self.load_node)
            )
        size, files = totals
        payload = RootPayload(entry=root, size=size, files=files)
        record = self.sign(secrets, None if head is None else head.record, payload, now_ns)
        self.record_version(record, payload, also)
        return self.version(record.version)

    def sign(self, secrets: Unlocked, parent: RootRecord | None, payload: RootPayload, now_ns: int) -> RootRecord:
        """A root record for ``payload`` on top of ``parent``, sealed and signed by this device (section 6)."""
        return make_root_record(
            keys=self.keys,
            device=secrets.device,
            portal=self.row.id,
            parent=parent,
            payload=payload,
            time_ns=now_ns,
            nonce=os.urandom(12),
        )

    def record_version(self, record: RootRecord, payload: RootPayload, along: Callable[[], None] | None = None) -> None:
        """Make every object ``record`` reaches durable, then record it, with ``along`` in the same transaction
        (run first): the one way a version is recorded (section 7, "Write ordering")."""
        self.store.sync()
        with self.device.state.transaction():
            if along is not None:
                along()
            self.device.state.add_version(record, payload.size, payload.files)

    # verification

    def verify(self) -> VerifyReport:
        """Check every version's signature and chain, and every node and chunk it reaches."""
        versions = self.device.state.versions(self.row.id)
        writers = set(self.device.state.device_names())
        verify_chain([v.record for v in versions], writers)
        seen: set[bytes] = set()
        nodes = chunks = size = 0

        def walk(entry: Entry) -> None:
            nonlocal nodes, chunks, size
            if entry.node is None or entry.node.cid in seen:
                return
            seen.add(entry.node.cid)
            if entry.is_dir:
                nodes += 1

                def part(ref: ChunkRef) -> None:
                    nonlocal nodes
                    nodes += 1

                for child in self.load_dir(entry.node, part):
                    walk(child)
            elif entry.is_file:
                nodes += 1
                for ref in self.file_chunks(entry):
                    if ref.cid not in seen:
                        seen.add(ref.cid)
                        self.load_chunk(ref, verify=True)
                        chunks += 1
                        size += ref.length

        for version in versions:
            walk(self.root(version).entry)
        return VerifyReport(len(versions), nodes, chunks, size)
