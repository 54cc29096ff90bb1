"""portalctl's front (``portalfs.cli.handoff``) against a control socket of the test's own, and the control
socket's server noticing that its caller went away."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from portalfs.cli import handoff
from portalfs.daemon.control import call_daemon, serve_control


@pytest.mark.parametrize(
    "argv, parsed",
    [
        (["put", "notes", "a", "b/", "--sync"], {"command": "put", "name": "notes", "sources": ["a", "b/"]}),
        (["--passphrase-file", "f", "get", "notes", "out", "--version", "3"], {"command": "get", "version": 3}),
        (["get", "notes", "out", "--json", "--path", "x/y"], {"json": True, "path": "x/y"}),
    ],
)
def test_put_and_get_are_recognised(argv: list[str], parsed: dict[str, Any]) -> None:
    args = handoff._arguments(argv)
    assert args is not None
    assert {k: getattr(args, k) for k in parsed} == parsed


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["sync", "notes"],
        ["put"],  # malformed: the full parser says what is wrong
        ["get", "notes"],
        ["get", "notes", "out", "--version", "x"],
        ["put", "--help"],
        ["log", "put"],
    ],
)
def test_everything_else_is_left_to_portalctl(argv: list[str]) -> None:
    assert handoff._arguments(argv) is None


class Portald:
    """A control socket answering every request with ``answer``, recording the requests."""

    def __init__(self, path: Path, answer: dict[str, Any]) -> None:
        self.requests: list[dict[str, Any]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(os.fspath(path))
        self._sock.listen(4)
        self._answer = answer
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as f:
                self.requests.append(json.loads(f.readline()))
                f.write(json.dumps(self._answer).encode() + b"\n")

    def close(self) -> None:
        self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=10)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("PORTAL_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def serving(home: Path, answer: dict[str, Any]) -> Iterator[Portald]:
    daemon = Portald(home / "portald.sock", answer)
    try:
        yield daemon
    finally:
        daemon.close()


def test_a_put_goes_to_portald_with_absolute_paths_and_its_answer_is_printed(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "src").mkdir()
    result = {"portal": "notes", "version": 4, "unchanged": True, "warnings": ["skipped a socket"]}
    for daemon in serving(home, {"ok": True, "result": result}):
        assert handoff.handed_off(["put", "notes", "src/", "src/..", "--json"]) == 0
        sources = [f"{home}/src/", f"{home}/src/.."]  # as given, joined to the working directory
        assert daemon.requests == [{"op": "put", "name": "notes", "sources": sources, "sync": False}]
    out, err = capsys.readouterr()
    assert json.loads(out) == {"portal": "notes", "version": 4, "unchanged": True}
    assert err == "portalctl: warning: skipped a socket\n"


def test_a_refusal_is_one_line_with_portalds_exit_code(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refusal = {"ok": False, "error": "no portal named 'nosuch'", "exit_code": 3}
    for _ in serving(home, refusal):
        assert handoff.handed_off(["get", "nosuch", "out", "--json"]) == 3
    assert capsys.readouterr().err == "portalctl: no portal named 'nosuch'\n"


def test_portalctl_runs_it_itself_without_portald_or_with_one_that_does_not_know_put(home: Path) -> None:
    assert handoff.handed_off(["get", "notes", "out", "--json"]) is None  # no socket
    older = {"ok": False, "error": "unknown request 'get' (status, sync, changed)", "exit_code": 2}
    for daemon in serving(home, older):
        assert handoff.handed_off(["get", "notes", "out", "--json"]) is None
        assert handoff.handed_off(["put", "notes", "-", "--name", "x", "--json"]) is None  # standard input
        assert len(daemon.requests) == 1


def test_a_source_portalctl_cannot_read_is_refused_before_portald_is_asked(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for daemon in serving(home, {"ok": True, "result": {}}):
        assert handoff.handed_off(["put", "notes", "missing", "--json"]) == 11
        assert daemon.requests == []
    assert capsys.readouterr().err == "portalctl: cannot read missing: no such file or directory\n"


async def test_the_server_tells_the_handler_when_its_caller_goes_away(tmp_path: Path) -> None:
    path = tmp_path / "portald.sock"
    seen: list[bool] = []

    async def handle(request: dict[str, Any], gone: threading.Event) -> Any:
        seen.append(await trio.to_thread.run_sync(gone.wait, 30.0))  # a command's worker thread, polling it
        return None

    def call_and_hang_up() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(os.fspath(path))
            sock.sendall(b'{"op": "get"}\n')

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, path, handle)
        await trio.to_thread.run_sync(call_and_hang_up)
        with trio.fail_after(30):
            while not seen:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert seen == [True]


async def test_a_fault_in_the_handler_is_answered_and_the_server_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "portald.sock"

    async def handle(request: dict[str, Any], gone: threading.Event) -> Any:
        if request["op"] == "fault":
            raise RuntimeError("a bug")
        return "fine"

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, path, handle)
        with pytest.raises(Exception, match="portald failed: a bug"):
            await trio.to_thread.run_sync(call_daemon, path, {"op": "fault"}, 30.0)
        assert await trio.to_thread.run_sync(call_daemon, path, {"op": "status"}, 30.0) == "fine"
        nursery.cancel_scope.cancel()


def test_the_front_loads_no_engine() -> None:
    """What makes a handed-off command quick to start: the front imports neither trio nor the device, nor what
    costs milliseconds to import and the front does without (dataclasses, with inspect; ctypes)."""
    engine = "('trio', 'portalfs.device', 'numpy', 'dataclasses', 'ctypes')"
    code = f"import sys, portalfs.cli.front; print(sorted(m for m in {engine} if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_portalctl_loads_the_word_list_and_argon2_only_for_the_commands_that_use_them() -> None:
    """The recovery words (init, recover) and Argon2 (a passphrase) cost a command that needs neither about
    10 ms to import; cryptography's serialization (with its SSH keys) is not needed for raw Ed25519 bytes."""
    needless = "('mnemonic', 'argon2', 'cryptography.hazmat.primitives.serialization')"
    code = f"import sys, portalfs.cli.portalctl; print(sorted(m for m in {needless} if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
