"""portald for real: two devices of one identity, each with its daemon, on a hub and three edges on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .fabricutil import FabricLab, fabric, on_battery
from .storeutil import held, largest
from .test_cli import fails, ok, portalctl

WAIT_SECONDS = 60.0


class Daemon:
    """A portald process; a thread reads its log as it comes, so the pipe never fills."""

    def __init__(self, home: Path, process: subprocess.Popen[str]) -> None:
        self.home = home
        self.process = process
        self.lines: list[str] = []
        self._seen = 0  # lines before this one have matched a wait already
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, pattern: str) -> str:
        """Until portald logs a line matching ``pattern`` (one not matched before); fail after WAIT_SECONDS."""
        deadline = time.monotonic() + WAIT_SECONDS
        with self._changed:
            while True:
                for i, line in enumerate(self.lines[self._seen :], start=self._seen):
                    if re.search(pattern, line):
                        self._seen = i + 1
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or not self._changed.wait(timeout=left):
                    log = "".join(self.lines)[-3000:]
                    raise AssertionError(f"portald never logged {pattern!r}; it logged:\n{log}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _portald(home: Path, *args: str, enter: Callable[[], None] | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "PORTAL_PASSPHRASE"}
    return subprocess.Popen(
        [sys.executable, "-m", "portalfs.cli.portald", *args],
        env={**env, "PORTAL_HOME": str(home), "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=enter,
    )


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


def start_daemon(home: Path, started: list[Daemon], *args: str, enter: Callable[[], None] | None = None) -> Daemon:
    """portald on ``home`` (in the network namespace ``enter`` moves it to), once it says it is ready."""
    process = _portald(home, "--interval", "30", *args, enter=enter)
    daemon = Daemon(home, process)
    started.append(daemon)
    assert process.stdout is not None
    ready = process.stdout.readline()
    assert ready.startswith("portald: ready"), (ready, daemon.stop(), "".join(daemon.lines))
    return daemon


def notes_device(home: Path, src: Path, files: dict[str, bytes], hub: str | None = None) -> str:
    """A new identity on ``home`` (on ``hub``, if given) with the portal notes holding ``files``; its words."""
    words = " ".join(json.loads(ok(home, "init", "--no-passphrase", "--json"))["words"])
    if hub is not None:
        ok(home, "hub", "add", hub)
    ok(home, "portal", "create", "notes")
    src.mkdir(exist_ok=True)
    for name, data in files.items():
        (src / name).write_bytes(data)
    ok(home, "put", "notes", f"{src}/")
    return words


def recovered(home: Path, words: str, hub: str) -> str:
    """Another device of the identity, on ``hub``; what `hub add` said."""
    ok(home, "recover", "--no-passphrase", input=words)
    return ok(home, "hub", "add", hub)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[FabricLab]:
    with fabric(tmp_path / "fabric") as lab:
        yield lab


def test_a_version_written_on_one_device_reaches_the_other_by_the_daemons_alone(
    tmp_path: Path, lab: FabricLab, daemons: list[Daemon]
) -> None:
    a, b, src = tmp_path / "a", tmp_path / "b", tmp_path / "src"
    words = notes_device(a, src, {"first.txt": b"one\n"}, hub=lab.hub_url)
    recovered(b, words, lab.hub_url)

    on_a = start_daemon(a, daemons)
    on_a.wait_for(r"notes: v1 \(pulled 0, published 1\)")  # v1 was waiting to be published
    on_b = start_daemon(b, daemons)  # b finds the portal in the keyring, where a's daemon put it
    on_b.wait_for(r"notes: v1 \(pulled 1, published 0\)")  # ... and the hub's event stream announced it

    # a new version: a's daemon sees it, pushes and publishes; b's hears of it and pulls, no command needed
    (src / "second.txt").write_text("two\n")
    ok(a, "put", "notes", f"{src}/")
    on_a.wait_for(r"notes: v2 \(pulled 0, published 1\)")
    on_b.wait_for(r"notes: v2 \(pulled 1, published 0\)")
    ok(b, "get", "notes", str(tmp_path / "out"))
    assert (tmp_path / "out" / "second.txt").read_text() == "two\n"

    # portalctl asks the running daemon instead of syncing beside it
    status = json.loads(ok(a, "status", "--json"))
    assert status["daemon"]["pid"] == on_a.process.pid
    assert [p["portal"] for p in status["daemon"]["portals"]] == ["notes"]
    (src / "third.txt").write_text("three\n")
    ok(a, "put", "notes", f"{src}/")
    synced = json.loads(ok(a, "sync", "--json"))
    assert synced[0]["portal"] == "notes" and synced[0]["version"] == 3
    fails(a, 3, "sync", "nosuch", match="no portal named 'nosuch'")
    socket = a / "portald.sock"
    assert stat.S_IMODE(socket.stat().st_mode) == 0o600

    # one daemon per device; SIGTERM stops it and takes its socket away
    second = _portald(a)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 12 and err.strip().splitlines()[-1].startswith("portald: portald is already running")
    assert on_a.stop() == 0
    assert not socket.exists()
    assert json.loads(ok(a, "status", "--json"))["daemon"] is None


def test_a_device_with_no_hub_runs_its_own_and_another_device_joins_it(tmp_path: Path, daemons: list[Daemon]) -> None:
    a, b, src = tmp_path / "a", tmp_path / "b", tmp_path / "src"
    words = notes_device(a, src, {"big.bin": os.urandom(3 << 20)})  # several chunks

    on_a = start_daemon(a, daemons)  # no hub: the embedded one, on loopback
    on_a.wait_for(r"embedded hub http://127\.0\.0\.1:\d+ and edge")
    on_a.wait_for(r"notes: v1 \(pulled 0, published 1\)")
    status = json.loads(ok(a, "status", "--json"))
    hub = status["daemon"]["hub"]
    assert status["daemon"]["embedded"] and hub.startswith("http://127.0.0.1:")
    assert (a / "embedded" / "hub.db").exists()

    # another device of the identity joins that hub and reads through the embedded edge: its store had nothing
    assert "portals added: notes" in recovered(b, words, hub)
    ok(b, "get", "notes", str(tmp_path / "out"))
    assert (tmp_path / "out" / "big.bin").read_bytes() == (src / "big.bin").read_bytes()

    # the same hub, at the same address, after a restart; without the daemon, sync says what to do
    assert on_a.stop() == 0
    fails(a, 2, "sync", match="portald's embedded one: start portald first")
    stopped = json.loads(ok(a, "status", "--json"))  # the hub is down with it: status still answers
    assert stopped["embedded"] and stopped["daemon"] is None and stopped["hub_error"]
    assert "embedded hub: start portald" in ok(a, "status")
    ok(a, "get", "notes", str(tmp_path / "offline"))  # what the device holds reads with its hub down
    assert (tmp_path / "offline" / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    with socket.socket() as squatter:  # another program took the hub's port meanwhile: one line, exit 12
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the daemon's TIME_WAIT
        squatter.bind(("127.0.0.1", int(hub.rsplit(":", 1)[1])))
        squatter.listen()
        process = _portald(a)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 12 and err.strip().splitlines() == [err.strip()], err
        assert "embedded hub's address" in err and "is taken" in err
    on_a = start_daemon(a, daemons)
    assert json.loads(ok(a, "status", "--json"))["daemon"]["hub"] == hub
    (src / "second.txt").write_text("two\n")
    ok(a, "put", "notes", f"{src}/")
    on_a.wait_for(r"notes: v2 \(pulled 0, published 1\)")
    ok(b, "sync")
    ok(b, "get", "notes", str(tmp_path / "out2"))
    assert (tmp_path / "out2" / "second.txt").read_text() == "two\n"


@pytest.mark.parametrize(("listen", "match"), [("0.0.0.0", "not a wildcard"), ("laptop", "give an IP address")])
def test_portald_refuses_an_embedded_address_others_cannot_use(tmp_path: Path, listen: str, match: str) -> None:
    ok(tmp_path, "init", "--no-passphrase")
    process = _portald(tmp_path, "--listen", listen)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2, err
    assert err.strip().splitlines() == [err.strip()] and match in err and "Traceback" not in err


def test_a_device_moves_from_its_embedded_hub_to_a_fabric_and_publishes_everything_there(
    tmp_path: Path, lab: FabricLab, daemons: list[Daemon]
) -> None:
    a, b, src = tmp_path / "a", tmp_path / "b", tmp_path / "src"
    words = notes_device(a, src, {"v1.txt": b"version 1\n"})
    (src / "v2.txt").write_text("version 2\n")
    ok(a, "put", "notes", f"{src}/")
    on_a = start_daemon(a, daemons)
    on_a.wait_for(r"notes: v2 \(pulled 0, published 2\)")  # to the embedded hub

    ok(a, "hub", "add", lab.hub_url)  # the running daemon follows the move
    on_a.wait_for(r"moved to hub .*: the embedded hub and edge stop")
    on_a.wait_for(r"notes: v2 \(pulled 0, published 2\)")  # the new hub had none of them
    status = json.loads(ok(a, "status", "--json"))
    assert status["daemon"]["hub"] == lab.hub_url and not status["daemon"]["embedded"]

    recovered(b, words, lab.hub_url)
    ok(b, "get", "notes", str(tmp_path / "out"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["v1.txt", "v2.txt"]


def test_a_repair_that_cannot_reach_r_edges_fails_alone_and_the_sync_stands(
    tmp_path: Path, lab: FabricLab, daemons: list[Daemon]
) -> None:
    a = tmp_path / "a"
    notes_device(a, tmp_path / "src", {"one.txt": b"one\n"}, hub=lab.hub_url)
    on_a = start_daemon(a, daemons)
    on_a.wait_for(r"notes: v1 \(pulled 0, published 1\)")
    lab.edges[1].stop()
    lab.edges[2].stop()  # one edge left: R = 2 cannot be met

    fails(a, 14, "sync", "notes", "--repair", match="could not reach 2 edges")  # named: its failure is the exit
    on_a.wait_for(r"notes: repair: ")
    unnamed = portalctl(a, "sync", "--repair")  # every portal: each failure is a line, and the command goes on
    assert unnamed.returncode == 0 and "could not reach 2 edges" in unnamed.stderr
    status = json.loads(ok(a, "status", "--json"))
    assert status["daemon"]["portals"][0]["failures"] == 0  # the sync itself succeeded


def test_a_version_made_while_the_daemon_was_down_is_merged_with_one_published_meanwhile(
    tmp_path: Path, lab: FabricLab, daemons: list[Daemon]
) -> None:
    a, b, src = tmp_path / "a", tmp_path / "b", tmp_path / "src"
    words = notes_device(a, src, {"shared.txt": b"v1\n"}, hub=lab.hub_url)
    recovered(b, words, lab.hub_url)
    on_a = start_daemon(a, daemons)
    on_a.wait_for(r"notes: v1 \(pulled 0, published 1\)")
    ok(b, "sync")  # b at v1, its daemon not running

    (src / "from-a.txt").write_text("a\n")
    ok(a, "put", "notes", f"{src}/")
    on_a.wait_for(r"notes: v2 \(pulled 0, published 1\)")
    b_src = tmp_path / "b-src"
    b_src.mkdir()
    (b_src / "from-b.txt").write_text("b\n")
    ok(b, "put", "notes", f"{b_src}/")  # b's v2, on v1: a's v2 is at the hub already

    on_b = start_daemon(b, daemons)
    on_b.wait_for(r"notes: v2\.\.v2 merged with v2\.\.v2 from the hub into v3")
    on_b.wait_for(r"notes: v3 \(pulled 1, published 1\)")
    on_a.wait_for(r"notes: v3 \(pulled 1, published 0\)")  # announced by the hub's event stream
    ok(a, "get", "notes", str(tmp_path / "out"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["from-a.txt", "from-b.txt", "shared.txt"]


def test_on_battery_background_sync_waits_until_the_charger_is_plugged_in(
    tmp_path: Path, lab: FabricLab, daemons: list[Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    supplies = on_battery(tmp_path / "power", 12)
    monkeypatch.setenv("PORTAL_POWER_SUPPLY", str(supplies))
    a, src = tmp_path / "a", tmp_path / "src"
    notes_device(a, src, {"first.txt": b"one\n"}, hub=lab.hub_url)  # v1, not yet published
    on_a = start_daemon(a, daemons)
    on_a.wait_for(r"background sync waits: on battery \(12%, below 20%\)")
    status = json.loads(ok(a, "status", "--json"))
    assert status["daemon"]["held_back"] == "on battery (12%, below 20%)"
    assert status["portals"][0]["published"] == 0 and not lab.edge_objects(0) + lab.edge_objects(1)
    assert "background sync waits: on battery" in ok(a, "status")
    assert json.loads(ok(a, "sync", "--json"))[0]["published"] == 1  # asked for: it goes on battery too
    (src / "second.txt").write_text("two\n")
    ok(a, "put", "notes", f"{src}/")  # v2 waits for the charger
    assert json.loads(ok(a, "status", "--json"))["portals"][0] == {**status["portals"][0], "version": 2, "published": 1}
    (supplies / "AC" / "online").write_text("1\n")  # plugged in
    on_a.wait_for(r"background sync goes on")
    on_a.wait_for(r"notes: v2 \(pulled 0, published 1\)")
    assert json.loads(ok(a, "status", "--json"))["daemon"]["held_back"] is None


def test_the_scrub_replaces_a_damaged_local_object_from_the_edges(
    tmp_path: Path, lab: FabricLab, daemons: list[Daemon]
) -> None:
    from .test_data_safety import _flip, _intact

    a, src = tmp_path / "a", tmp_path / "src"
    notes_device(a, src, {"big.bin": os.urandom(600_000), "small.txt": b"small\n"}, hub=lab.hub_url)
    ok(a, "sync")
    local = held(a)
    victim = largest(a)
    _flip(victim)
    on_a = start_daemon(a, daemons, "--scrub-interval", "1s")
    on_a.wait_for(r"scrub: \d+ objects \(\d+ bytes\) checked; 1 damaged replaced from the edges; 0 lost")
    assert _intact(victim)  # read back, hashed, and put back whole from an edge
    scrub = json.loads(ok(a, "status", "--json"))["daemon"]["scrub"]
    assert scrub["objects"] >= len(local) and scrub["lost"] == 0


def test_an_edge_silent_past_the_grace_is_marked_down_and_what_it_held_is_copied_again(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The hub drops an edge that stops heartbeating; portald marks it down once its grace has passed, says so in
    its log and in status, and repairs at once: every object is back on two edges that answer."""
    fast = ("--edge-timeout", "3s"), ("--heartbeat", "1s")
    with fabric(tmp_path / "fabric", edges=3, hub_args=fast[0], edge_args=fast[1]) as lab:
        a, src = tmp_path / "a", tmp_path / "src"
        notes_device(a, src, {f"part{i}.bin": os.urandom(150_000) for i in range(6)}, hub=lab.hub_url)
        ok(a, "sync")
        on_a = start_daemon(a, daemons, "--interval", "1", "--edge-grace", "1s")
        lost = lab.edges[0]
        lost.stop(signal.SIGKILL)
        on_a.wait_for(rf"edge {re.escape(lab.edge_address(0))} \(\w+\) is down: silent at the hub")
        (down,) = json.loads(ok(a, "status", "--json"))["daemon"]["edges_down"]
        assert down["key"] == lab.edge_key(0)
        assert "down, silent at the hub since" in ok(a, "status")
        deadline = time.monotonic() + 60
        while True:  # the repair that followed: every object on both edges left
            held = [set(lab.edge_objects(i)) for i in (1, 2)]
            if held[0] and held[0] == held[1] and set(lab.edge_objects(0)) <= held[0]:
                break
            assert time.monotonic() < deadline, "what the silent edge held was not copied to the others"
            time.sleep(0.2)


