"""What the fabric benchmarks share: portalctl in a PORTAL_HOME, and a hub with edges on loopback, each process
stopped by PID. Imported by bench/fetch, bench/publish and bench/latency, beside it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SERVERS = [sys.executable, "-m", "portalfs.cli.servers"]
# portalctl as a person runs it: the installed command (its front hands put and get to a running portald)
PORTALCTL = [str(Path(sys.executable).with_name("portalctl"))]
if not Path(PORTALCTL[0]).exists():
    PORTALCTL = [sys.executable, "-m", "portalfs.cli.portalctl"]


def portalctl(home: Path, *args: str, stdin: str | None = None) -> str:
    env = {**os.environ, "PORTAL_HOME": str(home)}
    return subprocess.run([*PORTALCTL, *args], env=env, input=stdin, capture_output=True, text=True, check=True).stdout


@contextmanager
def portald(home: Path, log: Path) -> Iterator[None]:
    """portald for ``home``, from its ready line until it is stopped (SIGTERM, by PID)."""
    env = {**os.environ, "PORTAL_HOME": str(home)}
    process = subprocess.Popen([sys.executable, "-m", "portalfs.cli.portald"], env=env, stdout=subprocess.PIPE,
                               stderr=log.open("wb"), text=True)  # fmt: skip
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()
        if not ready.startswith("portald: ready"):
            raise SystemExit(f"portald did not start: {ready!r} (see {log})")
        yield
    finally:
        process.terminate()
        process.wait(timeout=60)


def serve(args: list[str], log: Path) -> tuple[subprocess.Popen[str], str]:
    """Start a server; return it and the one line it prints once it listens."""
    process = subprocess.Popen(SERVERS + args, stdout=subprocess.PIPE, stderr=log.open("wb"), text=True)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


@contextmanager
def fabric(root: Path, edges: int = 2, transports: str = "quic,tcp") -> Iterator[str]:
    """A hub and ``edges`` edges offering ``transports``; yields the hub URL."""
    processes = []
    try:
        hub, line = serve(["hub", "serve", "--db", str(root / "hub.db"), "--listen", "127.0.0.1:0"], root / "hub.log")
        processes.append(hub)
        match = re.search(r"http://\S+?(?=/v1/)", line)
        assert match, line
        url = match.group(0)
        for i in range(edges):
            key = subprocess.run(SERVERS + ["edge", "key", "--data", str(root / f"edge{i}")], capture_output=True,
                                 text=True, check=True).stdout.strip()  # fmt: skip
            subprocess.run(SERVERS + ["hub", "edge", "approve", key, "--db", str(root / "hub.db")], check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            edge, _ = serve(
                ["edge", "serve", "--data", str(root / f"edge{i}"), "--listen", "127.0.0.1:0", "--hub", url,
                 "--transport", transports],
                root / f"edge{i}.log",
            )  # fmt: skip
            processes.append(edge)
        yield url
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
