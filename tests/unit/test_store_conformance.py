"""The object-store contract (portalfs/store/base.py), run against every implementation."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from portalfs import fsutil
from portalfs.errors import CorruptObject, MissingObject, StoreFull
from portalfs.sealing import object_id
from portalfs.store import LocalStore, MemoryStore, ObjectStore
from portalfs.store.base import CachedReads
from portalfs.store.local import SMALL_MAX

Factory = Callable[[], ObjectStore]


@pytest.fixture(params=["memory", "local", "local-files"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """ "local": the device's layout (these objects are small: rows of the database); "local-files": an edge's."""
    opened: list[ObjectStore] = []

    def factory() -> ObjectStore:
        store: ObjectStore
        if request.param == "memory":
            store = MemoryStore()
        else:
            store = LocalStore(tmp_path / "store", small_max=0 if request.param == "local-files" else SMALL_MAX)
        if request.param == "memory" and opened:
            return opened[0]  # "reopening" a memory store is the same store
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


def _obj(n: int = 1000) -> tuple[bytes, bytes]:
    data = os.urandom(n)
    return object_id(data), data


def test_put_then_get(make_store: Factory) -> None:
    store = make_store()
    cid, data = _obj()
    assert store.put(cid, data) is True
    assert store.get(cid) == data
    assert store.put(cid, data) is False  # idempotent
    assert store.stat().objects == 1 and store.stat().bytes == len(data)


def test_put_with_a_wrong_id_stores_nothing(make_store: Factory) -> None:
    store = make_store()
    cid, data = _obj()
    with pytest.raises(CorruptObject):
        store.put(cid, data + b"x")
    assert store.has([cid]) == [False]
    assert list(store.ids()) == []


def test_get_missing(make_store: Factory) -> None:
    with pytest.raises(MissingObject):
        make_store().get(bytes(32))


def test_has_ids_delete(make_store: Factory) -> None:
    store = make_store()
    objs = [_obj(100 + i) for i in range(4)] + [_obj(SMALL_MAX + 1)]  # a larger one is a file in every layout
    for cid, data in objs:
        store.put(cid, data)
    assert store.has([objs[0][0], bytes(32), objs[4][0]]) == [True, False, True]
    assert sorted(store.ids()) == sorted(c for c, _ in objs)
    store.delete(objs[0][0])
    store.delete(objs[0][0])  # absent: not an error
    assert store.has([objs[0][0]]) == [False]
    assert len(list(store.ids())) == 4


def test_an_object_deleted_before_its_flush_needs_none(make_store: Factory) -> None:
    store = make_store()
    cid, data = _obj()
    store.put(cid, data, durable=False)
    store.delete(cid)  # a cache dropping what it just fetched
    store.sync()
    assert store.has([cid]) == [False]


def test_durable_after_sync_and_reopen(make_store: Factory) -> None:
    store = make_store()
    cid, data = _obj()
    store.put(cid, data)
    store.sync()
    store.close()
    again = make_store()
    assert again.get(cid) == data and again.has([cid]) == [True]


def test_concurrent_puts(make_store: Factory) -> None:
    store = make_store()
    objs = [_obj(2000) for _ in range(64)]

    def worker(part: list[tuple[bytes, bytes]]) -> None:
        for cid, data in part:
            store.put(cid, data)

    threads = [threading.Thread(target=worker, args=(objs[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.sync()
    assert all(store.get(cid) == data for cid, data in objs)


def test_local_store_detects_damage_on_read(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s", small_max=0)
    cid, data = _obj()
    store.put(cid, data)
    store.sync()
    path = tmp_path / "s" / "objects" / cid.hex()[:2] / cid.hex()
    raw = bytearray(path.read_bytes())
    raw[10] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptObject, match=cid.hex()):
        store.get(cid)
    assert oct(os.stat(tmp_path / "s" / "objects" / cid.hex()[:2]).st_mode)  # shard exists
    store.close()


def test_local_store_reads_what_is_in_memory_at_once_and_says_none_otherwise(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s", small_max=0)  # every object a file
    cid, data = _obj()
    store.put(cid, data)
    assert store.read_cached(cid) == data  # just written: in the page cache
    empty = object_id(b"")
    store.put(empty, b"")
    assert store.read_cached(empty) == b""
    assert store.read_cached(object_id(b"never stored")) is None
    assert isinstance(store, CachedReads) and not isinstance(MemoryStore(), CachedReads)
    store.close()


def test_an_object_put_durably_and_not_to_be_cached_leaves_the_page_cache(tmp_path: Path) -> None:
    """``cache=False``: once flushed, its pages go (a large file written through the mount)."""
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip()
    if kind == "tmpfs":
        pytest.skip("tmpfs keeps every page: nothing to give back")
    store = LocalStore(tmp_path / "s", small_max=0)
    kept, data = _obj(256 * 1024)
    gone, other = _obj(256 * 1024 + 1)
    store.put(kept, data)
    store.put(gone, other, cache=False)
    assert _resident_pages(store._path(kept)) == _pages(len(data))
    assert _resident_pages(store._path(gone)) == 0
    assert store.get(gone) == other
    store.close()


def _pages(size: int) -> int:
    return (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE


def _resident_pages(path: str) -> int:
    """How many of ``path``'s pages the page cache holds, asked without reading one (``mincore`` on a mapping;
    a read, even ``RWF_NOWAIT``, starts the readahead that would bring them in)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    finally:
        os.close(fd)
    try:
        vec = (ctypes.c_ubyte * _pages(size))()
        assert libc.mincore(ctypes.c_void_p(addr), size, vec) == 0, os.strerror(ctypes.get_errno())
        return sum(v & 1 for v in vec)
    finally:
        libc.munmap(ctypes.c_void_p(addr), size)


