"""The mount, for real: each rule of the filesystem, checked with plain os calls."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .mountutil import log, mounted, needs_fuse, new_home, run, wait_given_back

pytestmark = needs_fuse

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path: Path, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
    times = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    if _libc.utimensat(AT_FDCWD, os.fsencode(path), times, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@pytest.fixture(scope="module")
def fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    tmp = tmp_path_factory.mktemp("mount")
    home = new_home(tmp)
    with mounted(home, "p", tmp / "mnt") as mnt:
        yield home, mnt


@pytest.fixture
def d(fs: tuple[Path, Path], request: pytest.FixtureRequest) -> Path:
    """A fresh directory inside the module's mount."""
    path = fs[1] / request.node.name
    path.mkdir()
    return path


def test_create_write_read_append_exclusive_truncate(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"hello")
    assert f.read_bytes() == b"hello"
    with open(f, "ab") as out:
        out.write(b" world")
    assert f.read_bytes() == b"hello world"
    with pytest.raises(FileExistsError):
        os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    fd = os.open(f, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert f.read_bytes() == b"" and f.stat().st_size == 0
    assert f.stat().st_blksize == 1 << 20  # cp sizes its writes by it: one request of the mount's largest each


def test_write_past_eof_and_sparse_truncate_zero_fill(d: Path) -> None:
    f = d / "sparse"
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
    os.pwrite(fd, b"end", 1_000_000)
    os.close(fd)
    data = f.read_bytes()
    assert len(data) == 1_000_003 and data[:1_000_000] == bytes(1_000_000) and data.endswith(b"end")
    os.truncate(f, 3_000_000)
    assert f.stat().st_size == 3_000_000
    assert f.read_bytes()[1_000_003:] == bytes(2_000_000 - 3)
    os.truncate(f, 10)
    assert f.read_bytes() == bytes(10)
    with pytest.raises(OSError) as huge:
        os.truncate(f, 1 << 50)
    assert huge.value.errno == errno.EFBIG
    assert f.stat().st_size == 10


def test_large_file_round_trip_through_commits(d: Path) -> None:
    payload = os.urandom(9 * 1024 * 1024 + 123)
    f = d / "big.bin"
    f.write_bytes(payload)
    assert f.read_bytes() == payload
    with open(f, "r+b") as out:  # modify in the middle of a committed file
        out.seek(4_000_000)
        out.write(b"XYZ")
    expected = payload[:4_000_000] + b"XYZ" + payload[4_000_003:]
    assert f.read_bytes() == expected


def test_files_sealed_while_written_and_streams_that_are_abandoned(fs: tuple[Path, Path], d: Path) -> None:
    home, _ = fs
    piece = os.urandom(1024 * 1024)
    expected = {
        "sequential": piece * 20,
        "truncated": piece * 6,
        "rewritten": piece * 7,
    }
    fd = os.open(d / "sequential", os.O_CREAT | os.O_WRONLY, 0o644)
    for _ in range(20):
        os.write(fd, piece)
    os.close(fd)
    fd = os.open(d / "truncated", os.O_CREAT | os.O_WRONLY, 0o644)
    for _ in range(6):
        os.write(fd, piece)
    os.ftruncate(fd, 3 * len(piece))  # abandons the background sealing
    for _ in range(3):
        os.write(fd, piece)  # the offset stays at 6 MiB: bytes 3 to 6 MiB read as zeros
    os.close(fd)
    expected["truncated"] = piece * 3 + bytes(3 * len(piece)) + piece * 3
    fd = os.open(d / "rewritten", os.O_CREAT | os.O_WRONLY, 0o644)
    for _ in range(6):
        os.write(fd, piece)
    os.pwrite(fd, b"BACK", 100)  # not an append: abandons it too
    os.write(fd, piece)
    os.close(fd)
    expected["rewritten"] = piece[:100] + b"BACK" + piece[104:] + piece * 6
    for name, data in expected.items():
        assert (d / name).read_bytes() == data, name
    refused = run(home, "gc", check=False)  # a read-write mount may be storing objects no version names yet
    assert refused.returncode == 12 and "mounted read-write" in refused.stderr
    run(home, "gc", "--dry-run")


@pytest.mark.parametrize("then", ["close", "read", "write back", "truncate", "fsync", "fsyncs", "second writer"])
def test_a_file_sealed_while_written_is_whole_whatever_comes_after_its_staging_gave_back_its_front(
    fs: tuple[Path, Path], d: Path, then: str
) -> None:
    """Behind the background sealer the staging file gives its bytes back; a read, a write elsewhere, a
    truncate, an fsync or a second writer then finds every byte written."""
    home, _ = fs
    piece = os.urandom(1024 * 1024)
    data = bytearray(piece * 24)
    path = d / "big"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        for _ in range(24):
            os.write(fd, piece)
        wait_given_back(home, len(data))
        if then == "read":
            assert os.pread(fd, 4096, 5000) == data[5000:9096]
        elif then == "write back":
            os.pwrite(fd, b"BACK", 100)
            data[100:104] = b"BACK"
        elif then == "truncate":
            os.ftruncate(fd, 3 * len(piece))
            data[3 * len(piece) :] = bytes(21 * len(piece))
        elif then == "fsync":
            os.fsync(fd)
        elif then == "fsyncs":  # sealing goes on from the last cut after each
            for _ in range(3):
                os.fsync(fd)
                os.write(fd, piece)
                data += piece
            wait_given_back(home, len(data))
        elif then == "second writer":
            with open(path, "r+b") as other:
                other.seek(len(data) - 2)
                other.write(b"ZZ")
            data[-2:] = b"ZZ"
        if then != "close":
            os.write(fd, piece)  # the offset is still at the end of what was written
            data += piece
    finally:
        os.close(fd)
    assert path.read_bytes() == data


def test_directories_link_counts_and_parent_times(d: Path) -> None:
    before = d.stat()
    (d / "a").mkdir()
    (d / "b").mkdir()
    (d / "file").write_text("x")
    after = d.stat()
    assert after.st_nlink == 4
    assert after.st_mtime_ns > before.st_mtime_ns and after.st_ctime_ns > before.st_ctime_ns
    with pytest.raises(OSError) as e:
        os.rmdir(d)
    assert e.value.errno == errno.ENOTEMPTY
    os.rmdir(d / "a")
    assert d.stat().st_nlink == 3
    mtime = d.stat().st_mtime_ns
    os.unlink(d / "file")
    assert d.stat().st_mtime_ns > mtime
    with pytest.raises(IsADirectoryError):
        os.unlink(d / "b")
    with pytest.raises(NotADirectoryError):
        (d / "plain").write_text("x")
        os.rmdir(d / "plain")


def test_ctime_changes_on_chmod_chown_rename_and_link_count(d: Path) -> None:
    f = d / "f"
    f.write_text("x")
    c0 = f.stat().st_ctime_ns
    os.chmod(f, 0o600)
    c1 = f.stat().st_ctime_ns
    assert c1 > c0 and stat.S_IMODE(f.stat().st_mode) == 0o600
    os.chown(f, 1234, 5678)
    assert (f.stat().st_uid, f.stat().st_gid) == (1234, 5678)
    assert f.stat().st_ctime_ns > c1
    c2 = f.stat().st_ctime_ns
    os.rename(f, d / "g")
    c3 = (d / "g").stat().st_ctime_ns
    assert c3 > c2
    os.link(d / "g", d / "h")
    assert (d / "g").stat().st_ctime_ns > c3 and (d / "g").stat().st_nlink == 2


def test_utimens_now_and_omit(d: Path) -> None:
    f = d / "f"
    f.write_text("x")
    os.utime(f, ns=(1_000_000_000_000_000_000, 1_500_000_000_000_000_000))
    assert f.stat().st_mtime_ns == 1_500_000_000_000_000_000
    utimensat(f, (0, UTIME_OMIT), (0, UTIME_NOW))
    st = f.stat()
    assert st.st_mtime_ns > 1_700_000_000_000_000_000
    assert st.st_atime_ns == 1_000_000_000_000_000_000
    utimensat(f, (7, 0), (0, UTIME_OMIT))
    assert f.stat().st_atime_ns == 7_000_000_000 and f.stat().st_mtime_ns == st.st_mtime_ns


def test_rename_noreplace_exchange_and_into_own_subtree(d: Path) -> None:
    (d / "a").write_text("A")
    (d / "b").write_text("B")
    with pytest.raises(FileExistsError):
        renameat2(d / "a", d / "b", RENAME_NOREPLACE)
    renameat2(d / "a", d / "b", RENAME_EXCHANGE)
    assert (d / "a").read_text() == "B" and (d / "b").read_text() == "A"
    renameat2(d / "a", d / "c", RENAME_NOREPLACE)
    assert not (d / "a").exists() and (d / "c").read_text() == "B"
    os.rename(d / "c", d / "b")  # replaces
    assert (d / "b").read_text() == "B"
    (d / "dir" / "sub").mkdir(parents=True)
    with pytest.raises(OSError) as e:
        os.rename(d / "dir", d / "dir" / "sub" / "x")
    assert e.value.errno == errno.EINVAL


def test_symlinks_xattrs_statfs_and_long_names(d: Path) -> None:
    os.symlink("target/path", d / "link")
    assert os.readlink(d / "link") == "target/path"
    assert stat.S_ISLNK((d / "link").lstat().st_mode)
    f = d / "f"
    f.write_text("x")
    os.setxattr(f, "user.color", b"blue")
    os.setxattr(f, "user.size", b"L")
    assert sorted(os.listxattr(f)) == ["user.color", "user.size"]
    assert os.getxattr(f, "user.color") == b"blue"
    os.removexattr(f, "user.size")
    with pytest.raises(OSError) as e:
        os.getxattr(f, "user.size")
    assert e.value.errno == errno.ENODATA
    assert os.statvfs(d).f_namemax == 255
    with pytest.raises(OSError) as e:
        (d / ("n" * 256)).write_text("x")
    assert e.value.errno == errno.ENAMETOOLONG
    (d / ("n" * 255)).write_text("ok")


def test_unlinked_file_stays_usable_through_open_handles(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"still here")
    fd = os.open(f, os.O_RDWR)
    os.unlink(f)
    assert not f.exists()
    assert os.pread(fd, 100, 0) == b"still here"
    os.pwrite(fd, b"STILL", 0)
    assert os.pread(fd, 100, 0) == b"STILL here"
    assert os.fstat(fd).st_nlink == 0
    os.close(fd)


def test_readdir_offsets_are_stable_under_concurrent_changes(d: Path) -> None:
    names = {f"f{i:03}" for i in range(300)}
    for name in names:
        (d / name).write_bytes(b"")
    seen = []
    with os.scandir(d) as it:
        for i, entry in enumerate(it):
            seen.append(entry.name)
            if i == 10:
                for j in range(50):
                    (d / f"new{j}").write_bytes(b"")
                os.unlink(d / "f299")
    assert len(seen) == len(set(seen))
    assert names - {"f299"} <= set(seen)


def test_many_small_writes_are_not_many_versions(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    with mounted(home, "p", tmp_path / "m") as mnt:
        with open(mnt / "many.txt", "w") as out:
            for i in range(300):
                out.write(f"line {i}\n")
                out.flush()
        for i in range(50):
            (mnt / f"small{i}").write_text(str(i))
    versions = log(home)
    assert 1 <= len(versions) <= 10, len(versions)  # checkpoints (every 2 s), not one per write or file (350)
    got = tmp_path / "got.txt"
    run(home, "get", "p", str(got), "--path", "many.txt")
    assert got.read_text() == "".join(f"line {i}\n" for i in range(300))


def test_a_directory_past_what_one_node_holds_is_stored_in_parts(tmp_path: Path) -> None:
    """300 entries of a 60 KiB extended attribute each (about 18 MB, past the 16 MiB of one node): the
    checkpoints store the directory in parts, and a change to it commits like any other."""
    home = new_home(tmp_path)
    value = os.urandom(60 * 1024)
    with mounted(home, "p", tmp_path / "m") as mnt:
        (mnt / "big").mkdir()
        for i in range(300):
            path = mnt / "big" / f"f{i:03d}"
            path.write_text(str(i))
            os.setxattr(path, "user.pad", value)
    assert "commit failed" not in (home / "logs" / "mount.log").read_text()
    got = tmp_path / "got"
    run(home, "get", "p", str(got))
    assert sorted(os.listdir(got / "big")) == [f"f{i:03d}" for i in range(300)]
    assert (got / "big" / "f123").read_text() == "123"
    with mounted(home, "p", tmp_path / "again") as again:
        assert os.getxattr(again / "big" / "f250", "user.pad") == value
        (again / "big" / "f007").unlink()
        (again / "big" / "new").write_text("made in a directory of parts")
    with mounted(home, "p", tmp_path / "third") as third:
        names = os.listdir(third / "big")
        assert len(names) == 300 and "f007" not in names and (third / "big" / "new").read_text().startswith("made")
        assert os.getxattr(third / "big" / "f299", "user.pad") == value
    assert "verified" in run(home, "check", "p").stdout


def _pad(path: Path | int, value: bytes, count: int) -> None:
    for i in range(count):
        os.setxattr(path, f"user.pad{i:03d}", value)


def test_an_entry_too_large_for_a_node_is_not_committed_and_the_mount_serves_on(tmp_path: Path) -> None:
    """A file whose extended attributes take more than one node holds (16 MiB, here 300 of 60 KiB): the
    checkpoint fails with a logged error naming its directory, the mount goes on serving every file (each
    close is durable in the journal), and once the entry is small enough again the next checkpoint commits
    it all."""
    home = new_home(tmp_path)
    value = os.urandom(60 * 1024)
    with mounted(home, "p", tmp_path / "m") as mnt:
        (mnt / "big").mkdir()
        for i in range(20):
            (mnt / "big" / f"f{i:03d}").write_text(str(i))
        _pad(mnt / "big" / "f007", value, 300)
        log_file = home / "logs" / "mount.log"
        deadline = time.monotonic() + 60
        while "the directory 'big' cannot be stored: its entry 'f007' takes" not in log_file.read_text():
            assert time.monotonic() < deadline, log_file.read_text()[-2000:]
            time.sleep(0.2)  # the checkpoint runs on the mount's own schedule
        assert len(os.listdir(mnt / "big")) == 20
        assert (mnt / "big" / "f012").read_text() == "12" and os.getxattr(mnt / "big" / "f007", "user.pad123") == value
        (mnt / "more.txt").write_text("written after the failure")
        os.setxattr(mnt / "big" / "f019", "user.late", b"set after the failure")
        for i in range(200):
            os.removexattr(mnt / "big" / "f007", f"user.pad{i:03d}")
    got = tmp_path / "got"
    run(home, "get", "p", str(got))
    assert len(os.listdir(got / "big")) == 20 and (got / "more.txt").read_text() == "written after the failure"
    assert (got / "big" / "f012").read_text() == "12"
    with mounted(home, "p", tmp_path / "again") as again:  # the version holds the attributes left
        assert os.getxattr(again / "big" / "f007", "user.pad250") == value
        assert len(os.listxattr(again / "big" / "f007")) == 100
        assert os.getxattr(again / "big" / "f019", "user.late") == b"set after the failure"
    # Too large again when unmounted, in a file whose attributes were set before it was closed (so the
    # journal holds them, and its replay cannot make a version): unmount says the last checkpoint failed,
    # the next mount serves the journal's files all the same, and commits them once the entry shrinks.
    third = tmp_path / "third"
    third.mkdir()
    run(home, "mount", "p", str(third), program="portalfs")
    try:
        fd = os.open(third / "big" / "g", os.O_CREAT | os.O_WRONLY, 0o644)
        _pad(fd, value, 300)
        os.write(fd, b"journalled")
        os.close(fd)
        (third / "big" / "h").write_text("beside it")
    finally:
        result = run(home, "unmount", str(third), check=False)
    assert result.returncode == 13, result.stderr
    assert "last checkpoint failed: the directory 'big' cannot be stored: its entry 'g' takes" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with mounted(home, "p", tmp_path / "fourth") as fourth:
        assert len(os.listdir(fourth / "big")) == 22
        assert (fourth / "big" / "g").read_bytes() == b"journalled"
        assert (fourth / "big" / "h").read_text() == "beside it"
        assert os.getxattr(fourth / "big" / "g", "user.pad001") == value
        for i in range(300):
            os.removexattr(fourth / "big" / "g", f"user.pad{i:03d}")
    with mounted(home, "p", tmp_path / "fifth") as fifth:
        assert len(os.listdir(fifth / "big")) == 22 and (fifth / "big" / "g").read_bytes() == b"journalled"
        assert not os.listxattr(fifth / "big" / "g")


def test_tools_cp_tar_rsync_git(fs: tuple[Path, Path], d: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg" / "inner").mkdir(parents=True)
    for i in range(20):
        (src / "pkg" / f"m{i}.py").write_text(f"value = {i}\n" * 100)
    (src / "pkg" / "inner" / "blob.bin").write_bytes(os.urandom(2_500_000))
    os.symlink("m1.py", src / "pkg" / "alias.py")
    subprocess.run(["cp", "-a", str(src / "pkg"), str(d / "cp")], check=True)
    subprocess.run(["diff", "-r", "--no-dereference", str(src / "pkg"), str(d / "cp")], check=True)
    tar = tmp_path / "x.tar"
    subprocess.run(["tar", "-C", str(d), "-cf", str(tar), "cp"], check=True)
    (d / "untar").mkdir()
    subprocess.run(["tar", "-C", str(d / "untar"), "-xf", str(tar)], check=True)
    subprocess.run(["diff", "-r", "--no-dereference", str(src / "pkg"), str(d / "untar" / "cp")], check=True)
    subprocess.run(["rsync", "-a", str(src / "pkg") + "/", str(d / "rsync")], check=True)
    out = subprocess.run(
        ["rsync", "-ani", str(src / "pkg") + "/", str(d / "rsync")], check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == ""  # nothing left to transfer: contents and metadata match
    repo = d / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(["cp", "-r", str(src / "pkg"), str(repo / "pkg")], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "first"], check=True)
    status = subprocess.run(git + ["status", "--porcelain"], check=True, capture_output=True, text=True)
    assert status.stdout == ""
    (repo / "pkg" / "m3.py").write_text("changed\n")
    status = subprocess.run(git + ["status", "--porcelain"], check=True, capture_output=True, text=True)
    assert status.stdout.strip() == "M pkg/m3.py"
    subprocess.run(git + ["fsck", "--no-progress"], check=True, capture_output=True)


def test_fifos_sockets_device_nodes_and_mknod_files_work_and_outlive_the_mount(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    with mounted(home, "p", tmp_path / "mnt") as mnt:
        assert os.statvfs(mnt).f_blocks > 0  # a portal that never stored an object answers statfs
        os.mkfifo(mnt / "pipe", 0o640)
        reader = os.open(mnt / "pipe", os.O_RDONLY | os.O_NONBLOCK)  # the kernel pipes it: FUSE keeps the node
        writer = os.open(mnt / "pipe", os.O_WRONLY)
        os.write(writer, b"through the fifo")
        assert os.read(reader, 100) == b"through the fifo"
        os.close(writer)
        os.close(reader)

        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(os.fspath(mnt / "app.sock"))  # an editor's or a daemon's socket in the working tree
        server.listen(1)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(os.fspath(mnt / "app.sock"))
        conn, _ = server.accept()
        client.sendall(b"hello")
        assert conn.recv(5) == b"hello"
        for s in (conn, client, server):
            s.close()

        os.mknod(mnt / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        assert os.lstat(mnt / "null").st_rdev == os.makedev(1, 3)
        with pytest.raises(PermissionError):  # kept as a node; the mount is nodev, so the kernel opens no device
            open(mnt / "null", "rb")
        os.mknod(mnt / "empty", stat.S_IFREG | 0o600)
        assert (mnt / "empty").read_bytes() == b"" and stat.S_ISREG((mnt / "empty").stat().st_mode)
        with pytest.raises(OSError) as e:
            os.mknod(mnt / "pipe", stat.S_IFIFO | 0o600)
        assert e.value.errno == errno.EEXIST
    with mounted(home, "p", tmp_path / "mnt") as mnt:  # committed: they come back as nodes
        st = os.lstat(mnt / "pipe")
        assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640 & ~_umask()
        assert stat.S_ISSOCK(os.lstat(mnt / "app.sock").st_mode)
        null = os.lstat(mnt / "null")
        assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
        (mnt / "pipe").unlink()
    out = tmp_path / "out"
    run(home, "get", "p", str(out))  # and a restore makes them again
    assert not (out / "pipe").exists() and stat.S_ISSOCK(os.lstat(out / "app.sock").st_mode)
    assert os.lstat(out / "null").st_rdev == os.makedev(1, 3)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_hard_links_are_one_file_under_several_names_and_outlive_the_mount(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    run(home, "portal", "create", "q")
    with mounted(home, "p", tmp_path / "mnt") as mnt:
        (mnt / "dir").mkdir()
        (mnt / "a.txt").write_text("one\n")
        os.link(mnt / "a.txt", mnt / "dir" / "b.txt")
        assert (
            os.stat(mnt / "a.txt").st_nlink == 2
            and os.stat(mnt / "a.txt").st_ino == os.stat(mnt / "dir" / "b.txt").st_ino
        )
        with open(mnt / "dir" / "b.txt", "a") as f:  # a change through one name is seen through all
            f.write("two\n")
        assert (mnt / "a.txt").read_text() == "one\ntwo\n"
        os.chmod(mnt / "a.txt", 0o600)
        assert stat.S_IMODE(os.stat(mnt / "dir" / "b.txt").st_mode) == 0o600
        os.link(mnt / "a.txt", mnt / "c.txt")
        (mnt / "other.txt").write_text("other\n")
        os.rename(mnt / "other.txt", mnt / "c.txt")  # rename over a link: the others keep the file
        assert os.stat(mnt / "a.txt").st_nlink == 2 and (mnt / "c.txt").read_text() == "other\n"
        os.rename(mnt / "a.txt", mnt / "dir" / "b.txt")  # two names of one file: nothing happens
        assert (mnt / "a.txt").exists()
        with pytest.raises(OSError) as e:
            os.link(mnt / "dir", mnt / "dir2")
        assert e.value.errno == errno.EPERM
        (mnt / "tree" / "sub").mkdir(parents=True)
        (mnt / "tree" / "sub" / "f").write_bytes(os.urandom(300_000))
        subprocess.run(["cp", "-al", str(mnt / "tree"), str(mnt / "tree-copy")], check=True)
        assert os.stat(mnt / "tree-copy" / "sub" / "f").st_nlink == 2
        subprocess.run(["git", "init", "-q", str(mnt / "repo")], check=True)
        subprocess.run(["git", "-C", str(mnt / "repo"), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                        "--allow-empty", "-m", "first"], check=True)  # fmt: skip
        subprocess.run(["git", "clone", "-q", "--local", str(mnt / "repo"), str(mnt / "clone")], check=True)
        (mnt / "gone.txt").write_text("short-lived\n")
        os.link(mnt / "gone.txt", mnt / "kept.txt")
        os.unlink(mnt / "gone.txt")  # unlink of one name leaves the other
        assert (mnt / "kept.txt").read_text() == "short-lived\n" and os.stat(mnt / "kept.txt").st_nlink == 1
        with mounted(home, "q", tmp_path / "mnt-q") as other:
            with pytest.raises(OSError) as e:
                os.link(mnt / "a.txt", other / "a.txt")
            assert e.value.errno == errno.EXDEV  # a hard link across portals
    with mounted(home, "p", tmp_path / "mnt") as mnt:  # committed: still one file
        a, b = os.stat(mnt / "a.txt"), os.stat(mnt / "dir" / "b.txt")
        assert a.st_ino == b.st_ino and a.st_nlink == 2 and stat.S_IMODE(a.st_mode) == 0o600
        (mnt / "dir" / "b.txt").write_text("after the remount\n")
        assert (mnt / "a.txt").read_text() == "after the remount\n"
        assert os.stat(mnt / "tree-copy" / "sub" / "f").st_nlink == 2
        assert subprocess.run(["git", "-C", str(mnt / "clone"), "log", "--oneline"], capture_output=True,
                              text=True, check=True).stdout.strip().endswith("first")  # fmt: skip
    out = tmp_path / "out"
    run(home, "get", "p", str(out))  # a restore makes the names hard links again
    assert os.stat(out / "a.txt").st_ino == os.stat(out / "dir" / "b.txt").st_ino
    assert (out / "a.txt").read_text() == "after the remount\n"
