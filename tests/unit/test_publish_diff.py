"""What a publish asks the edges about: what a version does not share with the one before it (O(change)),
on a real device (SQLite state, local store) with real versions made by put."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from portalfs.device import Device, Unlocked
from portalfs.keys import new_entropy_words
from portalfs.paths import DeviceHome
from portalfs.portal import PortalView
from portalfs.tree import Entry

NOW = 1_700_000_000_000_000_000


@pytest.fixture
def made(tmp_path: Path) -> Iterator[tuple[Unlocked, PortalView, Path]]:
    """A portal whose version 1 holds the tree at the path given (which the test then changes)."""
    device = Device(DeviceHome.from_environ({"PORTAL_HOME": str(tmp_path / "home")}))
    device.create_identity(new_entropy_words(os.urandom(32)), "", None, "test", NOW)
    secrets = device.unlock(None)
    device.create_portal("p", secrets, NOW)
    view = PortalView.open(device, "p", secrets)
    src = tmp_path / "src"
    _tree(src)
    view.put(secrets, [f"{src}/"], NOW)
    yield secrets, view, src
    device.close()


def _tree(root: Path) -> None:
    for d in range(20):
        (root / f"d{d}" / "deep").mkdir(parents=True)
        for f in range(10):
            (root / f"d{d}" / f"f{f}.txt").write_text(f"file {d}/{f}\n")
        (root / f"d{d}" / "deep" / "x.bin").write_bytes(os.urandom(3000))
    (root / "big.bin").write_bytes(os.urandom(3 << 20))


def _root(view: PortalView, number: int) -> Entry:
    return view.root(view.version(number)).entry


def _check(view: PortalView, old: Entry, new: Entry, most: int) -> set[bytes]:
    changed = view.changed_objects(new, old, set())
    everything_new, everything_old = view.objects(new, set()), view.objects(old, set())
    assert changed <= everything_new  # nothing that the new version does not reach
    assert everything_new <= changed | everything_old  # and nothing it needs is left out
    assert len(changed) <= most, len(changed)
    return changed


def test_one_changed_file_deep_in_a_portal_is_a_path_of_nodes_and_its_chunks(
    made: tuple[Unlocked, PortalView, Path],
) -> None:
    secrets, view, src = made
    (src / "d7" / "deep" / "x.bin").write_bytes(os.urandom(3000))
    view.put(secrets, [f"{src}/"], NOW + 1)
    _check(view, _root(view, 1), _root(view, 2), most=5)  # the root, d7 and deep, and x's node and chunk
    assert len(view.objects(_root(view, 2), set())) > 200


def test_additions_renames_and_an_appended_file(made: tuple[Unlocked, PortalView, Path]) -> None:
    secrets, view, src = made
    (src / "d4").rename(src / "d4-renamed")
    (src / "d5" / "new.txt").write_text("new\n")
    with open(src / "big.bin", "ab") as big:
        big.write(os.urandom(100_000))  # content-defined chunking: the chunks before the end are the same
    (src / "d6" / "deep").rename(src / "d6" / "now-a-file-name")
    view.put(secrets, [f"{src}/"], NOW + 1)
    old, new = _root(view, 1), _root(view, 2)
    changed = _check(view, old, new, most=40)
    assert len(changed) < len(view.objects(new, set())) // 4


def test_a_first_version_and_one_that_changed_a_directory_into_a_file(
    made: tuple[Unlocked, PortalView, Path],
) -> None:
    secrets, view, src = made
    new = _root(view, 1)
    assert view.changed_objects(new, None, set()) == view.objects(new, set())  # no version before: all of it
    shutil.rmtree(src / "d1")
    (src / "d1").write_text("a file where a directory was\n")
    view.put(secrets, [f"{src}/"], NOW + 1)
    _check(view, _root(view, 1), _root(view, 2), most=10)
