"""Nothing lost, everything repaired: deactivation and deletion keep data, damaged copies are found and healed.

Real processes on loopback: a hub, edges that run their garbage pass every second, devices in PORTAL_HOMEs.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from portalfs.device import Device
from portalfs.errors import Unreachable
from portalfs.fabric.config import FabricConfig, load_config
from portalfs.fabric.sync import Fabric
from portalfs.paths import DeviceHome

from . import storeutil
from .fabricutil import EdgeCopy, FabricLab, fabric, log_lines, wait_for_log
from .mountutil import fill, mounted, needs_fuse
from .test_cli import fails, ok, portalctl
from .test_fabric import _device, _same

FAST_GC = ("--gc-interval", "1s", "--gc-hold", "1s", "--scrub-rate", "0")  # damaged copies stay for readers


def _flip(path: Path | EdgeCopy) -> None:
    """Flip one bit in the middle of a stored object."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _intact(path: Path | EdgeCopy) -> bool:
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
    assert "deleted" in ok(a, "portal", "ls") and "deleted" in ok(b, "portal", "ls")  # every device knows
    assert json.loads(ok(b, "sync", "--json")) == []  # and follows it no more
    ok(a, "portal", "restore", "docs")
    ok(b, "sync")  # until it is restored
    ok(b, "get", "docs", str(tmp_path / "out"))
    _same(src, tmp_path / "out")

    ok(a, "portal", "delete", "docs", "--yes")
    deadline = time.monotonic() + 60  # past the 8 s grace period, the edges let the objects go
    while _objects_on_edges(lab):
        assert time.monotonic() < deadline, f"{_objects_on_edges(lab)} objects are still on the edges"
        time.sleep(0.2)
    fails(a, 15, "portal", "restore", "docs", match="grace period is over")


# damaged copies


def _holders(lab: FabricLab) -> dict[str, list[int]]:
    """Per object id (hex), the edges that hold it, in the order the hub lists them to readers."""
    index = {lab.edge_key(i): i for i in range(len(lab.edges))}
    with sqlite3.connect(lab.root / "hub.db") as db:
        cids = [row[0] for row in db.execute("SELECT DISTINCT cid FROM locations")]
        return {
            cid.hex(): [
                index[e.hex()] for (e,) in db.execute("SELECT DISTINCT edge FROM locations WHERE cid = ?", (cid,))
            ]
            for cid in cids
        }


def _edge_copy(lab: FabricLab, edge: int, cid: str) -> EdgeCopy:
    return lab.edge_copy(edge, cid)


def _all_intact_on_two_edges(lab: FabricLab, cids: list[str]) -> None:
    for cid in cids:
        copies = [i for i in range(len(lab.edges)) if _edge_copy(lab, i, cid).exists()]
        assert len(copies) >= 2, cid
        assert all(_intact(_edge_copy(lab, i, cid)) for i in copies), cid


def test_a_damaged_copy_on_one_edge_is_read_around_named_reported_and_replaced(tmp_path: Path, lab: FabricLab) -> None:
    src, a, words = _synced(tmp_path, lab)
    holders = _holders(lab)
    for cid, edges in holders.items():  # the copy readers are sent to first, of every object
        _flip(_edge_copy(lab, edges[0], cid))
    b, _ = _device(tmp_path, "b", lab, words)
    got = portalctl(b, "get", "docs", str(tmp_path / "out"))
    assert got.returncode == 0, got.stderr
    _same(src, tmp_path / "out")
    assert "damaged copy" in got.stderr  # named, with the edge and the object, and reported to the hub
    assert any(log_lines(edge, "readers reported damaged") for edge in lab.edges) or _wait_reported(lab)

    repaired = json.loads(ok(a, "sync", "--repair", "--json"))[0]["repair"]
    assert repaired["copied"] >= 1  # every damaged copy removed (by its edge or the repair) and put back
    _all_intact_on_two_edges(lab, list(holders))


def _wait_reported(lab: FabricLab) -> bool:
    deadline = time.monotonic() + 60
    while not any(log_lines(edge, "readers reported damaged") for edge in lab.edges):
        assert time.monotonic() < deadline, "no edge checked the copies readers reported"
        time.sleep(0.2)
    return True


