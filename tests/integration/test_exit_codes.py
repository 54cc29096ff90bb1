"""docs/design.md, section 10: every exit code in the table is what the programs return, each caused for real."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from portalfs.errors import PortalError

from .fabricutil import FabricLab, fabric
from .mountutil import small_disk
from .storeutil import flip, held
from .test_cli import fails, ok, portalctl
from .test_fabric import _device

DESIGN = Path(__file__).resolve().parents[2] / "docs" / "design.md"


def _table() -> dict[int, str]:
    """Exit code -> error name, from the table in section 10."""
    text = DESIGN.read_text()
    section = text[text.index("## 10. Exit codes") : text.index("## 11.")]
    return {int(m[1]): m[2] for m in re.finditer(r"^\| (\d+) \| ([^|]+?) \|", section, re.M)}


def test_the_table_names_every_error_class_with_its_code() -> None:
    table = _table()
    classes = [PortalError, *_subclasses(PortalError)]
    for cls in classes:
        assert cls.exit_code in table, cls
        names = table[cls.exit_code].split(" / ")
        assert cls.__name__ in names or any(c.__name__ in names for c in cls.__mro__ if c is not cls), cls
    assert set(table) - {cls.exit_code for cls in classes} == {0, 130}


def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FabricLab]:
    with fabric(tmp_path_factory.mktemp("fabric"), edges=2) as lab:
        yield lab


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    ok(home, "init", "--no-passphrase")
    ok(home, "portal", "create", "docs")
    (tmp_path / "f.txt").write_text("hello\n")
    ok(home, "put", "docs", str(tmp_path / "f.txt"))
    return home


def _an_object(home: Path) -> str:
    """The id of an object the device holds (this home's are all small: rows of the store's index)."""
    return held(home)[0]


def _success(tmp_path: Path, lab: FabricLab) -> None:
    assert portalctl(_home(tmp_path), "whoami").returncode == 0


def _other(tmp_path: Path, lab: FabricLab) -> None:
    home = _home(tmp_path)
    path = home / "portald.sock"  # something that is not portald answers on its socket

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"220 hello from something else\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        fails(home, 1, "status", match="is not portald's")
    finally:
        thread.join(timeout=10)
        server.close()


def _usage(tmp_path: Path, lab: FabricLab) -> None:
    fails(_home(tmp_path), 2, "portal", "create", "bad/name", match="invalid portal name")


def _not_found(tmp_path: Path, lab: FabricLab) -> None:
    fails(_home(tmp_path), 3, "log", "nope", match="no portal named")


def _exists(tmp_path: Path, lab: FabricLab) -> None:
    fails(_home(tmp_path), 4, "portal", "create", "docs", match="already exists")


def _not_initialized(tmp_path: Path, lab: FabricLab) -> None:
    fails(tmp_path / "empty", 5, "whoami", match="no identity")


def _bad_phrase(tmp_path: Path, lab: FabricLab) -> None:
    fails(tmp_path / "r", 6, "recover", "--no-passphrase", input="abandon " * 23 + "zoo", match="recovery phrase")


def _bad_passphrase(tmp_path: Path, lab: FabricLab) -> None:
    home = tmp_path / "locked"
    ok(home, "init", env={"PORTAL_PASSPHRASE": "right"})
    fails(home, 7, "portal", "create", "x", env={"PORTAL_PASSPHRASE": "wrong"}, match="passphrase")


def _integrity(tmp_path: Path, lab: FabricLab) -> None:
    home = _home(tmp_path)
    victim = _an_object(home)
    flip(home, victim)
    fails(home, 8, "check", "docs", match=victim)


def _missing(tmp_path: Path, lab: FabricLab) -> None:
    home = _home(tmp_path)
    victim = _an_object(home)
    with sqlite3.connect(home / "store" / "index.db") as db:
        db.execute("DELETE FROM small WHERE cid = ?", (bytes.fromhex(victim),))
        db.execute("DELETE FROM objects WHERE cid = ?", (bytes.fromhex(victim),))
    fails(home, 9, "check", "docs", match=victim)


def _storage(tmp_path: Path, lab: FabricLab) -> None:
    with small_disk(tmp_path / "small") as small:
        home = small / "home"
        ok(home, "init", "--no-passphrase")
        ok(home, "portal", "create", "docs")
        (tmp_path / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
        fails(home, 10, "put", "docs", str(tmp_path / "big.bin"), match="no space left")


def _source(tmp_path: Path, lab: FabricLab) -> None:
    fails(_home(tmp_path), 11, "put", "docs", str(tmp_path / "absent"), match="no such file")


def _busy(tmp_path: Path, lab: FabricLab) -> None:
    home = _home(tmp_path)
    portal = json.loads(ok(home, "portal", "ls", "--json"))[0]["id"]
    with open(home / "locks" / f"{portal}.lock", "a+b") as lock:  # what a read-write mount holds
        fcntl.flock(lock, fcntl.LOCK_EX)
        fails(home, 12, "put", "docs", str(tmp_path / "f.txt"), match="being written elsewhere")


def _mount(tmp_path: Path, lab: FabricLab) -> None:
    (tmp_path / "mnt").mkdir()
    fails(_home(tmp_path), 13, "mount", "docs@99", str(tmp_path / "mnt"), match="no version 99")


def _unreachable(tmp_path: Path, lab: FabricLab) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fails(_home(tmp_path), 14, "hub", "add", f"http://127.0.0.1:{port}", match="127.0.0.1")


def _refused(tmp_path: Path, lab: FabricLab) -> None:
    a, words = _device(tmp_path, "a", lab)
    b, _ = _device(tmp_path, "b", lab, words)
    ok(a, "device", "revoke", json.loads(ok(b, "whoami", "--json"))["device"], input=words)
    ok(b, "portal", "create", "mine")  # on this device alone: fine
    fails(b, 15, "sync", "mine", match="revoked")


def _conflict(tmp_path: Path, lab: FabricLab) -> None:
    a, _ = _device(tmp_path, "a", lab)
    ok(a, "portal", "create", "docs")
    (tmp_path / "f.txt").write_text("one\n")
    ok(a, "put", "docs", str(tmp_path / "f.txt"))
    ok(a, "sync")
    (tmp_path / "f.txt").write_text("two\n")
    ok(a, "put", "docs", str(tmp_path / "f.txt"))
    (tmp_path / "f.txt").write_text("three\n")
    ok(a, "put", "docs", str(tmp_path / "f.txt"))
    portal = json.loads(ok(a, "portal", "ls", "--json"))[0]["id"]
    with sqlite3.connect(a / "state.db") as db:  # as if v2 had been published to a hub restored from an older copy
        db.execute("UPDATE meta SET value = ? WHERE key = ?", (b"2", f"published:{portal}"))
    fails(a, 16, "sync", "docs", match="another device published first")


def _interrupted(tmp_path: Path, lab: FabricLab) -> None:
    home = tmp_path / "waiting"
    process = subprocess.Popen(
        [sys.executable, "-m", "portalfs.cli.portalctl", "recover", "--no-passphrase"],
        stdin=subprocess.PIPE,  # left open: recover waits for the words
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PORTAL_HOME": str(home)},
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 30
        while not (home / "state.db").exists() and process.poll() is None:  # open: it waits on stdin now
            assert time.monotonic() < deadline, "portalctl recover did not start"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
        assert process.stderr.read().strip() == "portalctl: interrupted"
    finally:
        if process.poll() is None:
            process.kill()
        assert process.stdin is not None
        process.stdin.close()


SCENARIOS: dict[int, Callable[[Path, FabricLab], None]] = {
    0: _success, 1: _other, 2: _usage, 3: _not_found, 4: _exists, 5: _not_initialized, 6: _bad_phrase,
    7: _bad_passphrase, 8: _integrity, 9: _missing, 10: _storage, 11: _source, 12: _busy, 13: _mount,
    14: _unreachable, 15: _refused, 16: _conflict, 130: _interrupted,
}  # fmt: skip


def test_every_code_in_the_table_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(_table())


@pytest.mark.parametrize("code", sorted(SCENARIOS))
def test_each_exit_code_is_returned_for_its_cause(code: int, tmp_path: Path, lab: FabricLab) -> None:
    SCENARIOS[code](tmp_path, lab)
