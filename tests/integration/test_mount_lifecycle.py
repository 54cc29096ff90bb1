"""Mounting and unmounting: bad input, history, restore, damage, signals, busy unmounts."""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from portalfs.mount.runner import is_mounted

from .mountutil import force_unmount, log, mount_pid, mounted, needs_fuse, new_home, run, shows, wait_given_back
from .storeutil import largest

pytestmark = needs_fuse


def _fails(home: Path, code: int, match: str, *args: str, program: str = "portalfs") -> None:
    result = run(home, *args, program=program, check=False)
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in result.stderr, result.stderr


def _wait_exit(pid: int, timeout: float = 60) -> None:
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"process {pid} did not exit"
    finally:
        os.close(fd)


def test_bad_mount_points_and_targets(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    _fails(home, 13, "does not exist", "mount", "p", str(tmp_path / "missing"))
    (tmp_path / "file").write_text("x")
    _fails(home, 13, "not a directory", "mount", "p", str(tmp_path / "file"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    _fails(home, 13, "not empty", "mount", "p", str(tmp_path / "full"))
    (tmp_path / "m").mkdir()
    _fails(home, 3, "no portal named 'nope'", "mount", "nope", str(tmp_path / "m"))
    _fails(home, 13, "has no version 7", "mount", "p@7", str(tmp_path / "m"))  # a bad NAME@VERSION
    _fails(home, 13, "positive number", "mount", "p@x", str(tmp_path / "m"))
    with mounted(home, "p", tmp_path / "m") as mnt:
        _fails(home, 13, "already a mount point", "mount", "p", str(mnt))
        (tmp_path / "m2").mkdir()
        _fails(home, 12, "being written elsewhere", "mount", "p", str(tmp_path / "m2"))
        (tmp_path / "src.txt").write_text("x")
        _fails(home, 12, "being written elsewhere", "put", "p", str(tmp_path / "src.txt"), program="portalctl")
    _fails(home, 13, "is not mounted", "unmount", str(tmp_path / "m"))


def test_history_mounts_are_read_only_and_restore_brings_a_file_back(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    with mounted(home, "p", tmp_path / "m") as mnt:
        (mnt / "doc.txt").write_text("first draft")
        (mnt / "dir").mkdir()
        (mnt / "dir" / "inner.txt").write_text("inner v1")
    first = log(home)[-1]["version"]
    with mounted(home, "p", tmp_path / "m") as mnt:
        (mnt / "doc.txt").write_text("second draft, longer")
        os.unlink(mnt / "dir" / "inner.txt")
    with mounted(home, f"p@{first}", tmp_path / "old") as old:
        assert (old / "doc.txt").read_text() == "first draft"
        assert (old / "dir" / "inner.txt").read_text() == "inner v1"
        with pytest.raises(OSError) as e:
            (old / "doc.txt").write_text("no")
        assert e.value.errno == errno.EROFS
        with pytest.raises(OSError) as e:
            (old / "new").mkdir()
        assert e.value.errno == errno.EROFS
        with mounted(home, "p", tmp_path / "m") as mnt:  # a history mount beside the live one
            assert (mnt / "doc.txt").read_text() == "second draft, longer"
            run(home, "restore", "p", "doc.txt", "--version", str(first))
            assert (mnt / "doc.txt").read_text() == "first draft"
    run(home, "restore", "p", "dir/inner.txt", "--version", str(first))  # not mounted: a new version
    with mounted(home, "p", tmp_path / "m") as mnt:
        assert (mnt / "dir" / "inner.txt").read_text() == "inner v1"
        assert (mnt / "doc.txt").read_text() == "first draft"


def test_a_read_only_mount_shows_each_new_version_of_its_portal(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    (src / "doc.txt").write_text("v1")
    (src / "dir" / "old.txt").write_text("old")
    run(home, "put", "p", f"{src}/")
    first = log(home)[-1]["version"]
    with mounted(home, "p", tmp_path / "ro", "ro") as ro, mounted(home, f"p@{first}", tmp_path / "past") as past:
        assert (ro / "doc.txt").read_text() == "v1" and sorted(os.listdir(ro / "dir")) == ["old.txt"]
        held = open(ro / "doc.txt")  # open across the change: reads the new content after it
        assert held.read() == "v1"
        assert not (ro / "dir" / "new.txt").exists()  # the kernel may remember this absence
        assert (ro / "dir").stat().st_nlink == 2  # and these attributes, for longer than this test runs
        (src / "doc.txt").write_text("v2, longer than before")
        (src / "dir" / "old.txt").unlink()
        (src / "dir" / "new.txt").write_text("new")
        (src / "dir" / "sub").mkdir()
        run(home, "put", "p", f"{src}/")  # another process makes the next version
        assert shows(ro / "doc.txt", "v2, longer than before")
        assert shows(ro / "dir" / "new.txt", "new") and shows(ro / "dir" / "old.txt", None)
        assert sorted(os.listdir(ro / "dir")) == ["new.txt", "sub"] and (ro / "dir").stat().st_nlink == 3
        assert (ro / "doc.txt").stat().st_mtime_ns == (src / "doc.txt").stat().st_mtime_ns
        held.seek(0)
        assert held.read() == "v2, longer than before"
        held.close()
        assert (past / "doc.txt").read_text() == "v1"  # a mount of a past version stays there
        with pytest.raises(OSError) as e:
            (ro / "doc.txt").write_text("no")
        assert e.value.errno == errno.EROFS


def test_a_corrupted_chunk_is_eio_for_that_read_and_the_mount_stays_up(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "bad.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (src / "good.txt").write_text("fine")
    run(home, "put", "p", str(src) + "/")
    victim = largest(home)
    raw = bytearray(victim.read_bytes())
    raw[1000] ^= 0x10
    victim.write_bytes(bytes(raw))
    with mounted(home, "p", tmp_path / "m") as mnt:
        with pytest.raises(OSError) as e:
            (mnt / "bad.bin").read_bytes()
        assert e.value.errno == errno.EIO
        assert (mnt / "good.txt").read_text() == "fine"
        assert sorted(os.listdir(mnt)) == ["bad.bin", "good.txt"]
    mount_log = (home / "logs" / "mount.log").read_text()
    line = [ln for ln in mount_log.splitlines() if victim.name in ln]
    assert len(line) == 1 and "/bad.bin" in line[0]


@pytest.mark.parametrize("size", [24, 24 * 1024 * 1024])
def test_sigterm_commits_a_file_still_open_for_writing(tmp_path: Path, size: int) -> None:
    """The large one is sealed while written, and its staging file has given back its front to that sealer:
    the last checkpoint still has every byte."""
    home = new_home(tmp_path)
    mnt = tmp_path / "m"
    data = os.urandom(size)
    with mounted(home, "p", mnt):
        pid = mount_pid(home)
        fd = os.open(mnt / "open.bin", os.O_CREAT | os.O_WRONLY, 0o644)
        for offset in range(0, len(data), 1024 * 1024):
            os.write(fd, data[offset : offset + 1024 * 1024])
        if size > 1024 * 1024:
            wait_given_back(home, len(data))
        os.kill(pid, signal.SIGTERM)
        _wait_exit(pid)
        with pytest.raises(OSError):
            os.close(fd)
    force_unmount(mnt)
    got = tmp_path / "got"
    run(home, "get", "p", str(got), "--path", "open.bin")
    assert got.read_bytes() == data


def test_unmount_with_a_handle_in_flight(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    mnt = tmp_path / "m"
    mnt.mkdir()
    run(home, "mount", "p", str(mnt), program="portalfs")
    (mnt / "f.txt").write_text("data")
    pid = mount_pid(home)
    handle = open(mnt / "f.txt", "rb")
    env = {**os.environ, "PORTAL_HOME": str(home)}
    unmounting = subprocess.Popen(
        [sys.executable, "-m", "portalfs.cli.portalctl", "unmount", str(mnt)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert handle.read() == b"data"  # the open handle keeps working during a lazy unmount
    handle.close()
    assert unmounting.wait(timeout=60) == 0
    _wait_exit(pid)
    assert not is_mounted(mnt)


def test_dead_mount_reports_enotconn(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    mnt = tmp_path / "m"
    mnt.mkdir()
    run(home, "mount", "p", str(mnt), program="portalfs")
    try:
        pid = mount_pid(home)
        os.kill(pid, signal.SIGKILL)
        _wait_exit(pid)
        with pytest.raises(OSError) as e:
            os.listdir(mnt)
        assert e.value.errno == errno.ENOTCONN
    finally:
        force_unmount(mnt)


def test_fstab_helper_and_a_passphrase_protected_key(tmp_path: Path) -> None:
    home, pw = tmp_path / "home", tmp_path / "pw"
    pw.write_text("open sesame\n")
    run(home, "--passphrase-file", str(pw), "init")
    run(home, "--passphrase-file", str(pw), "portal", "create", "p")
    helper = Path(sys.executable).parent / "mount.portal"
    mnt = tmp_path / "m"
    mnt.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PORTAL_HOME", "PORTAL_PASSPHRASE")}
    denied = subprocess.run(
        [str(helper), "p", str(mnt), "-o", f"rw,home={home}"], env=env, capture_output=True, text=True
    )
    assert denied.returncode == 7 and "passphrase" in denied.stderr and not is_mounted(mnt)
    subprocess.run(
        [str(helper), "p", str(mnt), "-o", f"rw,noauto,home={home},passphrase_file={pw}"], env=env, check=True
    )
    try:
        (mnt / "through-fstab.txt").write_text("mounted by mount.portal")
    finally:
        run(home, "unmount", str(mnt))
    got = tmp_path / "got"
    run(home, "--passphrase-file", str(pw), "get", "p", str(got), "--path", "through-fstab.txt")
    assert got.read_text() == "mounted by mount.portal"
