"""What `put` holds in memory does not grow with the file count (docs/design.md, section 9, "Memory").

bench/memory measures 200,000 files and a 20 GiB file; this is the same bound, small enough for the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .test_cli import ok

FILES = 20_000
PEAK_MB = 120  # 71 MB here; 159 when every file waited, pending, until the end


def test_put_of_many_small_files_holds_little(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(FILES):
        folder = src / ("long" if i < FILES // 4 else f"d{i // 1000:02d}")  # a long directory, and many
        if not folder.exists():
            folder.mkdir(parents=True)
        (folder / f"f{i:06d}.txt").write_bytes(b"small file %d\n" % i)
    home = tmp_path / "home"
    ok(home, "init", "--no-passphrase")
    ok(home, "portal", "create", "many")
    env = {**{k: v for k, v in os.environ.items() if k != "PORTAL_PASSPHRASE"}, "PORTAL_HOME": str(home)}
    put = subprocess.Popen([sys.executable, "-m", "portalfs.cli.portalctl", "put", "many", f"{src}/", "--json"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    _, status, usage = os.wait4(put.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, put.stderr.read() if put.stderr else ""
    assert usage.ru_maxrss / 1024 < PEAK_MB, f"put of {FILES} files peaked at {usage.ru_maxrss / 1024:.0f} MB"
    assert [v["files"] for v in json.loads(ok(home, "log", "many", "--json"))] == [FILES]
