"""Restore on a device whose store fetches: a file's chunks come in batches, one batch ahead, each object once;
kept in the local store, or (as `portalctl get` asks) held in memory until read."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import trio

from portalfs.device import Device
from portalfs.fabric.store import FabricStore
from portalfs.keys import new_entropy_words
from portalfs.paths import DeviceHome
from portalfs.portal import PortalView
from portalfs.restore import CHUNK_BATCH, Restorer, batches_ahead
from portalfs.store import LocalStore
from portalfs.store.base import Prefetching, Priority
from portalfs.worktree.live import STAGE_BATCH, LiveTree

NOW = 1_700_000_000_000_000_000


class RemoteObjects:
    """A swarm stand-in over a store that holds every object; it records how the device asked for them."""

    def __init__(self, remote: LocalStore) -> None:
        self.remote = remote
        self.batches: list[list[bytes]] = []
        self.single: list[bytes] = []
        self._lock = threading.Lock()

    def get(self, cid: bytes, priority: Priority = Priority.FOREGROUND) -> bytes:
        with self._lock:
            self.single.append(cid)
        return self.remote.get(cid)

    def get_many(
        self, cids: Sequence[bytes], priority: Priority = Priority.FOREGROUND, sizes: Mapping[bytes, int] | None = None
    ) -> dict[bytes, bytes]:
        with self._lock:
            self.batches.append(list(cids))
        return {cid: self.remote.get(cid) for cid in cids}

    def close(self) -> None:
        self.remote.close()


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    device = Device(DeviceHome.from_environ({"PORTAL_HOME": str(tmp_path / "home")}))
    yield device
    device.close()


def remote_portal(
    tmp_path: Path, device: Device, name: str, fill: Callable[[Path], None], keep: bool = True
) -> tuple[PortalView, RemoteObjects]:
    """Portal ``name`` with the tree ``fill`` makes in a directory it is given, put; every object then lives in a
    "remote" store the device fetches from (its own store starts empty). ``keep``: what is fetched is kept."""
    device.create_identity(new_entropy_words(os.urandom(32)), "", None, "test", NOW)
    secrets = device.unlock(None)
    device.create_portal(name, secrets, NOW)
    src = tmp_path / "src"
    src.mkdir()
    fill(src)
    PortalView.open(device, name, secrets).put(secrets, [f"{src}/"], NOW)
    remote = LocalStore(tmp_path / "remote")
    local = device.store_local
    for cid in list(local.ids()):
        remote.put(cid, local.get(cid), durable=False)
        local.delete(cid)
    swarm = RemoteObjects(remote)
    store = FabricStore(local, lambda: swarm, keep=keep)  # type: ignore[arg-type,return-value]
    assert isinstance(store, Prefetching)
    return PortalView.open(device, name, secrets, store), swarm


def _remote_portal(tmp_path: Path, device: Device, keep: bool) -> tuple[PortalView, RemoteObjects, Path]:
    """Portal "big" with one 72 MiB file (more chunks than one batch holds), fetched from a remote store."""
    big = tmp_path / "src" / "big.bin"
    view, swarm = remote_portal(tmp_path, device, "big", lambda src: big.write_bytes(os.urandom(72 << 20)), keep)
    return view, swarm, big


def _each_chunk_once_in_batches(swarm: RemoteObjects, most: int) -> list[bytes]:
    """``most``: the largest batch the reader asks for."""
    chunks = [c for batch in swarm.batches for c in batch]
    assert len(chunks) == len(set(chunks)) > most  # each chunk in one batch; more than one batch
    assert all(len(batch) <= most for batch in swarm.batches)
    assert not set(swarm.single) & set(chunks)  # no chunk was fetched alone besides its batch
    return chunks


@pytest.mark.parametrize("keep", [True, False], ids=["kept", "not-kept"])
def test_a_restore_fetches_each_chunk_once_in_batches(tmp_path: Path, device: Device, keep: bool) -> None:
    view, swarm, original = _remote_portal(tmp_path, device, keep)
    root = view.root(view.version(None)).entry
    Restorer(view).restore(root, tmp_path / "out")
    assert (tmp_path / "out" / "big.bin").read_bytes() == original.read_bytes()
    chunks = _each_chunk_once_in_batches(swarm, CHUNK_BATCH)
    assert device.store_local.has(chunks) == [keep] * len(chunks)  # kept, or (a get) not written twice


async def test_a_remote_file_opened_for_writing_is_staged_in_batches(tmp_path: Path, device: Device) -> None:
    view, swarm, original = _remote_portal(tmp_path, device, keep=True)
    version = view.version(None)
    tree = LiveTree(view, device.unlock(None), version.record, view.root(version), tmp_path / "staging", False)
    node = tree.workspace.lookup(tree.workspace.get(tree.workspace.root.ino), b"big.bin")
    fh, _ = await tree.open(node, os.O_RDWR)
    assert await tree.read(fh, 0, 1 << 20) == original.read_bytes()[: 1 << 20]
    _each_chunk_once_in_batches(swarm, STAGE_BATCH)
    tree.abandon_streams()


def test_small_files_are_fetched_in_groups_bounded_in_count_and_in_bytes() -> None:
    """A group closes at ``size`` items or once their weights reach ``most``; every item comes back, in order,
    with what its group's fetch made."""
    weights = [1, 1, 5, 1, 1, 1, 1, 1, 9, 0, 0]
    fetched: list[list[int]] = []

    def fetch(batch: list[int]) -> int:
        fetched.append(batch)
        return len(batch)

    out = list(batches_ahead(range(len(weights)), fetch, size=4, depth=2, weigh=weights.__getitem__, most=6))
    assert [group for group, _ in out] == [[0, 1, 2], [3, 4, 5, 6], [7, 8], [9, 10]]
    assert [n for _, n in out] == [3, 4, 2, 2] and sorted(map(tuple, fetched)) == sorted(tuple(g) for g, _ in out)


async def test_a_file_of_one_repeated_chunk_is_read_ahead_from_the_edges(tmp_path: Path, device: Device) -> None:
    """Its chunks ahead name one object many times: a batch asks for it once, and the read goes on."""
    size = 40 << 20  # zeros: ten chunks of the largest size, all one object
    view, swarm = remote_portal(tmp_path, device, "zeros", lambda src: (src / "zeros.bin").write_bytes(bytes(size)))
    version = view.version(None)
    tree = LiveTree(view, device.unlock(None), version.record, view.root(version), tmp_path / "staging", False)
    node = tree.workspace.lookup(tree.workspace.root, b"zeros.bin")
    async with trio.open_nursery() as nursery:
        tree.reader.nursery = nursery
        fh, _ = await tree.open(node, os.O_RDONLY)
        for offset in range(0, size, 4 << 20):
            assert await tree.read(fh, offset, 1 << 20) == bytes(1 << 20)
        await tree.release(fh)
        nursery.cancel_scope.cancel()
    assert swarm.batches and all(len(batch) == len(set(batch)) for batch in swarm.batches)
