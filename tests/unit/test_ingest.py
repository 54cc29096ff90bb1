"""The ingest's walk (portalfs/ingest.py), with a real state database and an in-memory store."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from portalfs import ingest
from portalfs.ingest import CACHE_ROWS, Ingester
from portalfs.sealing import ChunkRef, seal, unseal
from portalfs.state import CachedFile, StateDB
from portalfs.store import MemoryStore
from portalfs.tree import decode_dir

CONVERGENCE, TREE = b"c" * 32, b"t" * 32


class _HeldStore(MemoryStore):
    """A store whose put of one object waits until ``release`` is set."""

    def __init__(self, held: bytes) -> None:
        super().__init__()
        self.held = held
        self.release = threading.Event()
        self.put_ids: list[bytes] = []

    def put(
        self, cid: bytes, data: bytes | bytearray, durable: bool = True, verify: bool = True, cache: bool = True
    ) -> bool:
        if cid == self.held:
            self.release.wait(timeout=30)
        self.put_ids.append(cid)
        return super().put(cid, data, durable, verify, cache)


def _open(store: MemoryStore, ref: ChunkRef) -> bytes:
    return bytes(unseal(ref, store.get(ref.cid)))


def test_the_walk_goes_on_while_a_directory_s_last_chunks_are_sealed(tmp_path: Path) -> None:
    """A directory whose chunks are still being sealed when its walk ends is finished later, by its parent:
    the walk does not wait there, with the workers idle, before it reads the next directory."""
    rng = random.Random(4)
    first, second = rng.randbytes(100_000), rng.randbytes(100_000)
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "b").mkdir()
    (tmp_path / "src" / "a" / "x").write_bytes(first)
    (tmp_path / "src" / "b" / "y").write_bytes(second)
    held, later = seal(CONVERGENCE, first)[0].cid, seal(CONVERGENCE, second)[0].cid
    store = _HeldStore(held)

    def release_once_b_is_stored() -> None:
        for _ in range(3000):  # at most 30 s: the walk never reaching b fails the test below
            if later in store.put_ids:
                break
            threading.Event().wait(0.01)
        store.release.set()

    helper = threading.Thread(target=release_once_b_is_stored)
    helper.start()
    state = StateDB(tmp_path / "state.db")
    try:
        ingester = Ingester(
            store=store, convergence_secret=CONVERGENCE, tree_secret=TREE, state=state, portal=b"p" * 16,
            now_ns=1,
        )  # fmt: skip
        root = ingester.ingest([os.fspath(tmp_path / "src") + "/"], None, lambda ref: _open(store, ref))
    finally:
        store.release.set()
        helper.join()
        state.close()
    assert store.put_ids.index(later) < store.put_ids.index(held)  # b's chunk went in while a's waited
    assert root.node is not None
    names = [e.name for e in decode_dir(_open(store, root.node))]
    assert names == [b"a", b"b"]


class _CountingState(StateDB):
    """Counts the files-cache queries."""

    one = many = 0

    def cached_file(self, portal: bytes, path: bytes) -> CachedFile | None:
        self.one += 1
        return super().cached_file(portal, path)

    def cached_files(self, portal: bytes, paths: list[bytes]) -> dict[bytes, CachedFile]:
        self.many += 1
        return super().cached_files(portal, paths)


def test_a_directory_s_files_cache_rows_are_asked_for_together(tmp_path: Path) -> None:
    """Unchanged files come from the files cache, asked for CACHE_ROWS of a directory's files at a time (not
    a query per file); a file given alone is asked for alone."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(CACHE_ROWS + 100):
        (src / f"f{i}").write_bytes(b"file %d" % i)
    (src / "sub" / "g").write_bytes(b"below")
    (tmp_path / "alone").write_bytes(b"alone")
    state, store = _CountingState(tmp_path / "state.db"), MemoryStore()
    now = time.time_ns() + 10 * 10**9  # every file older than the racy window
    try:
        for _ in range(2):
            ingester = Ingester(
                store=store, convergence_secret=CONVERGENCE, tree_secret=TREE, state=state, portal=b"p" * 16,
                now_ns=now,
            )  # fmt: skip
            state.one = state.many = 0
            ingester.ingest([os.fspath(src), os.fspath(tmp_path / "alone")], None, lambda ref: _open(store, ref))
            ingester.remember_files()
        assert ingester.stats.files == CACHE_ROWS + 102
        assert ingester.stats.bytes_read == 0  # the second time, every file from the cache
        assert (state.many, state.one) == (3, 1)  # src in two batches, sub in one; "alone" by itself
    finally:
        state.close()


def test_files_cache_rows_wait_outside_memory_and_are_recorded_only_when_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put stages its files-cache rows in the state db a batch at a time (not all in memory), and none of
    them is in the files cache until remember_files (after its version is committed); forget_files drops
    them, and a second put's staged rows are its own."""
    monkeypatch.setattr(ingest, "CACHE_ROWS_STAGED", 64)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(300):
        (src / f"f{i:03d}").write_bytes(b"file %d" % i)
    state, store = StateDB(tmp_path / "state.db"), MemoryStore()
    now = time.time_ns() + 10 * 10**9  # every file older than the racy window
    paths = [os.fsencode(src / f"f{i:03d}") for i in range(300)]

    def ingester(portal: bytes) -> Ingester:
        made = Ingester(store=store, convergence_secret=CONVERGENCE, tree_secret=TREE, state=state, portal=portal,
                        now_ns=now)  # fmt: skip
        made.ingest([os.fspath(src)], None, lambda ref: _open(store, ref))
        return made

    try:
        failed, kept = ingester(b"f" * 16), ingester(b"k" * 16)
        assert len(failed._cache_rows) < 64 and len(kept._cache_rows) < 64  # the rest are staged
        assert state.cached_files(b"f" * 16, paths) == {} == state.cached_files(b"k" * 16, paths)
        failed.forget_files()
        kept.remember_files()
        assert state.cached_files(b"f" * 16, paths) == {}
        cached = state.cached_files(b"k" * 16, paths)
        assert len(cached) == 300 and cached[paths[7]].size == len(b"file 7")
        assert state._db.execute("SELECT count(*) FROM temp.staged_files").fetchone()[0] == 0
    finally:
        state.close()
