"""Turning the dirty part of a working tree into a new portal version.

``snapshot`` runs on the event-loop thread and is quick: it copies what changed
into a plan (inodes' metadata, staged files' paths) and marks those inodes
clean, so changes made while the plan is carried out mark them dirty again.
``execute`` runs in a worker thread: it chunks and seals staged files, builds
nodes bottom-up (clean subtrees keep their existing refs), syncs the store and
returns the new root entry. The caller records the root record in the journal
(docs/design.md, "Write ordering").
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from ..chunking import CDC_MIN
from ..device import Unlocked
from ..ingest import tree_totals
from ..pipeline import ChunkPipeline, store_sealed
from ..portal import PortalView
from ..root import RootPayload, RootRecord
from ..sealing import ChunkRef, object_id, seal
from ..store import ObjectStore
from ..tree import Entry, NodeLoader, Part, build_file, holds_links, store_dir_parts
from .workspace import Inode, Workspace

__all__ = [
    "FilePlan",
    "DirPlan",
    "snapshot",
    "execute",
    "CommitResult",
    "checkpoint",
    "journal_file",
    "append_journal",
]


@dataclass(slots=True)
class FilePlan:
    inode: Inode
    entry: Entry  # metadata at snapshot time; node and size filled in by execute
    staging: str | bytes  # a staging file, or the content itself
    content_gen: int
    ref: ChunkRef | None = None
    size: int = 0
    first: FilePlan | None = None  # another name of a hard-linked file: sealed once, by its first name's plan
    committed: Entry | None = None  # ``entry`` with its node, as execute stored it


@dataclass(slots=True)
class DirPlan:
    inode: Inode
    entry: Entry
    children: list[Entry | FilePlan | DirPlan] = field(default_factory=list)
    ref: ChunkRef | None = None
    kept: list[Part] = field(default_factory=list)  # the parts the last checkpoint stored it in
    parts: list[Part] = field(default_factory=list)  # ... and those execute stores it in
    committed: Entry | None = None


@dataclass(slots=True)
class CommitResult:
    root: Entry
    size: int
    files: int
    plans: list[FilePlan | DirPlan]


def snapshot(workspace: Workspace, content_of: Callable[[Inode], bool]) -> DirPlan | None:
    """Plan a commit of everything dirty; None when nothing is.

    A file's changed content is committed only where ``content_of(inode)`` is
    true (a file still being written is committed at the points its writer
    chooses: close, fsync); otherwise its entry keeps the content last
    committed and the file stays dirty.
    """
    root = workspace.root
    if not (root.dirty or root.dirty_below):
        return None
    deferred: list[Inode] = []
    kept = workspace.last_entries, workspace.last_parts
    workspace.last_entries, workspace.last_parts = {}, {}
    plan = _plan_dir(workspace, root, content_of, deferred, {}, kept)
    for inode in deferred:
        workspace.touch(inode)
    return plan


def _plan_dir(
    workspace: Workspace,
    inode: Inode,
    content_of: Callable[[Inode], bool],
    deferred: list[Inode],
    linked: dict[int, FilePlan | None],
    kept: tuple[dict[Inode, dict[bytes, Entry]], dict[Inode, list[Part]]],
) -> DirPlan:
    """``linked``: the hard-linked files planned so far, by inode (None: committed without new content);
    ``kept``: the entries and the parts of the last checkpoint, by directory (``Workspace.last_entries`` and
    ``last_parts``)."""
    plan = DirPlan(inode, inode.entry(), kept=kept[1].get(inode, []))
    inode.committed_gen = inode.gen
    inode.dirty_below = False
    # The last checkpoint's entries of this directory, brought up to date in place: a directory of a million
    # names is not held twice, nor sorted as a list of pairs, while a checkpoint is planned.
    children = workspace.children(inode)
    entries = workspace.last_entries[inode] = kept[0].pop(inode, {})
    for name in [name for name in entries if name not in children]:  # unlinked or renamed since
        del entries[name]
    for name in sorted(children):
        child = children[name]
        child_plan: Entry | FilePlan | DirPlan
        entry = entries[name] = child.entry(name, entries.get(name))  # a hard-linked file's entry under this name
        if child.is_dir and child.children is not None and (child.dirty or child.dirty_below or child.node is None):
            child_plan = _plan_dir(workspace, child, content_of, deferred, linked, kept)
        elif child.is_file and child.others and child.ino in linked:  # a name after the first of a linked file
            first = linked[child.ino]
            child_plan = (
                entry if first is None else FilePlan(child, entry, first.staging, first.content_gen, first=first)
            )
        elif child.is_file and child.staged and child.committed_content_gen != child.content_gen:
            if content_of(child):
                content = bytes(child.memory) if child.memory is not None else str(child.staging)
                child_plan = FilePlan(child, entry, content, child.content_gen)
            else:
                child_plan = entry
                deferred.append(child)
        else:
            child_plan = entry
        if child.is_file and child.others and child.ino not in linked:
            linked[child.ino] = child_plan if isinstance(child_plan, FilePlan) else None
        child.committed_gen = child.gen
        plan.children.append(child_plan)
    # hard links below: the next mount loads this directory at once
    inode.links = holds_links(c.entry if isinstance(c, (FilePlan, DirPlan)) else c for c in plan.children)
    plan.entry = dataclasses.replace(plan.entry, links=inode.links)
    return plan


def staged_inodes(plan: DirPlan) -> list[Inode]:
    """The inodes whose staged content ``plan`` seals."""
    found: list[Inode] = []
    for child in plan.children:
        if isinstance(child, DirPlan):
            found.extend(staged_inodes(child))
        elif isinstance(child, FilePlan) and child.first is None:
            found.append(child.inode)
    return found


def abandon(workspace: Workspace, plan: DirPlan) -> None:
    """After a failed commit: mark everything in ``plan`` dirty again."""
    for child in plan.children:
        if isinstance(child, DirPlan):
            abandon(workspace, child)
        elif isinstance(child, FilePlan):
            workspace.touch(child.inode)
    workspace.touch(plan.inode)


class Sealer:
    """Seals staged files and stores their objects; one per commit.

    With ``keep=True`` objects are not stored but kept in ``sealed``, for a
    caller that stores them later and keeps them durable meanwhile (the journal).
    """

    def __init__(self, store: ObjectStore, convergence_secret: bytes, tree_secret: bytes, keep: bool = False) -> None:
        self.store = store
        self.convergence = convergence_secret
        self.tree_secret = tree_secret
        self.keep = keep
        self.sealed: list[bytes] = []

    def _store(self, secret: bytes, plaintext: bytes) -> ChunkRef:
        if not self.keep:
            return store_sealed(self.store, secret, plaintext)[0]
        ref, sealed = seal(secret, plaintext)
        self.sealed.append(bytes(sealed))
        return ref

    def store_node(self, plaintext: bytes) -> ChunkRef:
        return self._store(self.tree_secret, plaintext)

    def seal_file(self, content: str | bytes) -> tuple[ChunkRef | None, int]:
        """Seal a file's content: a staging file's path, or the bytes themselves."""
        if _content_size(content) <= CDC_MIN:  # one chunk, as content-defined chunking would cut it
            if isinstance(content, str):
                with open(content, "rb") as f:
                    content = f.read()
            refs = [self._store(self.convergence, content)] if content else []
        else:
            with ChunkPipeline(self.store, self.convergence) as pipeline, _open_content(content) as stream:
                refs = [future.result() for future in list(pipeline.seal_stream(stream))]
        if not refs:
            return None, 0
        return build_file(refs, self.store_node)


def _content_size(content: str | bytes) -> int:
    return len(content) if isinstance(content, bytes) else os.path.getsize(content)


def _open_content(content: str | bytes) -> BinaryIO:
    return io.BytesIO(content) if isinstance(content, bytes) else open(content, "rb", buffering=0)


def execute(plan: DirPlan, sealer: Sealer, load_node: NodeLoader, totals: dict[bytes, tuple[int, int]]) -> CommitResult:
    """Carry out ``plan`` (in a worker thread). ``totals`` caches (size, files) per directory node."""
    done: list[FilePlan | DirPlan] = []

    def run(p: DirPlan) -> tuple[Entry, int, int]:
        entries: list[Entry] = []
        size = files = 0
        for child in p.children:
            if isinstance(child, DirPlan):
                entry, s, f = run(child)
            elif isinstance(child, FilePlan):
                if child.first is None:
                    child.ref, child.size = sealer.seal_file(child.staging)
                else:  # another name of a linked file: its first name's plan, earlier in the walk, sealed it
                    child.ref, child.size = child.first.ref, child.first.size
                entry = child.committed = dataclasses.replace(child.entry, node=child.ref, size=child.size)
                done.append(child)
                s, f = child.size, 1
            else:
                entry = child
                s, f = tree_totals(entry, load_node, totals)
            entries.append(entry)
            size, files = size + s, files + f
        # DirectoryTooLarge: the mount logs it
        p.ref, p.parts = store_dir_parts(entries, sealer.store_node, p.entry.name, p.kept)
        totals[p.ref.cid] = (size, files)
        done.append(p)
        p.committed = dataclasses.replace(p.entry, node=p.ref)
        return p.committed, size, files

    root, size, files = run(plan)
    sealer.store.sync()
    return CommitResult(root, size, files, done)


def apply(workspace: Workspace, result: CommitResult) -> None:
    """Back on the event-loop thread: give each committed inode its new node; keep the entries as committed,
    and the parts, for the next checkpoint (``Workspace.last_entries``, ``last_parts``)."""
    for plan in result.plans:
        plan.inode.node = plan.ref
        if isinstance(plan, FilePlan):
            plan.inode.committed_content_gen = plan.content_gen
            plan.inode.committed_size = plan.size
            continue
        if plan.parts:
            workspace.last_parts[plan.inode] = plan.parts
        last = workspace.last_entries.get(plan.inode)
        if last is None:
            continue
        for child in plan.children:
            if isinstance(child, (FilePlan, DirPlan)) and child.committed is not None:
                last[child.committed.name] = child.committed


def checkpoint(
    view: PortalView,
    secrets: Unlocked,
    plan: DirPlan,
    head: RootRecord | None,
    totals: dict[bytes, tuple[int, int]],
    now_ns: int,
    journal_up_to: int | None = None,
    journaled_objects: list[bytes] | None = None,
) -> tuple[CommitResult, RootRecord]:
    """Carry out ``plan`` and record it as the next version, clearing the journal it supersedes.

    ``journal_up_to``: the last journal record the plan reflects (None: all of them);
    ``journaled_objects``: objects those records hold that the store does not yet have.
    Runs in a worker thread, under the device lock so garbage collection never races it.
    """
    device = view.device
    with device.exclusive():
        for sealed in journaled_objects or ():
            view.store.put(object_id(sealed), sealed, durable=False, verify=False)  # synced by execute
        sealer = Sealer(view.store, secrets.identity.convergence_secret, view.keys.tree_secret)
        result = execute(plan, sealer, view.load_node, totals)
        payload = RootPayload(result.root, result.size, result.files)
        record = view.sign(secrets, head, payload, now_ns)
        view.record_version(record, payload, lambda: device.state.clear_journal(view.row.id, journal_up_to))
    return result, record


def journal_file(
    view: PortalView,
    secrets: Unlocked,
    content: str | bytes,
    record: Callable[[ChunkRef | None, int, list[bytes]], bytes],
    chunks: Callable[[], list[ChunkRef]] | None,
    append: Callable[[bytes], int],
) -> tuple[ChunkRef | None, int, int, list[bytes]]:
    """Seal a staged file and append its journal record with ``append`` (a group commit: ``groupcommit.py``);
    return its ref, size, record number, and (for a small file) the sealed objects the record holds, which
    are not yet stored.

    Runs in a worker thread. A small file's sealed objects go into the record
    itself, so the transaction that appends it makes them durable; the next
    checkpoint stores them. Such a file touches no object in the store, so it is
    sealed without the device lock (a checkpoint storing objects holds it for a
    while; garbage collection, which the lock keeps out, does not run beside a
    read-write mount at all). A larger file's objects are stored and synced
    first, with the device lock held.
    ``chunks``, when given, returns the file's chunks, already sealed and stored
    while it was written (see streaming.py).
    """
    device = view.device
    inline = chunks is None and _content_size(content) <= CDC_MIN
    with contextlib.nullcontext() if inline else device.exclusive():
        sealer = Sealer(view.store, secrets.identity.convergence_secret, view.keys.tree_secret, keep=inline)
        if chunks is None:
            ref, size = sealer.seal_file(content)
        else:
            refs = chunks()
            ref, size = build_file(refs, sealer.store_node) if refs else (None, 0)
        if not inline:
            view.store.sync()
        seq = append(record(ref, size, sealer.sealed))
    return ref, size, seq, sealer.sealed


def append_journal(view: PortalView, records: list[tuple[int, bytes]]) -> list[int]:
    """Append (base version, record) pairs to the portal's journal in one durable transaction; return their
    sequence numbers."""
    state = view.device.state
    with state.transaction():
        return [state.add_journal(view.row.id, base, record) for base, record in records]
