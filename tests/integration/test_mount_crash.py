"""kill -9 of the mount process at random points, repeated.

A writer rewrites a few files, each time with content that names its own
(file, generation) and is reproducible from them, and reports each close. The
mount is killed after a random number of closes, while the writer is in the
middle of the next file. After a remount, every file must hold exactly the
content of its last reported close or of a later whole generation: never a
mix, never a torn prefix, never older than what was closed.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
from pathlib import Path

from .crash_writer import content
from .mountutil import force_unmount, mount_pid, mounted, needs_fuse, new_home, run

pytestmark = needs_fuse

FILES = 6
ROUNDS = 6
REPO = Path(__file__).resolve().parents[2]


def _wait_exit(pid: int) -> None:
    fd = os.pidfd_open(pid)
    try:
        assert select.select([fd], [], [], 60)[0], f"process {pid} did not exit"
    finally:
        os.close(fd)


def test_kill_minus_nine_loses_nothing_closed_and_tears_nothing(tmp_path: Path) -> None:
    home = new_home(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rng = random.Random(1234)
    closed: dict[int, int] = {}
    generation = 0
    with mounted(home, "p", mnt):  # every file has a second name: a rewrite through one is seen through both
        for i in range(FILES):
            (mnt / f"f{i}").write_bytes(content(i, 0))
            os.link(mnt / f"f{i}", mnt / f"link{i}")
    for round_ in range(ROUNDS):
        run(home, "mount", "p", str(mnt), program="portalfs")
        try:
            pid = mount_pid(home)
            kill_after = rng.randint(1, 25)
            # Odd rounds: the writer stops half-way through a file, and a commit runs
            # (fsync of the root directory, the periodic commit's rule) before the kill.
            pause_at = generation + kill_after + 1 if round_ % 2 else -1
            writer = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.crash_writer"]
                + [str(mnt), str(round_), str(generation), str(pause_at), str(FILES)],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            assert writer.stdout is not None and writer.stdin is not None
            for _ in range(kill_after):
                i, k = map(int, writer.stdout.readline().split())
                closed[i] = k
            if pause_at > 0:
                assert writer.stdout.readline().strip() == "paused"
                fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
                os.fsync(fd)
                os.close(fd)
            os.kill(pid, signal.SIGKILL)
            _wait_exit(pid)
            writer.stdin.close()
            for line in writer.stdout:  # closes that completed before the kill landed
                i, k = map(int, line.split())
                closed[i] = k
            assert writer.wait(timeout=60) is not None
            generation = max(closed.values()) + 1000
        finally:
            force_unmount(mnt)
        with mounted(home, "p", mnt):
            for i, k in closed.items():
                data = (mnt / f"f{i}").read_bytes()
                header = data.split(b"\n", 1)[0].decode()
                file_index, file_gen = map(int, header.split(":"))
                assert file_index == i and file_gen >= k, (i, k, header)
                assert data == content(i, file_gen), f"f{i} holds a torn or mixed generation {file_gen}"
                closed[i] = file_gen
                assert os.stat(mnt / f"link{i}").st_ino == os.stat(mnt / f"f{i}").st_ino  # still one file
                assert (mnt / f"link{i}").read_bytes() == data
        run(home, "check", "p")
