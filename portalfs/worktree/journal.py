"""The journal: files made durable between versions, replayed on top of the newest version.

A mount commits a closed (or fsync'd) file cheaply: its chunks and file node
go to the store, and one journal record says where it lives. Versions
(checkpoints) are made periodically and on unmount; each clears the journal
in the transaction that records it. After a crash the journal is replayed on
top of the newest version and checkpointed at once.

    record  = CBOR {"chain": [Entry, ...], "objects": [sealed, ...]}
    chain   = the file's ancestors from the top level down, then the file; an
              ancestor's "node" is its committed directory node, absent when it
              had none yet (a directory created since)
    objects = for a small file, its sealed chunk and file node, which the
              store holds but has not yet synced; replay restores them

See docs/design.md, section "Journal".
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .. import encoding
from ..device import Unlocked
from ..errors import CorruptObject, DirectoryTooLarge, MissingObject
from ..portal import PortalView
from ..sealing import ChunkRef, object_id
from ..store import ObjectStore
from ..tree import Entry, new_root_entry
from .commit import checkpoint, snapshot
from .workspace import Inode, Workspace

__all__ = [
    "journal_chain",
    "encode_record",
    "decode_record",
    "apply_record",
    "replay_journal",
    "apply_journal",
    "restore_objects",
    "writing",
]

log = logging.getLogger("portalfs")


def journal_chain(inode: Inode) -> list[Entry]:
    """The entries a record of ``inode`` holds, as they are now (content: as last committed)."""
    chain: list[Entry] = []
    probe: Inode | None = inode
    while probe is not None and probe.parent is not None:
        chain.append(probe.entry())
        probe = probe.parent
    return chain[::-1]


def encode_record(chain: list[Entry], node: ChunkRef | None, size: int, objects: list[bytes]) -> bytes:
    """The record of ``chain`` with the file's newly sealed content."""
    entries = chain[:-1] + [dataclasses.replace(chain[-1], node=node, size=size)]
    return encoding.encode({"chain": [entry.to_cbor() for entry in entries], "objects": objects})


def decode_record(data: bytes) -> tuple[list[Entry], list[bytes]]:
    """(chain, sealed objects) of a journal record."""
    record = encoding.decode(data)
    if not isinstance(record, dict) or set(record) != {"chain", "objects"} or not record["chain"]:
        raise ValueError("malformed journal record")
    chain = [Entry.from_cbor(value, allow_new_dir=True) for value in record["chain"]]
    if not all(e.is_dir for e in chain[:-1]) or not chain[-1].is_file:
        raise ValueError("a journal record is directories, then one file")
    return chain, list(record["objects"])


def restore_objects(store: ObjectStore, objects: list[bytes]) -> None:
    """Make sure the store holds each sealed object whole (a crash may have lost its unsynced bytes)."""
    for sealed in objects:
        cid = object_id(sealed)
        try:
            store.get(cid)
        except (MissingObject, CorruptObject):
            store.delete(cid)
            store.put(cid, sealed)


def apply_record(workspace: Workspace, chain: list[Entry]) -> None:
    """Put the journaled file where the record says, creating missing ancestors from it."""
    directory = workspace.root
    for ancestor in chain[:-1]:
        child = workspace.children(directory).get(ancestor.name)
        if child is None or not child.is_dir:
            child = workspace.adopt(directory, ancestor)
        directory = child
    workspace.adopt(directory, chain[-1])


@contextmanager
def writing(view: PortalView, secrets: Unlocked, what: str, keep_too_large: bool = False) -> Iterator[None]:
    """Be the portal's one writer (or raise PortalBusy), starting from its journal replayed. With
    ``keep_too_large`` (a mount, which then takes the journal in itself: ``LiveTree.take_journal``), a
    replay that meets a directory too large for its node leaves the journal as it is and goes on."""
    with view.device.portal_writer(view.row.id, what):
        try:
            replay_journal(view, secrets, time.time_ns())
        except DirectoryTooLarge as exc:
            if not keep_too_large:
                raise
            log.error("the journal of %s stays as it was: %s", view.row.name, exc)
        yield


def apply_journal(view: PortalView, workspace: Workspace, rows: list[tuple[int, bytes]]) -> int:
    """Put the files of journal ``rows`` (``StateDB.journal_records``) in ``workspace``, their objects in the
    store; return the number of the last record."""
    last = 0
    for seq, data in rows:
        chain, objects = decode_record(data)
        restore_objects(view.store, objects)
        apply_record(workspace, chain)
        last = seq
    return last


def replay_journal(view: PortalView, secrets: Unlocked, now_ns: int) -> int:
    """Checkpoint what a mount journaled but did not make into a version; return the new version (0: none)."""
    rows = view.device.state.journal_records(view.row.id)
    if not rows:
        return 0
    head = view.device.state.head(view.row.id)
    root = view.root(head).entry if head is not None else new_root_entry(now_ns, os.getuid(), os.getgid())
    workspace = Workspace(root, view.load_node, view.device.home.staging / "replay")
    apply_journal(view, workspace, rows)
    plan = snapshot(workspace, lambda inode: True)
    if plan is None:
        return 0
    _, record = checkpoint(view, secrets, plan, None if head is None else head.record, {}, now_ns)
    log.info("replayed the journal of %s into version %d", view.row.name, record.version)
    return record.version
