"""A version's totals (bytes and files, signed in its root record): moved from the version before's by what
changed, and always what a walk of the whole tree counts (portalfs/ingest.py, PortalView._record)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from portalfs.device import Device
from portalfs.ingest import moved_totals, tree_totals
from portalfs.keys import new_entropy_words
from portalfs.paths import DeviceHome
from portalfs.portal import PortalView
from portalfs.sealing import ChunkRef

NOW = 1_700_000_000_000_000_000


class CountingView(PortalView):
    """Counts the directory nodes read."""

    loads = 0

    def load_node(self, ref: ChunkRef) -> bytes:
        self.loads += 1
        return super().load_node(ref)


@pytest.fixture
def view(tmp_path: Path) -> Iterator[CountingView]:
    device = Device(DeviceHome.from_environ({"PORTAL_HOME": str(tmp_path / "home")}))
    device.create_identity(new_entropy_words(os.urandom(32)), "", None, "test", NOW)
    secrets = device.unlock(None)
    device.create_portal("p", secrets, NOW)
    row = device.state.portal("p")
    yield CountingView(device, row, secrets.unwrap_portal_key(row))
    device.close()


def tree(root: Path, rng: random.Random, depth: int = 0) -> None:
    """A few files (some empty, some shared by content) and directories (some empty) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(rng.randint(0, 4)):
        (root / f"f{i}").write_bytes(rng.choice([b"", b"same", rng.randbytes(rng.randint(1, 3000))]))
    if rng.random() < 0.2:
        (root / "link").symlink_to("f0")
    for i in range(rng.randint(0, 3) if depth < 3 else 0):
        tree(root / f"d{i}", rng, depth + 1)


def check(view: PortalView) -> tuple[int, int]:
    head = view.device.state.head(view.row.id)
    assert head is not None
    payload = view.root(head)
    assert (payload.size, payload.files) == (head.size, head.files)
    assert (head.size, head.files) == tree_totals(payload.entry, view.load_node)
    return head.size, head.files


def test_each_put_and_edit_records_the_totals_a_whole_walk_counts(view: CountingView, tmp_path: Path) -> None:
    secrets = view.device.unlock(None)
    rng = random.Random(7)
    for step in range(12):
        src = tmp_path / f"src{step}"
        tree(src / "top", rng)
        for name in rng.sample(["a", "b", "c"], 2):  # new names, and names that replace ones before
            tree(src / name, rng)
        if rng.random() < 0.5:
            view.put(secrets, [f"{src}/"], NOW + step)  # its contents at the top level
        else:
            view.put(secrets, [str(p) for p in sorted(src.iterdir())], NOW + step)
        check(view)
        if step % 3 == 2:
            view.edit(secrets, {"top": None}, NOW + step)  # a removal (every put above placed "top")
            check(view)


def test_a_put_of_one_file_reads_no_directory_it_does_not_replace(view: CountingView, tmp_path: Path) -> None:
    """The whole tree is not walked for the totals: a put beside 20 directories reads the root alone."""
    secrets = view.device.unlock(None)
    for i in range(20):
        tree(tmp_path / "big" / f"d{i}", random.Random(i))
    view.put(secrets, [f"{tmp_path / 'big'}/"], NOW)
    before = check(view)
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "new.txt").write_bytes(b"hello")
    view.loads = 0
    view.put(secrets, [f"{tmp_path / 'one'}/"], NOW + 1)
    assert view.loads == 1  # the root before, to place the new file among its entries
    assert check(view) == (before[0] + 5, before[1] + 1)
    (tmp_path / "one" / "new.txt").write_bytes(b"hello again")
    view.put(secrets, [f"{tmp_path / 'one'}/"], NOW + 2)  # replaces it: the old file's size goes
    assert check(view) == (before[0] + 11, before[1] + 1)


def test_moved_totals_follow_a_file_that_became_a_directory_and_one_removed(view: CountingView, tmp_path: Path) -> None:
    secrets = view.device.unlock(None)
    (tmp_path / "v1" / "x").mkdir(parents=True)
    (tmp_path / "v1" / "x" / "inner").write_bytes(b"12345")
    (tmp_path / "v1" / "y").write_bytes(b"abc")
    (tmp_path / "v1" / "z").write_bytes(b"zz")
    view.put(secrets, [f"{tmp_path / 'v1'}/"], NOW)
    old = view.root(view.device.state.head(view.row.id))  # type: ignore[arg-type]
    view.edit(secrets, {"z": None}, NOW + 1)  # removed
    (tmp_path / "v2" / "y").mkdir(parents=True)  # y: a file before, a directory now
    (tmp_path / "v2" / "y" / "a").write_bytes(b"0123456789")
    (tmp_path / "v2" / "y" / "b").write_bytes(b"")
    (tmp_path / "v2" / "x").write_bytes(b"x")  # x: a directory before, a file now
    view.put(secrets, [f"{tmp_path / 'v2'}/"], NOW + 2)
    assert check(view) == (11, 3)
    new = view.root(view.device.state.head(view.row.id)).entry  # type: ignore[arg-type]
    assert moved_totals(new, old.entry, (old.size, old.files), view.load_node) == (11, 3)
    assert moved_totals(new, new, (11, 3), view.load_node) == (11, 3)