def test_sync_repair_replaces_damaged_copies_it_was_not_told_of(tmp_path: Path, lab: FabricLab) -> None:
    _, a, _ = _synced(tmp_path, lab)
    holders = _holders(lab)
    for cid, edges in holders.items():
        _flip(_edge_copy(lab, edges[-1], cid))
    repaired = json.loads(ok(a, "sync", "--repair", "--json"))[0]["repair"]
    assert repaired["damaged"] == len(holders) and repaired["copied"] == len(holders)
    _all_intact_on_two_edges(lab, list(holders))


def test_an_object_damaged_on_every_edge_is_exit_8_and_repair_puts_the_owners_copy_back(
    tmp_path: Path, lab: FabricLab
) -> None:
    src, a, words = _synced(tmp_path, lab)
    holders = _holders(lab)
    cid, edges = max(holders.items(), key=lambda item: len(_edge_copy(lab, item[1][0], item[0]).read_bytes()))
    for edge in edges:
        _flip(_edge_copy(lab, edge, cid))
    b, _ = _device(tmp_path, "b", lab, words)
    got = portalctl(b, "get", "docs", str(tmp_path / "out"))
    assert got.returncode == 8, got.stderr
    last = got.stderr.strip().splitlines()[-1]
    assert last.startswith("portalctl: ") and "every copy is damaged" in last and cid in last

    ok(a, "sync", "--repair")  # the owner's local copy is intact
    ok(b, "get", "docs", str(tmp_path / "out"), "--overwrite")
    _same(src, tmp_path / "out")


def test_a_damaged_local_object_is_replaced_from_the_edges(tmp_path: Path, lab: FabricLab) -> None:
    src, a, _ = _synced(tmp_path, lab)
    local = storeutil.held(a)  # files and small objects' rows
    for cid in local:
        storeutil.flip(a, cid)
    checked = json.loads(ok(a, "check", "docs", "--json"))
    assert checked["healed"] == len(local)
    assert all(storeutil.intact(a, cid) for cid in local)  # the local store healed itself
    ok(a, "get", "docs", str(tmp_path / "out"))
    _same(src, tmp_path / "out")


def test_check_repair_heals_the_local_store_and_the_edges(tmp_path: Path, lab: FabricLab) -> None:
    _, a, _ = _synced(tmp_path, lab)
    holders = _holders(lab)
    cid, edges = next(iter(holders.items()))
    storeutil.flip(a, cid)
    _flip(_edge_copy(lab, edges[-1], cid))
    result = json.loads(ok(a, "check", "docs", "--repair", "--json"))
    assert result["healed"] == 1 and result["repair"]["copied"] >= 1
    assert storeutil.intact(a, cid)
    _all_intact_on_two_edges(lab, list(holders))


def test_an_edge_scrub_finds_a_damaged_copy_and_repair_replaces_it(tmp_path: Path) -> None:
    with fabric(tmp_path / "fabric", edge_args=("--scrub-interval", "1s", "--scrub-rate", "64M")) as lab:
        _, a, _ = _synced(tmp_path, lab)
        holders = _holders(lab)
        cid, edges = next(iter(holders.items()))
        copy = _edge_copy(lab, edges[0], cid)
        _flip(copy)
        wait_for_log(lab.edges[edges[0]], f"object {cid} is damaged")
        assert not copy.exists()
        repaired = json.loads(ok(a, "sync", "--repair", "--json"))[0]["repair"]
        assert repaired["copied"] == 1
        _all_intact_on_two_edges(lab, list(holders))


# portals fail alone


