"""The same random operations on the mount and on a tmpfs directory must give the same results.

After every step the two trees are compared: names, types, permissions,
sizes, contents, link targets, device numbers, extended attributes and
directory link counts; and every operation must succeed on both or fail on
both with the same errno. Both are mounted nodev (a FUSE mount is), and files
are opened with O_NONBLOCK, so that opening a FIFO never waits for a reader.
"""

from __future__ import annotations

import os
import random
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .mountutil import mounted, needs_fuse, new_home

pytestmark = needs_fuse

NAMES = ["a", "b", "c", "dd"]
STEPS = 150
SEEDS = [int(s) for s in os.environ.get("PORTAL_RANDOM_SEEDS", "1,2,3").split(",")]


@pytest.fixture
def reference(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "tmpfs"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,nodev", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def _random_path(rng: random.Random) -> str:
    return "/".join(rng.choice(NAMES) for _ in range(rng.randint(1, 3)))


def _op(rng: random.Random) -> tuple[str, Callable[[Path], object]]:
    """One random operation, as a description and a function of the tree's root."""
    path = _random_path(rng)
    kind = rng.choice(
        [
            "write",
            "write",
            "pwrite",
            "truncate",
            "rename",
            "unlink",
            "mkdir",
            "mkdir",
            "rmdir",
            "chmod",
            "symlink",
            "xattr",
            "mkfifo",
            "mknod",
            "link",
            "link",
        ]
    )
    if kind == "write":
        data = rng.randbytes(rng.choice([0, 1, 100, 5000, 300_000]))

        def write(root: Path) -> object:
            fd = os.open(root / path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK, 0o644)
            try:
                return os.write(fd, data)
            finally:
                os.close(fd)

        return f"write {path} {len(data)}", write
    if kind == "pwrite":
        offset, data = rng.randint(0, 400_000), rng.randbytes(rng.randint(1, 70_000))

        def pwrite(root: Path) -> object:
            fd = os.open(root / path, os.O_WRONLY | os.O_NONBLOCK)
            try:
                return os.pwrite(fd, data, offset)
            finally:
                os.close(fd)

        return f"pwrite {path} @{offset} {len(data)}", pwrite
    if kind == "truncate":
        size = rng.choice([0, 10, 70_000, 500_000])
        return f"truncate {path} {size}", lambda root: os.truncate(root / path, size)
    if kind == "rename":
        other = _random_path(rng)
        return f"rename {path} {other}", lambda root: os.rename(root / path, root / other)
    if kind == "unlink":
        return f"unlink {path}", lambda root: os.unlink(root / path)
    if kind == "mkdir":
        return f"mkdir {path}", lambda root: os.mkdir(root / path, 0o755)
    if kind == "rmdir":
        return f"rmdir {path}", lambda root: os.rmdir(root / path)
    if kind == "chmod":
        mode = rng.choice([0o600, 0o644, 0o755, 0o700, 0o4755])
        return f"chmod {path} {mode:o}", lambda root: os.chmod(root / path, mode)
    if kind == "symlink":
        target = rng.choice(["a", "../b", "/nowhere", "dd/c"])
        return f"symlink {path} -> {target}", lambda root: os.symlink(target, root / path)
    if kind == "link":
        other = _random_path(rng)
        return f"link {path} {other}", lambda root: os.link(root / path, root / other, follow_symlinks=False)
    if kind == "mkfifo":
        return f"mkfifo {path}", lambda root: os.mkfifo(root / path, 0o640)
    if kind == "mknod":
        mode, rdev = rng.choice(
            [(stat.S_IFREG | 0o600, 0), (stat.S_IFSOCK | 0o755, 0), (stat.S_IFCHR | 0o666, os.makedev(1, 3)),
             (stat.S_IFBLK | 0o660, os.makedev(7, 0)), (stat.S_IFIFO | 0o600, 0)]
        )  # fmt: skip
        return f"mknod {path} {mode:o} {rdev}", lambda root: os.mknod(root / path, mode, rdev)
    name, value = f"user.{rng.choice(['x', 'y'])}", rng.randbytes(rng.randint(0, 40))
    return f"setxattr {path} {name}", lambda root: os.setxattr(root / path, name, value, follow_symlinks=False)


def _outcome(func: Callable[[Path], object], root: Path) -> object:
    try:
        return ("ok", func(root))
    except OSError as exc:
        return ("error", exc.errno)


def _tree(root: Path) -> list[tuple]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            xattrs = {n: os.getxattr(path, n, follow_symlinks=False) for n in os.listxattr(path, follow_symlinks=False)}
            if stat.S_ISLNK(st.st_mode):
                out.append((rel, "link", os.readlink(path), xattrs))
            elif stat.S_ISDIR(st.st_mode):
                out.append((rel, "dir", stat.S_IMODE(st.st_mode), st.st_nlink, xattrs))
            elif not stat.S_ISREG(st.st_mode):  # a FIFO, a socket, a device node: never opened
                out.append((rel, "special", stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_rdev, st.st_nlink,
                            xattrs))  # fmt: skip
            else:
                out.append((rel, "file", stat.S_IMODE(st.st_mode), st.st_size, st.st_nlink, path.read_bytes(), xattrs))
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_random_operations_match_tmpfs(tmp_path: Path, reference: Path, seed: int) -> None:
    home = new_home(tmp_path)
    rng = random.Random(seed)
    history: list[str] = []
    with mounted(home, "p", tmp_path / "mnt") as mnt:
        for _ in range(STEPS):
            description, func = _op(rng)
            history.append(description)
            expected = _outcome(func, reference)
            got = _outcome(func, mnt)
            assert got == expected, f"after {history}: {description}"
            assert _tree(mnt) == _tree(reference), f"after {history}"
    with mounted(home, "p", tmp_path / "mnt") as mnt:  # what was committed is what was seen
        assert _tree(mnt) == _tree(reference)
