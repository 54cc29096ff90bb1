"""The writer of the kill -9 test: rewrites files and reports each close.

    python -m tests.integration.crash_writer ROOT SEED FIRST_GENERATION PAUSE_AT FILES

Each file's content names its own (file, generation) and is reproducible from
them (``content``). At generation PAUSE_AT it stops half-way through the file,
prints "paused" and waits for a line on stdin.
"""

from __future__ import annotations

import os
import random
import sys


def content(i: int, k: int) -> bytes:
    rng = random.Random(i * 1_000_003 + k)
    return f"{i}:{k}\n".encode() + rng.randbytes(rng.randint(0, 1_500_000))


def main() -> None:
    root, seed, k, pause_at, files = sys.argv[1], *map(int, sys.argv[2:6])
    rng = random.Random(seed)
    for _ in range(100_000):
        i, k = rng.randrange(files), k + 1
        data = content(i, k)
        try:
            fd = os.open(f"{root}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            for start in range(0, len(data), 65536):
                os.write(fd, data[start : start + 65536])
                if k == pause_at and start >= len(data) // 2:
                    print("paused", flush=True)
                    sys.stdin.readline()  # until the test has committed and killed the mount
                    pause_at = -1
            os.close(fd)
        except OSError:
            break
        print(i, k, flush=True)


if __name__ == "__main__":
    main()
