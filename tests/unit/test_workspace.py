"""The mount's working tree and journal records, without FUSE."""

from __future__ import annotations

import errno
import stat
from pathlib import Path

import pytest

from portalfs.sealing import ChunkRef, unseal
from portalfs.store import MemoryStore
from portalfs.tree import Entry, load_dir, new_root_entry, store_dir
from portalfs.worktree.commit import DirPlan, FilePlan, Sealer, apply, execute, snapshot
from portalfs.worktree.journal import apply_record, decode_record, encode_record, journal_chain
from portalfs.worktree.workspace import RENAME_EXCHANGE, RENAME_NOREPLACE, FsError, Workspace

from .trees import Nodes

NOW = 1_700_000_000_000_000_000


def _no_nodes(ref: ChunkRef) -> bytes:
    raise AssertionError("an empty tree loads no nodes")


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(new_root_entry(NOW, 0, 0), _no_nodes, tmp_path / "staging")


def _errno(call: object) -> int:
    with pytest.raises(FsError) as e:
        call()  # type: ignore[operator]
    return e.value.errno


def test_names_link_counts_and_dirty_marks(ws: Workspace) -> None:
    root = ws.root
    a = ws.mkdir(root, b"a", 0o755, 0, 0, NOW)
    ws.mkdir(root, b"b", 0o755, 0, 0, NOW)
    f = ws.create(a, b"f", 0o644, 0, 0, NOW)
    assert ws.nlink(root) == 4 and ws.nlink(a) == 2 and ws.nlink(f) == 1
    assert root.dirty_below and a.dirty_below and f.dirty
    assert _errno(lambda: ws.mkdir(root, b"a", 0o755, 0, 0, NOW)) == errno.EEXIST
    assert _errno(lambda: ws.create(root, b"x" * 256, 0o644, 0, 0, NOW)) == errno.ENAMETOOLONG
    assert _errno(lambda: ws.rmdir(root, b"a", NOW)) == errno.ENOTEMPTY
    assert _errno(lambda: ws.unlink(root, b"b", NOW)) == errno.EISDIR
    assert _errno(lambda: ws.rename(root, b"a", a, b"inside", 0, NOW)) == errno.EINVAL
    ws.rmdir(root, b"b", NOW)
    assert ws.nlink(root) == 3


def test_a_checkpoint_keeps_the_entries_that_did_not_change_and_remakes_the_others(ws: Workspace) -> None:
    """snapshot: the entries of the last checkpoint's directories are used again where the inode still says
    exactly what they say (so they are not made or encoded again); any difference makes a new one."""
    d = ws.mkdir(ws.root, b"d", 0o755, 0, 0, NOW)
    files = {name: ws.create(d, name, 0o644, 0, 0, NOW) for name in (b"a", b"b", b"c", b"e")}
    first = snapshot(ws, lambda inode: True)
    assert first is not None
    before = {entry.name: entry for entry in _children(first, b"d")}
    ws.set_attrs(files[b"a"], NOW + 1, mode=0o600)
    ws.set_xattr(files[b"b"], b"user.k", b"v", NOW + 1)
    files[b"c"].ctime_ns = NOW + 2  # set without a mark: still seen, as every field is compared
    again = snapshot(ws, lambda inode: True)
    assert again is not None
    after = {entry.name: entry for entry in _children(again, b"d")}
    assert after[b"e"] is before[b"e"]
    assert stat.S_IMODE(after[b"a"].mode) == 0o600 and after[b"b"].xattrs == {b"user.k": b"v"}
    assert after[b"c"].ctime_ns == NOW + 2
    assert all(after[name] is not before[name] and after[name] != before[name] for name in (b"a", b"b", b"c"))
    assert set(ws.last_entries) == {ws.root, d}  # only the directories this checkpoint committed
    ws.unlink(d, b"e", NOW + 3)
    ws.rename(d, b"a", d, b"z", 0, NOW + 3)
    assert snapshot(ws, lambda inode: True) is not None
    assert set(ws.last_entries[d]) == {b"b", b"c", b"z"}  # kept in place, without the names gone