def test_put_and_get_are_run_by_portald_where_it_runs(tmp_path: Path, lab: FabricLab, daemons: list[Daemon]) -> None:
    """portalctl hands a put (of files and folders) and a get to the device's portald; what they print, their
    exit codes and the files they make are the same as when portalctl runs them itself."""
    a, b, src, out = tmp_path / "a", tmp_path / "b", tmp_path / "src", tmp_path / "out"
    words = notes_device(a, src, {"first.txt": b"one\n"}, hub=lab.hub_url)
    recovered(b, words, lab.hub_url)
    on_a = start_daemon(a, daemons)
    on_a.wait_for(r"notes: v1 \(pulled 0, published 1\)")

    (src / "second.bin").write_bytes(second := os.urandom(300_000))
    put = json.loads(ok(a, "put", "notes", f"{src}/", "--sync", "--json"))
    on_a.wait_for(r"portalctl put notes: v2, 2 files")
    assert put["version"] == 2 and put["files"] == 2 and not put["unchanged"]
    assert put["sync"] == {**put["sync"], "portal": "notes", "version": 2, "published": 1}
    assert ok(a, "put", "notes", f"{src}/").startswith("notes v2: unchanged, no new version")
    fails(a, 3, "put", "nosuch", f"{src}/", match="no portal named 'nosuch'")  # portald's refusal, as portalctl's
    on_a.wait_for(r"portalctl put notes: v2")  # the unchanged put went to portald too

    on_b = start_daemon(b, daemons)
    assert "notes: v2 (pulled 2, published 0" in ok(b, "sync", "notes")
    said = ok(b, "get", "notes", str(out))
    on_b.wait_for(r"portalctl get notes: v2, 2 files into " + re.escape(str(out)))
    assert said.startswith(f"Restored notes v2: 2 files, 293.0 KiB into {out} (from the edges: ")
    assert (out / "first.txt").read_bytes() == b"one\n" and (out / "second.bin").read_bytes() == second
    fails(b, 3, "get", "notes", str(tmp_path / "nowhere" / "x"), match="nowhere does not exist")
    fails(b, 4, "get", "notes", str(out), match="already exists (use --overwrite")
    (out / "first.txt").unlink()
    (out / "first.txt").mkdir()  # in the way: replacing it fails in portald as it would here (exit code 10)
    fails(b, 10, "get", "notes", str(out), "--overwrite", match="first.txt")
    assert [line for line in on_b.lines if "Traceback" in line] == []

    # standard input is read by portalctl itself
    ok(a, "put", "notes", "-", "--name", "piped.txt", input="piped\n")
    ok(a, "get", "notes", str(tmp_path / "piped.txt"), "--path", "piped.txt")
    assert (tmp_path / "piped.txt").read_text() == "piped\n"
