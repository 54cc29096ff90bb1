"""kill -9 of portald and a read-write mount while they sync, again and again, on a hub and edges on loopback.

Device A keeps the portal mounted read-write and runs portald; device B (the same identity) runs portald.
Each round starts A's mount and daemon, closes a few new files in the mount, and kills both with SIGKILL
after a random delay: before, during or after the mount's publishing. After the last round everything is
started once more and left to settle: every file closed before any kill is then in A's mount, at the hub,
and on B, byte for byte, and `portalctl check` passes on both devices.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fabricutil import FabricLab, fabric
from .mountutil import force_unmount, mount_pid, mounted, needs_fuse, run
from .test_cli import ok
from .test_daemon import Daemon, start_daemon

pytestmark = needs_fuse

ROUNDS = 100
LOOP_SECONDS = 60.0  # the loop stops at ROUNDS or after this long, whichever comes first
SETTLE_SECONDS = 120.0


def content(round_: int, j: int) -> bytes:
    rng = random.Random(round_ * 1009 + j)
    return f"{round_}:{j}\n".encode() + rng.randbytes(rng.randint(0, 300_000))


def wait_exit(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([fd], [], [], 60)[0], f"process {pid} did not exit"
    finally:
        os.close(fd)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[FabricLab]:
    with fabric(tmp_path / "fabric") as lab:
        yield lab


def test_kill_minus_nine_of_portald_and_the_mount_during_sync_loses_nothing(tmp_path: Path, lab: FabricLab) -> None:
    a, b, mnt = tmp_path / "a", tmp_path / "b", tmp_path / "mnt"
    mnt.mkdir()
    words = " ".join(json.loads(ok(a, "init", "--no-passphrase", "--json"))["words"])
    ok(a, "hub", "add", lab.hub_url)
    ok(a, "portal", "create", "p")
    ok(a, "sync")
    ok(b, "recover", "--no-passphrase", input=words)
    ok(b, "hub", "add", lab.hub_url)
    rng = random.Random(2026)
    closed: dict[str, bytes] = {}
    daemons: list[Daemon] = []
    try:
        start_daemon(b, daemons)  # B follows throughout
        deadline, rounds = time.monotonic() + LOOP_SECONDS, 0
        while rounds < ROUNDS and time.monotonic() < deadline:
            run(a, "mount", "p", str(mnt), program="portalfs")
            try:
                daemon = start_daemon(a, daemons)
                for j in range(rng.randint(1, 3)):
                    name = f"r{rounds:03d}-{j}.bin"
                    (mnt / name).write_bytes(content(rounds, j))  # closed: durable when close returns
                    closed[name] = content(rounds, j)
                time.sleep(rng.uniform(0, 0.4))  # before, during or after the mount publishes
                pids = [mount_pid(a), daemon.process.pid]
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                for pid in pids:
                    wait_exit(pid)
                daemon.stop()
            finally:
                force_unmount(mnt)
            rounds += 1
        assert rounds >= 10, f"only {rounds} rounds in {LOOP_SECONDS:.0f} s"
        print(f"{rounds} rounds, {len(closed)} files closed")

        start_daemon(a, daemons)
        with mounted(a, "p", mnt):
            for name, data in closed.items():  # the journal kept every close across the kills
                assert (mnt / name).read_bytes() == data, name
            settle = time.monotonic() + SETTLE_SECONDS
            while True:  # the mount publishes what it holds; B's daemon pulls it
                status = json.loads(ok(a, "status", "--json"))["portals"][0]
                ours = status["version"]
                theirs = [v["id"] for v in json.loads(ok(b, "log", "p", "--json"))]
                mine = [v["id"] for v in json.loads(ok(a, "log", "p", "--json"))]
                if status["published"] == ours and theirs == mine:
                    break
                assert time.monotonic() < settle, ("did not settle", status, len(theirs), len(mine))
                time.sleep(0.5)
        ok(b, "get", "p", str(tmp_path / "on-b"))
        for name, data in closed.items():
            assert (tmp_path / "on-b" / name).read_bytes() == data, name
        assert sorted(p.name for p in (tmp_path / "on-b").iterdir()) == sorted(closed)
        ok(a, "check", "p")
        ok(b, "check", "p")
    finally:
        for daemon in daemons:
            daemon.stop()
        force_unmount(mnt)
