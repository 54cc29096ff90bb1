"""What `put` holds in memory does not grow with the file count (docs/design.md, section 9, "Memory").

bench/memory measures 200,000 files and a 20 GiB file; this is the same bound, small enough for the suite.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from .test_cli import ok

_REPORTING_PEAK = """
import atexit, re, runpy, sys
def report():
    status = open("/proc/self/status").read()
    print("peak", re.search(r"^VmHWM:\\s+(\\d+) kB", status, re.M).group(1), "kB", file=sys.stderr)
atexit.register(report)
sys.argv = ["portalctl"] + sys.argv[1:]
runpy.run_module("portalfs.cli.portalctl", run_name="__main__")
"""
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
    # The put's own high-water mark (VmHWM of its address space): a child's ru_maxrss would count the
    # test process too, whose memory it shares until it runs the command.
    put = subprocess.run([sys.executable, "-c", _REPORTING_PEAK, "put", "many", f"{src}/", "--json"],
                         env=env, capture_output=True, text=True)  # fmt: skip
    assert put.returncode == 0, put.stderr
    peak = int(re.findall(r"^peak (\d+) kB$", put.stderr, re.M)[-1]) / 1024
    assert peak < PEAK_MB, f"put of {FILES} files peaked at {peak:.0f} MB"
    assert [v["files"] for v in json.loads(ok(home, "log", "many", "--json"))] == [FILES]
