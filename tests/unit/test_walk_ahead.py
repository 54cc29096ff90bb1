"""A reader that walks a listed directory in name order (tar, cp -r, rsync) has the next files' first chunks loaded
while it reads the one it opened, small files whole, several in one job (``LiveTree._walk_ahead``); opens out of
order, or in a directory not listed, load nothing ahead."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from portalfs.device import Device
from portalfs.paths import DeviceHome
from portalfs.portal import PortalView
from portalfs.tree import iter_file_chunks
from portalfs.worktree.live import WALK_AHEAD_FILES, LiveTree
from portalfs.worktree.workspace import Inode

from .test_restore_prefetch import RemoteObjects, remote_portal

KiB = 1024
# In name order: six files that load their first chunks ahead (over 256 KiB), and small ones that load whole.
SIZES = {b"a0": 300, b"a1": 400, b"a2": 300, b"a3": 2, b"a4": 500, b"a5": 300, b"a6": 300, b"a7": 3, b"a8": 4}


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    device = Device(DeviceHome.from_environ({"PORTAL_HOME": str(tmp_path / "home")}))
    yield device
    device.close()


@dataclass
class Walk:
    view: PortalView
    swarm: RemoteObjects
    tree: LiveTree
    directory: Inode
    children: dict[bytes, Inode]


def _walk(tmp_path: Path, device: Device, fill: Callable[[Path], None]) -> Walk:
    """A live tree over a portal whose tree ``fill`` makes, every object in a remote store the device fetches from
    (so each object it loads is seen); its directory "dir"."""
    view, swarm = remote_portal(tmp_path, device, "walk", fill)
    version = view.version(None)
    tree = LiveTree(view, device.unlock(None), version.record, view.root(version), tmp_path / "staging", False)
    directory = tree.workspace.lookup(tree.workspace.root, b"dir")
    return Walk(view, swarm, tree, directory, tree.workspace.children(directory))


@pytest.fixture
def walk(tmp_path: Path, device: Device) -> Walk:
    """ "dir" holds SIZES and a subdirectory."""

    def fill(src: Path) -> None:
        (src / "dir" / "sub").mkdir(parents=True)
        for name, size in SIZES.items():
            (src / "dir" / name.decode()).write_bytes(os.urandom(size * KiB))

    return _walk(tmp_path, device, fill)


async def test_a_walk_loads_the_first_chunks_of_the_next_files(tmp_path: Path, walk: Walk) -> None:
    view, swarm, tree, directory, children = walk.view, walk.swarm, walk.tree, walk.directory, walk.children
    first = {name: next(iter_file_chunks(children[name].node, view.load_node)) for name in SIZES}  # type: ignore[arg-type]
    swarm.single.clear()
    async with trio.open_nursery() as nursery:
        tree.reader.nursery = nursery
        tree.listed(directory, sorted(children))
        fh, _ = await tree.open(children[b"a0"], os.O_RDONLY)
        ahead = [b"a1", b"a2", b"a4", b"a5"]  # the first WALK_AHEAD_FILES large ones; and every small one
        assert len(ahead) == WALK_AHEAD_FILES
        small = [first[name].cid for name in (b"a3", b"a7", b"a8")]
        with trio.fail_after(20):  # the small files' chunks come in one batch (their nodes are here already)
            while not ({first[name].cid for name in ahead} <= set(swarm.single) and swarm.batches == [small]):
                await trio.sleep(0.01)
        assert first[b"a6"].cid not in swarm.single
        # a1, read now, comes from what was loaded: nothing more is fetched for it
        fetched = len(swarm.single)
        fh1, _ = await tree.open(children[b"a1"], os.O_RDONLY)  # the walk goes on: a6 loads too
        with trio.fail_after(20):
            while first[b"a6"].cid not in swarm.single:
                await trio.sleep(0.01)
        data = b"".join(await tree.reader.read(children[b"a1"].node, SIZES[b"a1"] * KiB, 0, 64 * KiB))
        assert len(data) == 64 * KiB
        assert swarm.single[fetched:].count(first[b"a1"].cid) == 0
        content = b"".join(await tree.reader.read(children[b"a7"].node, SIZES[b"a7"] * KiB, 0, 64 * KiB))
        assert content == (tmp_path / "src" / "dir" / "a7").read_bytes()
        assert first[b"a7"].cid not in swarm.single[fetched:]
        nursery.cancel_scope.cancel()
    await tree.release(fh)
    await tree.release(fh1)


async def test_no_walk_without_a_listing_or_out_of_order(walk: Walk) -> None:
    tree, directory, children = walk.tree, walk.directory, walk.children
    asked: list[bytes] = []
    small: list[list[bytes]] = []
    names = {children[name].node: name for name in SIZES}
    tree.reader.read_ahead_file = lambda node: asked.append(names[node])  # type: ignore[method-assign]
    tree.reader.read_ahead_small_files = lambda nodes: small.append([names[n] for n in nodes])  # type: ignore[method-assign]

    async def open_(name: bytes) -> None:
        fh, _ = await tree.open(children[name], os.O_RDONLY)
        await tree.release(fh)

    await open_(b"a0")  # the directory was not listed
    await open_(b"a1")
    assert asked == small == []
    tree.listed(directory, sorted(children))
    await open_(b"a2")  # listed, but a2 is not its first file, and no file was opened there since
    assert asked == small == []
    await open_(b"a4")  # after a2: a walk
    assert asked == [b"a5", b"a6"]
    assert small == [[b"a7", b"a8"]]
    await open_(b"a1")  # back: not a walk
    assert asked == [b"a5", b"a6"]
    await open_(b"a2")  # forward again from a1
    assert asked == [b"a5", b"a6", b"a4", b"a5", b"a6"]
    assert small == [[b"a7", b"a8"], [b"a3", b"a7", b"a8"]]


async def test_small_files_of_the_same_content_load_once(tmp_path: Path, device: Device) -> None:
    contents = [os.urandom(3 * KiB)] * 3 + [os.urandom(5 * KiB)] * 3  # files of one content share one node

    def fill(src: Path) -> None:
        (src / "dir").mkdir()
        for i, content in enumerate(contents):
            (src / "dir" / f"f{i}").write_bytes(content)

    walk = _walk(tmp_path, device, fill)
    async with trio.open_nursery() as nursery:
        walk.tree.reader.nursery = nursery
        walk.tree.listed(walk.directory, sorted(walk.children))
        for i, content in enumerate(contents):
            node = walk.children[f"f{i}".encode()]
            fh, _ = await walk.tree.open(node, os.O_RDONLY)
            assert b"".join(await walk.tree.reader.read(node.node, node.size, 0, 64 * KiB)) == content
            await walk.tree.release(fh)
        nursery.cancel_scope.cancel()
    # one batch of the two contents' file nodes, one of their chunks: each once
    assert [sorted(set(batch)) for batch in walk.swarm.batches] == [sorted(batch) for batch in walk.swarm.batches]
    assert [len(batch) for batch in walk.swarm.batches] == [2, 2]
