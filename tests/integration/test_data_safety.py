"""Nothing lost, everything repaired: deactivation and deletion keep data, damaged copies are found and healed.

Real processes on loopback: a hub, edges that run their garbage pass every second, devices in PORTAL_HOMEs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from .fabricutil import FabricLab, fabric, log_lines, wait_for_log
from .test_cli import fails, ok
from .test_fabric import _device, _same

FAST_GC = ("--gc-interval", "1s", "--gc-hold", "1s")


def _flip(path: Path) -> None:
    """Flip one bit in the middle of a stored object."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _intact(path: Path) -> bool:
    return blake3.blake3(path.read_bytes()).hexdigest() == path.name


def _source(root: Path) -> Path:
    root.mkdir(parents=True)
    for i in range(8):  # enough objects that every edge holds some
        (root / f"part{i}.bin").write_bytes(os.urandom(200_000))
    (root / "notes.txt").write_text("kept safe\n")
    return root


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[FabricLab]:
    with fabric(tmp_path / "fabric", hub_args=("--grace", "8s"), edge_args=FAST_GC) as lab:
        yield lab


def _synced(tmp_path: Path, lab: FabricLab) -> tuple[Path, Path, str]:
    src = _source(tmp_path / "src")
    a, words = _device(tmp_path, "a", lab)
    ok(a, "portal", "create", "docs")
    ok(a, "put", "docs", f"{src}/")
    ok(a, "sync")
    return src, a, words


def _objects_on_edges(lab: FabricLab) -> int:
    return sum(len(lab.edge_objects(i)) for i in range(len(lab.edges)))


def test_a_deactivated_portal_keeps_its_objects_through_garbage_passes(tmp_path: Path, lab: FabricLab) -> None:
    src, a, words = _synced(tmp_path, lab)
    stored = _objects_on_edges(lab)
    ok(a, "portal", "set", "docs", "--deactivate")
    for edge in lab.edges:  # two whole passes after the deactivation, on every edge
        wait_for_log(edge, "garbage pass:", log_lines(edge, "garbage pass:") + 2)
    assert _objects_on_edges(lab) == stored
    b, _ = _device(tmp_path, "b", lab, words)  # joins all the same, nothing local: all comes from the edges
    fails(b, 15, "sync", "docs", match="deactivated")
    ok(b, "sync")  # what the user did not name does not fail the command
    ok(a, "portal", "set", "docs", "--activate")
    ok(b, "sync")
    ok(b, "get", "docs", str(tmp_path / "out"))
    _same(src, tmp_path / "out")


def test_a_deleted_portal_is_restored_within_its_grace_period_and_released_after(
    tmp_path: Path, lab: FabricLab
) -> None:
    src, a, words = _synced(tmp_path, lab)
    fails(a, 2, "portal", "delete", "docs", match="--yes")  # no terminal to confirm on: nothing deleted
    deleted = json.loads(ok(a, "portal", "delete", "docs", "--yes", "--json"))
    assert deleted["state"] == "deleted" and deleted["release_ns"] > deleted["deleted_ns"]
    b, _ = _device(tmp_path, "b", lab, words)
    fails(b, 15, "sync", "docs", match="deleted")
    assert "deleted" in ok(a, "portal", "ls")
    ok(a, "portal", "restore", "docs")
    ok(b, "sync")
    ok(b, "get", "docs", str(tmp_path / "out"))
    _same(src, tmp_path / "out")

    ok(a, "portal", "delete", "docs", "--yes")
    deadline = time.monotonic() + 60  # past the 8 s grace period, the edges let the objects go
    while _objects_on_edges(lab):
        assert time.monotonic() < deadline, f"{_objects_on_edges(lab)} objects are still on the edges"
        time.sleep(0.2)
    fails(a, 15, "portal", "restore", "docs", match="grace period is over")