def test_a_removed_share_and_a_lost_key_fail_alone_and_the_other_portals_sync(tmp_path: Path, lab: FabricLab) -> None:
    _, a, _ = _synced(tmp_path, lab)
    x, _ = _device(tmp_path, "x", lab)  # another identity shares its portal with a's
    ok(x, "portal", "create", "theirs")
    ok(x, "put", "theirs", str(tmp_path / "src" / "notes.txt"))
    ok(x, "sync")
    me = json.loads(ok(a, "whoami", "--json"))["identity"]
    ok(x, "share", "theirs", "--with", me)
    ok(a, "sync")
    assert "theirs" in ok(a, "portal", "ls")
    ok(x, "unshare", "theirs", me)
    ok(a, "portal", "create", "lost")
    with sqlite3.connect(a / "state.db") as db:  # the portal's key no longer opens
        db.execute("UPDATE portals SET wrapped_key = zeroblob(length(wrapped_key)) WHERE name = 'lost'")
    (tmp_path / "more.txt").write_text("more\n")
    ok(a, "put", "docs", str(tmp_path / "more.txt"))

    synced = portalctl(a, "sync", "--json")
    assert synced.returncode == 0, synced.stderr  # nothing the user named failed
    results = {r["portal"]: r for r in json.loads(synced.stdout)}
    assert results["docs"]["published"] == 1  # the user's own portal is published all the same
    assert results["theirs"]["exit_code"] == 15 and results["lost"]["exit_code"] == 8
    failed = sorted(line.split(":")[1].strip() for line in synced.stderr.strip().splitlines())
    assert failed == ["lost", "theirs"]  # one line each
    fails(a, 15, "sync", "theirs", match="theirs")
    fails(a, 8, "sync", "lost", match="lost")


def test_status_on_a_revoked_device_shows_what_it_holds(tmp_path: Path, lab: FabricLab) -> None:
    _, a, words = _synced(tmp_path, lab)
    b, _ = _device(tmp_path, "b", lab, words)
    ok(b, "sync")
    ok(a, "device", "revoke", json.loads(ok(b, "whoami", "--json"))["device"], input=words)
    status = json.loads(ok(b, "status", "--json"))
    assert "revoked" in status["hub_error"]
    assert [{k: p[k] for k in ("portal", "version", "published")} for p in status["portals"]] == [
        {"portal": "docs", "version": 1, "published": 1}
    ]
    assert "revoked" in ok(b, "status")


