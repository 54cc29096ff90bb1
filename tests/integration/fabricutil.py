"""A fabric of real processes: one hub and several edges, each stopped by PID, on loopback or on a LAN."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .lan import Lan

START_TIMEOUT = 30.0


@dataclass
class Server:
    process: subprocess.Popen
    line: str
    data: Path

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class FabricLab:
    root: Path
    hub: Server | None = None
    edges: list[Server] = field(default_factory=list)

    @property
    def hub_url(self) -> str:
        assert self.hub is not None
        match = re.search(r"http://\S+?(?=/v1/)", self.hub.line)
        assert match, self.hub.line
        return match.group(0)

    def edge_key(self, i: int) -> str:
        return self.edges[i].line.rsplit(" ", 1)[1]

    def edge_address(self, i: int) -> str:
        return self.edges[i].line.split()[2]

    def edge_objects(self, i: int) -> list[str]:
        """The ids (hex) of the objects edge ``i`` stores: its files, and its rows (the small ones)."""
        return edge_held(self.edges[i].data)

    def edge_copy(self, i: int, cid: str) -> EdgeCopy:
        return EdgeCopy(self.edges[i].data / "store", cid)


def edge_held(data: Path) -> list[str]:
    """The ids (hex) of the objects the edge keeping its data in ``data`` stores."""
    store = data / "store"
    files = {p.name for p in (store / "objects").rglob("*") if p.is_file() and len(p.name) == 64}
    if not (store / "index.db").exists():
        return sorted(files)
    with closing(sqlite3.connect(store / "index.db")) as db:
        rows = {bytes(cid).hex() for (cid,) in db.execute("SELECT cid FROM small")}
    return sorted(files | rows)


class EdgeCopy:
    """One object as an edge stores it, its file or its row (docs/design.md, section 12), read and written
    in place as a Path is (a test damages it while the edge runs: SQLite's WAL lets it)."""

    def __init__(self, store: Path, cid: str) -> None:
        self.name = cid
        self._file = store / "objects" / cid[:2] / cid
        self._index = store / "index.db"

    def _row(self) -> bytes | None:
        with closing(sqlite3.connect(self._index, timeout=30)) as db:
            row = db.execute("SELECT data FROM small WHERE cid = ?", (bytes.fromhex(self.name),)).fetchone()
        return None if row is None else bytes(row[0])

    def exists(self) -> bool:
        return self._file.exists() or self._row() is not None

    def read_bytes(self) -> bytes:
        if self._file.exists():
            return self._file.read_bytes()
        row = self._row()
        if row is None:
            raise FileNotFoundError(f"no object {self.name} on the edge")
        return row

    def write_bytes(self, data: bytes) -> None:
        if self._file.exists():
            self._file.write_bytes(data)
            return
        with closing(sqlite3.connect(self._index, timeout=30)) as db, db:
            db.execute("UPDATE small SET data = ? WHERE cid = ?", (data, bytes.fromhex(self.name)))


def log_lines(server: Server, text: str) -> int:
    """How many lines of the server's log contain ``text``."""
    return sum(text in line for line in server.data.with_suffix(".log").read_text(errors="replace").splitlines())


def wait_for_log(server: Server, text: str, count: int = 1, timeout: float = 60.0) -> None:
    """Wait until ``count`` lines of the server's log contain ``text`` (polled, bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while log_lines(server, text) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} log lines with {text!r} did not come within {timeout:.0f} s")
        time.sleep(0.1)


def on_battery(supplies: Path, percent: int) -> Path:
    """A directory shaped as /sys/class/power_supply (for PORTAL_POWER_SUPPLY): a battery discharging at
    ``percent`` and mains offline; writing 1 to ``AC/online`` plugs the charger in."""
    for name, files in {"BAT0": {"type": "Battery", "status": "Discharging", "capacity": str(percent)},
                        "AC": {"type": "Mains", "online": "0"}}.items():  # fmt: skip
        (supplies / name).mkdir(parents=True)
        for key, value in files.items():
            (supplies / name / key).write_text(value + "\n")
    return supplies


def admit_edges(db: Path, data: list[Path], operators: list[str] | None = None) -> list[bytes]:
    """Make the keys of the edges that will keep their data in ``data`` and admit them at the hub whose database
    is ``db`` (as `portal-edge key` and `portal-hub edge approve` do), before either starts; their keys."""
    from portalfs.hub.state import HubState
    from portalfs.net.tls import EdgeKey

    keys = []
    state = HubState(db)
    try:
        for i, directory in enumerate(data):
            directory.mkdir(parents=True, exist_ok=True)
            keys.append(EdgeKey.load_or_create(directory).public)
            state.admit_edge(keys[-1], operators[i] if operators else "", time.time_ns())
    finally:
        state.close()
    return keys


def start(args: list[str], data: Path, enter: Callable[[], None] | None = None) -> Server:
    """Start a server (in the namespace ``enter`` moves it to) and wait for its one ready line on stdout."""
    log = open(data.with_suffix(".log"), "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "portalfs.cli.servers", *args],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=enter,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()  # the server prints it once it listens (or exits)
    if not line:
        process.wait(timeout=START_TIMEOUT)
        raise RuntimeError(f"{args[0]} did not start: {data.with_suffix('.log').read_text()[-2000:]}")
    return Server(process, line, data)


@contextmanager
def fabric(
    root: Path,
    edges: int = 3,
    quota: str = "0",
    lan: Lan | None = None,
    hub_args: tuple[str, ...] = (),
    edge_args: tuple[str, ...] = (),
    operators: list[str] | None = None,
) -> Iterator[FabricLab]:
    """A hub and ``edges`` edges: on loopback, or each on its own host of ``lan`` (hosts hub, edge0, edge1, ...).
    The hub's operator admitted every edge (each its own operator, or ``operators[i]``) before they started.

    ``hub_args`` and ``edge_args`` are added to each server's command line (e.g. a short grace period)."""

    def place(host: str) -> tuple[str, Callable[[], None] | None]:
        return ("127.0.0.1", None) if lan is None else (lan.address(host), lan.enter(host))

    root.mkdir(parents=True, exist_ok=True)
    lab = FabricLab(root)
    admit_edges(root / "hub.db", [root / f"edge{i}" for i in range(edges)], operators)
    try:
        address, enter = place("hub")
        lab.hub = start(
            ["hub", "serve", "--db", str(root / "hub.db"), "--listen", f"{address}:0", *hub_args], root / "hub", enter
        )
        for i in range(edges):
            data = root / f"edge{i}"
            address, enter = place(f"edge{i}")
            lab.edges.append(
                start(
                    ["edge", "serve", "--data", str(data), "--listen", f"{address}:0", "--hub", lab.hub_url,
                     "--quota", quota, *edge_args],
                    data,
                    enter,
                )
            )  # fmt: skip
        yield lab
    finally:
        for server in [*lab.edges, *([lab.hub] if lab.hub else [])]:
            server.stop()
