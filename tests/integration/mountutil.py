"""Helpers for tests that mount portals for real."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from portalfs.mount.runner import is_mounted
from portalfs.worktree.streaming import PUNCH_STEP

needs_fuse = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0, reason="mount tests need /dev/fuse and root"
)


def run(home: Path, *args: str, program: str = "portalctl", check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PORTAL_PASSPHRASE"}
    env["PORTAL_HOME"] = str(home)
    result = subprocess.run(
        [sys.executable, "-m", f"portalfs.cli.{program}", *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def new_home(tmp: Path, portal: str = "p") -> Path:
    home = tmp / "home"
    run(home, "init", "--no-passphrase")
    run(home, "portal", "create", portal)
    return home


def mount_pid(home: Path) -> int:
    records = list((home / "mounts").iterdir())
    assert len(records) == 1
    return int(json.loads(records[0].read_text())["pid"])


def wait_given_back(home: Path, size: int) -> None:
    """Wait until the staging file of a ``size``-byte file sealed while written has given back its front."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for path in (home / "staging").rglob("*"):
            st = path.stat()
            if stat.S_ISREG(st.st_mode) and st.st_size == size and st.st_blocks * 512 <= size - PUNCH_STEP:
                return
        time.sleep(0.02)
    raise AssertionError("no staging file gave back its front")


def force_unmount(mountpoint: Path) -> None:
    if is_mounted(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
    assert not is_mounted(mountpoint)


@contextmanager
def mounted(home: Path, target: str, mountpoint: Path, *options: str) -> Iterator[Path]:
    mountpoint.mkdir(exist_ok=True)
    args = ["mount", target, str(mountpoint)] + (["-o", ",".join(options)] if options else [])
    run(home, *args, program="portalfs")
    try:
        yield mountpoint
    finally:
        if is_mounted(mountpoint):
            result = run(home, "unmount", str(mountpoint), check=False)
            if result.returncode != 0:
                force_unmount(mountpoint)
                log = home / "logs" / "mount.log"
                raise AssertionError(result.stderr + (log.read_text()[-3000:] if log.exists() else ""))


def log(home: Path, portal: str = "p") -> list[dict]:
    return json.loads(run(home, "log", portal, "--json").stdout)


def shows(path: Path, text: str | None, seconds: float = 30) -> bool:
    """Whether ``path`` reads ``text`` (None: does not exist) within ``seconds``: a mount follows its portal."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            now: str | None = path.read_text()
        except FileNotFoundError:
            now = None
        if now == text or time.monotonic() > deadline:
            return now == text
        time.sleep(0.1)  # another process makes the version; the mount has no event to wait on from here


@contextmanager
def small_disk(where: Path, size: str = "3m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (created), for a full disk; unmounted after. Needs root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to its last byte with a file, whose path is returned."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, bytes(4096)):
            pass
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0
    return filler