def test_local_store_names_objects_by_lowercase_hex(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    cid, data = _obj(SMALL_MAX + 1)
    store.put(cid, data)
    assert (tmp_path / "s" / "objects" / cid.hex()[:2] / cid.hex()).read_bytes() == data
    assert list((tmp_path / "s" / "tmp").iterdir()) == []
    store.close()


def test_small_objects_are_rows_and_survive_a_kill_once_synced(tmp_path: Path) -> None:
    """A small object makes no file; once sync() has returned, a kill -9 loses none of them, and a kill before
    it leaves each one whole or absent (the database's transaction), never half-written."""
    root = tmp_path / "s"
    synced = [_obj(500 + i) for i in range(50)]
    pending = [_obj(700 + i) for i in range(50)]
    pid = os.fork()
    if pid == 0:  # the child writes, syncs half, and is killed mid-way through the rest
        try:
            store = LocalStore(root)
            for cid, data in synced:
                store.put(cid, data, durable=False)
            store.sync()
            for cid, data in pending:
                store.put(cid, data, durable=False)
            os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    store = LocalStore(root)
    assert all(store.get(cid) == data for cid, data in synced)
    assert all(store.get(cid) == data for cid, data in pending if store.has([cid])[0])
    assert not any((root / "objects").rglob("*")) and store.stat().objects >= len(synced)
    assert sorted(store.ids()) == sorted(c for c, _ in synced + pending if store.has([c])[0])
    store.close()


def test_a_store_of_the_first_layout_opens_and_reads_as_it_is(tmp_path: Path) -> None:
    """Layout 1 kept every object, however small, as a file: the store reads, lists and deletes those, and
    what it stores from then on goes by the new layout."""
    root = tmp_path / "s"
    old = LocalStore(root, small_max=0)
    objs = [_obj(100 + i) for i in range(5)]
    for cid, data in objs:
        old.put(cid, data)
    old.close()
    store = LocalStore(root)
    assert all(store.get(cid) == data for cid, data in objs) and store.has([c for c, _ in objs]) == [True] * 5
    new_cid, new_data = _obj(300)
    store.put(new_cid, new_data)
    store.sync()
    assert not (root / "objects" / new_cid.hex()[:2] / new_cid.hex()).exists()  # a row
    assert sorted(store.ids()) == sorted([c for c, _ in objs] + [new_cid])
    store.delete(objs[0][0])
    assert (
        store.has([objs[0][0]]) == [False]
        and not (root / "objects" / objs[0][0].hex()[:2]).joinpath(objs[0][0].hex()).exists()
    )
    assert store.stat().objects == 5
    store.close()


def test_a_sync_that_fails_leaves_everything_to_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk fails a sync (StoreFull); nothing is lost from what waits, and the next sync writes it all."""
    store = LocalStore(tmp_path / "s")
    small, large = _obj(100), _obj(SMALL_MAX + 1)
    for cid, data in (small, large):
        store.put(cid, data, durable=False)
    real = store._durably

    def full() -> Iterator[None]:
        raise StoreFull("no space left in the store")

    monkeypatch.setattr(store, "_durably", full)
    with pytest.raises(StoreFull):
        store.sync()
    assert store.has([small[0], large[0]]) == [True, True] and store.get(small[0]) == small[1]
    monkeypatch.setattr(store, "_durably", real)
    store.sync()
    store.close()
    again = LocalStore(tmp_path / "s")
    assert again.get(small[0]) == small[1] and again.get(large[0]) == large[1] and again.stat().objects == 2
    again.close()


def test_a_sync_flushes_the_whole_file_system_only_for_many_files_not_yet_flushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """syncfs(2) writes out every dirty page of the file system, a mount's staging files among them: a sync uses
    it for many files put without their flush, never for the shard directories of files all put durably."""
    from portalfs.store import local

    flushed: list[Path] = []
    monkeypatch.setattr(local, "syncfs", lambda root: (flushed.append(root), fsutil.syncfs(root)))
    store = LocalStore(tmp_path / "s", small_max=0)
    durable = [_obj() for _ in range(200)]
    assert len({cid.hex()[:2] for cid, _ in durable}) > local.SYNCFS_FROM  # more shards to flush than that
    for cid, data in durable:
        store.put(cid, data)
    store.sync()
    assert flushed == []
    for cid, data in [_obj() for _ in range(local.SYNCFS_FROM + 1)]:
        store.put(cid, data, durable=False)
    store.sync()
    assert flushed == [store.root]
    store.close()
    again = LocalStore(tmp_path / "s", small_max=0)
    assert again.stat().objects == 200 + local.SYNCFS_FROM + 1
    again.close()


def _rows(root: Path) -> set[bytes]:
    import sqlite3

    db = sqlite3.connect(root / "index.db")
    try:
        return {bytes(cid) for (cid,) in db.execute("SELECT cid FROM objects")}
    finally:
        db.close()


def test_puts_go_on_while_a_sync_flushes_and_wait_for_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync flushes files without holding the store: a put and a read beside it go on, and what was put
    during the flush is left to the next sync (its file was not flushed), as is one deleted and put again."""
    import portalfs.store.local as local

    store = LocalStore(tmp_path / "s")
    first, during, again = _obj(SMALL_MAX + 1), _obj(SMALL_MAX + 2), _obj(SMALL_MAX + 3)
    store.put(*first, durable=False)
    store.put(*again, durable=False)
    flushing, release = threading.Event(), threading.Event()
    real = local.fsync_file

    def slow_fsync(path: Path) -> None:
        flushing.set()
        assert release.wait(10)
        real(path)

    monkeypatch.setattr(local, "fsync_file", slow_fsync)
    syncing = threading.Thread(target=store.sync)
    syncing.start()
    assert flushing.wait(10)
    store.put(*during, durable=False)  # the flush is waiting: the store is not held
    store.delete(again[0])
    store.put(*again, durable=False)
    assert store.get(first[0]) == first[1]
    release.set()
    syncing.join(10)
    assert _rows(tmp_path / "s") == {first[0]}
    monkeypatch.setattr(local, "fsync_file", real)
    store.sync()
    assert _rows(tmp_path / "s") == {first[0], during[0], again[0]}
    store.close()


def test_a_row_whose_file_is_gone_is_written_again_by_the_next_put(tmp_path: Path) -> None:
    """What a delete on a full disk can leave (the file gone, its row kept): the next put of it writes it."""
    store = LocalStore(tmp_path / "s")
    cid, data = _obj(SMALL_MAX + 1)
    store.put(cid, data)
    store.sync()
    os.unlink(tmp_path / "s" / "objects" / cid.hex()[:2] / cid.hex())
    assert store.put(cid, data) and store.get(cid) == data
    assert not store.put(cid, data)
    store.close()


@pytest.mark.parametrize("can", [True, False])
def test_an_object_file_is_born_whole_and_a_leftover_one_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, can: bool
) -> None:
    """A file is written unnamed (O_TMPFILE) and linked in place: no temp file; a file at its name that a
    crash left without a row (here damaged) is replaced whole. Where the file system cannot make unnamed files,
    temp files and renames as before, for the store's life."""
    tried: list[str] = []
    if not can:
        real_open = os.open

        def no_tmpfile(path: str, flags: int, mode: int = 0o777) -> int:
            if flags & os.O_TMPFILE == os.O_TMPFILE:
                tried.append(path)
                raise OSError(errno.EOPNOTSUPP, "not here")
            return real_open(path, flags, mode)

        monkeypatch.setattr(fsutil.os, "open", no_tmpfile)
    renames: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(fsutil.os, "replace", lambda a, b: renames.append(str(b)) or real_replace(a, b))
    store = LocalStore(tmp_path / "s", small_max=0)
    (first, one), (second, two), (third, three) = _obj(), _obj(), _obj()
    store.put(first, one)
    store.put(second, two, durable=False)
    leftover = tmp_path / "s" / "objects" / third.hex()[:2] / third.hex()
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(b"half")
    assert store.put(third, three) is True
    store.sync()
    assert [store.get(c) for c in (first, second, third)] == [one, two, three]
    assert not list((tmp_path / "s" / "tmp").iterdir())
    assert renames == ([str(leftover)] if can else [str(store._path(c)) for c in (first, second, third)])
    assert len(tried) == (0 if can else 1)  # asked once: the store remembers the file system cannot
    store.close()