def test_a_checkpoint_stores_anew_only_the_parts_of_a_large_directory_that_changed(ws: Workspace) -> None:
    """execute and apply: a directory in parts keeps its parts for the next checkpoint, which stores anew only
    the part holding a change (and the list); files sealed by a checkpoint are the next one's entries as
    committed, not made again; the entries kept hold no encodings."""
    store = MemoryStore()
    stored: list[bytes] = []
    store_put = store.put
    store.put = lambda cid, data, durable=True, verify=True, cache=True: (stored.append(cid), store_put(cid, data))[1]  # type: ignore[method-assign]
    d = ws.mkdir(ws.root, b"d", 0o755, 0, 0, NOW)
    for i in range(30_000):  # about 5 MB of entries: past SPLIT_AT
        inode = ws.create(d, b"file-%06d" % i, 0o644, 0, 0, NOW)
        inode.memory = bytearray(b"content %d" % i)
        ws.content_changed(inode, len(inode.memory), NOW)

    def commit() -> tuple[DirPlan, int]:
        plan = snapshot(ws, lambda inode: True)
        assert plan is not None
        stored.clear()
        result = execute(plan, Sealer(store, b"c" * 32, b"t" * 32), lambda ref: b"", {})
        apply(ws, result)
        (sub,) = [child for child in plan.children if isinstance(child, DirPlan)]
        return sub, len(stored)

    first, _ = commit()
    assert len(first.parts) > 2 and ws.last_parts[d] is first.parts
    assert all(entry._encoded is None for entry in ws.last_entries[d].values())
    ws.set_attrs(ws.children(d)[b"file-012345"], NOW + 1, mode=0o600)
    second, count = commit()
    assert sum(not any(p is q for q in first.parts) for p in second.parts) == 1
    assert count == 3  # that part, the list, the root: nothing else
    assert second.ref is not None and d.node == second.ref
    entries = load_dir(second.ref, lambda ref: unseal(ref, store.get(ref.cid)))
    assert store_dir(entries, Sealer(store, b"c" * 32, b"t" * 32).store_node) == second.ref  # as from nothing
    assert [e.name for e in entries] == [b"file-%06d" % i for i in range(30_000)]
    assert next(e for e in entries if e.name == b"file-012345").mode & 0o777 == 0o600


def _children(plan: DirPlan, name: bytes) -> list[Entry]:
    (sub,) = [child for child in plan.children if isinstance(child, DirPlan) and child.entry.name == name]
    return [child.entry if isinstance(child, (FilePlan, DirPlan)) else child for child in sub.children]


def test_rename_flags_and_link_counts_follow(ws: Workspace) -> None:
    root = ws.root
    d1 = ws.mkdir(root, b"d1", 0o755, 0, 0, NOW)
    d2 = ws.mkdir(root, b"d2", 0o755, 0, 0, NOW)
    sub = ws.mkdir(d1, b"sub", 0o755, 0, 0, NOW)
    f = ws.create(d2, b"f", 0o644, 0, 0, NOW)
    assert _errno(lambda: ws.rename(d1, b"sub", d2, b"f", RENAME_NOREPLACE, NOW)) == errno.EEXIST
    ws.rename(d1, b"sub", d2, b"f", RENAME_EXCHANGE, NOW)
    assert ws.lookup(d2, b"f") is sub and ws.lookup(d1, b"sub") is f
    assert (ws.nlink(d1), ws.nlink(d2)) == (2, 3)
    ws.rename(d2, b"f", root, b"moved", 0, NOW)
    assert sub.parent is root and sub.name == b"moved" and (ws.nlink(d2), ws.nlink(root)) == (2, 5)


def test_journal_records_round_trip_and_recreate_missing_ancestors(ws: Workspace, tmp_path: Path) -> None:
    deep = ws.mkdir(ws.mkdir(ws.root, b"new", 0o750, 7, 8, NOW), b"deeper", 0o700, 7, 8, NOW)
    f = ws.create(deep, b"file", 0o600, 7, 8, NOW)
    content = ChunkRef(b"c" * 32, b"k" * 32, b"p" * 32, 11)
    record = encode_record(journal_chain(f), content, 11, [b"sealed"])
    chain, objects = decode_record(record)
    assert [e.name for e in chain] == [b"new", b"deeper", b"file"] and objects == [b"sealed"]
    assert chain[0].node is None and chain[-1].node == content and chain[-1].size == 11
    fresh = Workspace(new_root_entry(NOW, 0, 0), _no_nodes, tmp_path / "other")
    apply_record(fresh, chain)
    placed = fresh.lookup(fresh.lookup(fresh.lookup(fresh.root, b"new"), b"deeper"), b"file")
    assert placed.node == content and placed.committed_size == 11 and stat.S_IMODE(placed.mode) == 0o600
    assert fresh.lookup(fresh.root, b"new").uid == 7