def test_a_join_that_fails_half_way_saves_nothing(
    tmp_path: Path, lab: FabricLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, a, words = _synced(tmp_path, lab)
    b = tmp_path / "b"
    ok(b, "recover", "--no-passphrase", input=words)
    device = Device(DeviceHome.from_environ({"PORTAL_HOME": str(b)}))
    try:
        fabric = Fabric(device, device.unlock(None), FabricConfig(hub=lab.hub_url))

        def hub_gone() -> list[str]:  # the hub goes away after the keyring gave this device its portals
            raise Unreachable("hub: connection refused")

        monkeypatch.setattr(fabric.membership, "accept_shares", hub_gone)
        with pytest.raises(Unreachable):
            fabric.join()
        fabric.close()
        assert device.state.portals() == [] and load_config(device) is None  # not half-joined
    finally:
        device.close()
    ok(b, "hub", "add", lab.hub_url)  # the next try joins whole
    assert "docs" in ok(b, "portal", "ls")


def test_a_put_killed_at_any_moment_leaves_a_store_the_next_put_completes(tmp_path: Path) -> None:
    """An ingest flushes its objects once, before the version is recorded (not one fsync each): a put killed
    part way leaves objects the store's index does not list, and the next put stores them again, whole."""
    import signal
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    for i in range(24):
        (src / f"noise{i}.bin").write_bytes(os.urandom(400_000))
        (src / f"text{i}.txt").write_bytes(b"".join(b"%d a line of text\n" % j for j in range(20_000)))
    home = tmp_path / "home"
    ok(home, "init", "--no-passphrase")
    ok(home, "portal", "create", "p")
    env = {**os.environ, "PORTAL_HOME": str(home)}
    for delay in (0.3, 0.5, 0.7, 0.9, 1.2):  # bounded: five kills, each within seconds
        put = subprocess.Popen([sys.executable, "-m", "portalfs.cli.portalctl", "put", "p", f"{src}/"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(delay)
        put.send_signal(signal.SIGKILL)
        put.wait(timeout=30)
    ok(home, "put", "p", f"{src}/")
    ok(home, "check", "p")
    ok(home, "get", "p", str(tmp_path / "out"))
    _same(src, tmp_path / "out")


@needs_fuse
def test_a_store_that_cannot_flush_when_the_command_ends_fails_it_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the store holds back until the device closes (small objects' rows) and cannot write there (the disk
    filled meanwhile) is the command's error: one line, exit code 10, no traceback."""
    import subprocess

    from portalfs.cli.common import run_command
    from portalfs.sealing import object_id

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        home = small / "home"
        ok(home, "init", "--no-passphrase")
        monkeypatch.setenv("PORTAL_HOME", str(home))

        def work(device: Device) -> int:
            data = os.urandom(4000)
            device.store_local.put(object_id(data), data, durable=False)  # a row, written when the store syncs
            with open(small / "filler", "wb") as filler, contextlib.suppress(OSError):
                while True:
                    filler.write(os.urandom(1 << 16))
                    filler.flush()
            return 0

        assert run_command("portalctl", work) == 10
        err = capsys.readouterr().err
        assert err.startswith("portalctl: no space left to write") and err.count("\n") == 1, err
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_a_full_disk_is_a_clear_error_and_nothing_written_before_or_after_is_lost(tmp_path: Path) -> None:
    """PORTAL_HOME on a 6 MiB file system: a put past it fails with one line (exit 10) and leaves the store
    whole; in a mount, the writer is told ENOSPC (not EIO) and the mount serves on (it once crashed on the
    journal's full database), and once space is freed what is written is kept."""
    import errno
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(small)], check=True)
    try:
        home, source = small / "home", tmp_path / "source"
        source.mkdir()
        (source / "first.txt").write_text("stored before the disk filled\n")
        ok(home, "init", "--no-passphrase")
        ok(home, "portal", "create", "docs")
        ok(home, "put", "docs", f"{source}/")
        (source / "big.bin").write_bytes(os.urandom(9 << 20))
        fails(home, 10, "put", "docs", f"{source}/", match="portalctl gc")  # no space left, and what to do
        ok(home, "check", "docs")
        ok(home, "gc")  # what the put stored, no version names
        with mounted(home, "docs", tmp_path / "mnt") as mnt:
            with pytest.raises(OSError) as full:
                with open(mnt / "big.bin", "wb") as f:
                    for _ in range(9):
                        f.write(os.urandom(1 << 20))
            assert full.value.errno == errno.ENOSPC
            os.unlink(mnt / "big.bin")  # space freed (once the close's sealing of it, in flight, has ended)
            deadline = time.monotonic() + 30
            while True:
                try:
                    (mnt / "after.txt").write_text("written once space was freed\n")
                    break
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC and time.monotonic() < deadline, exc
                    time.sleep(0.2)
            assert (mnt / "first.txt").read_text() == "stored before the disk filled\n"
        ok(home, "check", "docs")
        ok(home, "get", "docs", str(tmp_path / "out"))
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["after.txt", "first.txt"]
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_objects_are_deleted_on_a_disk_full_to_the_last_byte(tmp_path: Path) -> None:
    """Deleting needs room to record itself: with not one byte free, a delete makes its room by removing the
    files first, and what was deleted is written again whole by the next put of it. A database that cannot
    open for want of space says so."""
    import subprocess

    from portalfs.errors import StoreFull
    from portalfs.sealing import object_id
    from portalfs.state import StateDB
    from portalfs.store import LocalStore

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        store = LocalStore(small / "store")
        objs = [(object_id(data), data) for data in (os.urandom(300_000) for _ in range(3))]
        for cid, data in objs:
            store.put(cid, data)
        store.sync()
        filler = fill(small)
        with pytest.raises(StoreFull, match="^no space left to open the device state"):
            StateDB(small / "state.db")
        store.delete_many([cid for cid, _ in objs[:2]])
        assert store.has([cid for cid, _ in objs]) == [False, False, True] and store.get(objs[2][0]) == objs[2][1]
        assert sorted(store.ids()) == [objs[2][0]]
        filler.unlink()
        assert store.put(*objs[0]) and store.get(objs[0][0]) == objs[0][1]
        store.close()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