def test_malformed_journal_records_are_refused() -> None:
    from portalfs import encoding

    with pytest.raises(ValueError):
        decode_record(encoding.encode({"chain": [], "objects": []}))
    directory = Entry(b"d", stat.S_IFDIR | 0o755, 0, 0, NOW, NOW).to_cbor()
    with pytest.raises(ValueError):  # a chain must end with a file
        decode_record(encoding.encode({"chain": [directory], "objects": []}))


def test_a_read_only_tree_follows_a_newer_version_in_place(tmp_path: Path) -> None:
    nodes = Nodes()
    old = nodes.build({"keep": "same", "edit": "v1", "gone": "x", "dir": {"inner": "a"}, "lazy": {"deep": "d"}})
    ws = Workspace(old, nodes.load, tmp_path / "staging", read_only=True)
    root = ws.root
    keep, edit, gone = (ws.lookup(root, n) for n in (b"keep", b"edit", b"gone"))
    directory = ws.lookup(root, b"dir")
    ws.lookup(directory, b"inner")
    lazy = ws.lookup(root, b"lazy")  # its children are never loaded
    gone.lookups = 1  # the kernel still knows it
    cached_gen = edit.content_gen

    new = nodes.build(
        {"keep": "same", "edit": "v2, longer", "dir": {"inner": "a", "added": "b"}, "lazy": {"deep": "e"}, "new": "n"},
        when=2,  # new times everywhere: attributes change, content only where it did
    )
    followed = ws.follow(new)

    assert ws.lookup(root, b"keep") is keep and ws.lookup(root, b"edit") is edit  # inode numbers stay
    assert edit.size == len("v2, longer") and edit.content_gen != cached_gen
    assert nodes.load(edit.node).decode() == "v2, longer"  # type: ignore[arg-type]
    assert keep.mtime_ns == 2 and keep.content_gen == keep.committed_content_gen
    assert gone.unlinked and ws.get(gone.ino) is gone  # until the kernel forgets it
    assert _errno(lambda: ws.lookup(root, b"gone")) == errno.ENOENT
    assert sorted(ws.children(directory)) == [b"added", b"inner"]
    assert sorted(ws.children(lazy)) == [b"deep"] and nodes.load(ws.lookup(lazy, b"deep").node).decode() == "e"  # type: ignore[arg-type]
    assert ws.lookup(root, b"new").size == 1
    assert {edit.ino, keep.ino, root.ino, directory.ino} <= set(followed.inodes)
    assert {(root.ino, b"gone"), (root.ino, b"new"), (directory.ino, b"added")} == set(followed.entries)
    ws.forget(gone, 1)
    assert gone.ino not in ws.inodes

    assert ws.follow(new) == type(followed)()  # the same version again: nothing to tell the kernel


def test_a_writable_tree_does_not_follow(ws: Workspace) -> None:
    assert _errno(lambda: ws.follow(new_root_entry(NOW, 0, 0))) == errno.EROFS


def test_a_rebase_invalidates_a_directory_changed_here_whose_subdirectories_changed_there(tmp_path: Path) -> None:
    """A directory with a name made here keeps its own state, but a subdirectory the new version adds changes its
    link count: the kernel holds that count (for long: the mount's timeouts), so the directory is among what the
    caller invalidates, with the new name."""
    nodes = Nodes()
    old = nodes.build({"dir": {"a": "x"}})
    ws = Workspace(old, nodes.load, tmp_path / "staging")
    directory = ws.lookup(ws.root, b"dir")
    ws.create(directory, b"made-here", 0o644, 0, 0, NOW)
    assert ws.nlink(directory) == 2

    followed = ws.rebase(nodes.build({"dir": {"a": "x", "sub": {"s": "y"}}}, when=2), lambda entry, taken: entry)

    assert sorted(ws.children(directory)) == [b"a", b"made-here", b"sub"] and ws.nlink(directory) == 3
    assert (directory.ino, b"sub") in followed.entries and directory.ino in followed.inodes
