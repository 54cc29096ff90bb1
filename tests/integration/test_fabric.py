"""Many devices on one fabric, all real processes on loopback: a hub, three edges, several PORTAL_HOMEs."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from portalfs.errors import Conflict
from portalfs.hub.auth import sign_request
from portalfs.keys import DeviceKey, Identity, root_from_words

from .fabricutil import FabricLab, fabric, on_battery
from .mountutil import force_unmount, mounted, needs_fuse, shows
from .storeutil import held, object_files
from .test_cli import fails, ok

SMALL_NAME = "quarterly-plan-zq81.txt"
SMALL_TEXT = "the launch code is ZEBRA-7731-ORCHID\n"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[FabricLab]:
    with fabric(tmp_path / "fabric") as lab:
        yield lab


def _device(tmp_path: Path, name: str, lab: FabricLab, words: str | None = None) -> tuple[Path, str]:
    home = tmp_path / name
    if words is None:
        words = " ".join(json.loads(ok(home, "init", "--no-passphrase", "--json"))["words"])
    else:
        ok(home, "recover", "--no-passphrase", input=words)
    ok(home, "hub", "add", lab.hub_url)
    return home, words


def _docs_on_two_devices(tmp_path: Path, lab: FabricLab) -> tuple[Path, Path, Path]:
    """(the source tree, device a that put it in the portal docs and synced, device b of the same identity)."""
    src = _tree(tmp_path / "src")
    a, words = _device(tmp_path, "a", lab)
    ok(a, "portal", "create", "docs")
    put = json.loads(ok(a, "put", "docs", f"{src}/", "--sync", "--json"))  # put, then sync, in one process
    assert put["version"] == put["sync"]["version"] == 1 and put["sync"]["published"] == 1, put
    b, _ = _device(tmp_path, "b", lab, words)
    return src, a, b


def _two_devices_with(tmp_path: Path, lab: FabricLab, portal: str) -> tuple[Path, Path]:
    """Devices a and b of one identity, both following ``portal``, which has no version yet."""
    a, words = _device(tmp_path, "a", lab)
    b, _ = _device(tmp_path, "b", lab, words)
    ok(a, "portal", "create", portal)
    ok(a, "sync")  # the keyring names it now
    ok(b, "sync")
    return a, b


def _identity(home: Path) -> str:
    return json.loads(ok(home, "whoami", "--json"))["identity"]


def _tree(root: Path) -> Path:
    (root / "nested").mkdir(parents=True)
    (root / SMALL_NAME).write_text(SMALL_TEXT)
    (root / "nested" / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    return root


def _same(a: Path, b: Path) -> None:
    for path in a.rglob("*"):
        if path.is_file():
            assert (b / path.relative_to(a)).read_bytes() == path.read_bytes(), path


def test_second_device_member_and_link_read_what_was_synced_and_the_servers_learn_nothing(
    tmp_path: Path, lab: FabricLab
) -> None:
    src = _tree(tmp_path / "src")
    a, words = _device(tmp_path, "a", lab)
    ok(a, "portal", "create", "docs")
    ok(a, "put", "docs", f"{src}/")
    synced = json.loads(ok(a, "sync", "--json"))
    assert synced[0]["published"] == 1 and synced[0]["objects"] > 3

    # the same identity on a second machine: words, then the hub; nothing else
    b, _ = _device(tmp_path, "b", lab, words)
    ok(b, "get", "docs", str(tmp_path / "out-b"))
    _same(src, tmp_path / "out-b")

    # another identity, shared with
    c, _ = _device(tmp_path, "c", lab)
    ok(a, "share", "docs", "--with", _identity(c))
    ok(c, "sync")
    ok(c, "get", "docs", str(tmp_path / "out-c"))
    _same(src, tmp_path / "out-c")

    # a link that opens once, read-only
    url = ok(a, "link", "docs", "--max-downloads", "1", "--expires", "1h").strip()
    assert url.startswith("portal://") and "#" in url
    d = tmp_path / "d"
    ok(d, "init", "--no-passphrase")
    mnt = tmp_path / "mnt-d"
    mnt.mkdir()
    try:
        ok(d, "open", url, str(mnt))
        assert (mnt / SMALL_NAME).read_text() == SMALL_TEXT
        with pytest.raises(OSError):
            (mnt / "new.txt").write_text("read-only")
    finally:
        ok(d, "unmount", str(mnt))
        force_unmount(mnt)
    fails(d, 15, "open", url, str(mnt), match="used up")

    # unshare: c is removed at the hub and cannot read what comes next
    ok(a, "unshare", "docs", _identity(c))
    (src / "after.txt").write_text("written after the unshare\n")
    ok(a, "put", "docs", f"{src}/")
    ok(a, "sync")
    fails(c, 15, "sync", "docs", match="may not read")
    ok(b, "sync")
    ok(b, "get", "docs", str(tmp_path / "out-b2"))
    assert (tmp_path / "out-b2" / "after.txt").read_text() == "written after the unshare\n"

    # zero knowledge: nothing the hub or an edge stores holds a name, a content, or a key
    secrets = _secrets(a, words)
    needles = {
        "file name": SMALL_NAME.encode(),
        "dir name": b"nested",
        "content": SMALL_TEXT.encode(),
        "big content": (src / "nested" / "big.bin").read_bytes()[1000:1064],
        "portal name": b"\x64docs",  # CBOR text "docs", as in a grant or the keyring
        "words": words.split()[0].encode() + b" " + words.split()[1].encode(),
        **secrets,
    }
    import socket

    if len(socket.gethostname()) >= 6:  # the devices' name (sealed in their certificates)
        needles["device name"] = socket.gethostname().encode()
    for path in [*lab.root.rglob("*")]:
        if not path.is_file() or path.suffix == ".log":
            continue
        data = path.read_bytes()
        for what, needle in needles.items():
            assert needle not in data, f"{what} found in {path}"


def _secrets(home: Path, words: str) -> dict[str, bytes]:
    from portalfs.device import Device
    from portalfs.paths import DeviceHome

    identity = Identity(root_from_words(words))
    device = Device(DeviceHome.from_environ({"PORTAL_HOME": str(home)}))
    try:
        unlocked = device.unlock(None)
        found = {"seed": identity.root, "convergence secret": identity.convergence_secret}
        for row in device.state.portals():
            for i, key in enumerate(unlocked.unwrap_portal_key(row).all_keys):
                found[f"read key {row.name}/{i}"] = key
        return found
    finally:
        device.close()


def test_a_transfer_survives_an_edge_killed_in_the_middle(tmp_path: Path, lab: FabricLab) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "large.bin").write_bytes(os.urandom(48 * 1024 * 1024))
    a, words = _device(tmp_path, "a", lab)
    ok(a, "portal", "create", "big")
    ok(a, "put", "big", f"{src}/")
    ok(a, "sync")
    b, _ = _device(tmp_path, "b", lab, words)
    env = {k: v for k, v in os.environ.items() if k != "PORTAL_PASSPHRASE"}
    get = subprocess.Popen(
        [sys.executable, "-m", "portalfs.cli.portalctl", "get", "big", str(tmp_path / "out")],
        env={**env, "PORTAL_HOME": str(b)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while get.poll() is None and time.monotonic() < deadline:
        if len(object_files(b)) >= 4:  # chunks of big.bin: files
            break
        time.sleep(0.005)
    lab.edges[0].stop(signal.SIGKILL)  # in the middle: some chunks fetched, most not
    _, err = get.communicate(timeout=120)
    assert get.returncode == 0, err.decode(errors="replace")[-3000:]
    assert (tmp_path / "out" / "large.bin").read_bytes() == (src / "large.bin").read_bytes()


def _signed(key: DeviceKey, method: str, url: str, path: str, body: bytes = b"") -> httpx.Response:
    headers = sign_request(key.sign, key.public, method, path, body)
    return httpx.request(method, url + path, content=body, headers=headers, timeout=10)


def test_the_hub_refuses_bad_requests_and_keeps_serving(tmp_path: Path, lab: FabricLab) -> None:
    url = lab.hub_url
    a, words = _device(tmp_path, "a", lab)
    assert httpx.get(url + "/v1/portals", timeout=10).status_code == 401  # unsigned
    stranger = DeviceKey(os.urandom(32))
    assert _signed(stranger, "GET", url, "/v1/portals").status_code == 401  # unknown device
    headers = sign_request(stranger.sign, stranger.public, "GET", "/v1/edges", b"")
    refused = httpx.get(url + "/v1/edges", headers=headers, timeout=10)  # a stranger is not told the edges
    assert refused.status_code == 403 and refused.json()["error"] == "not-admitted"
    replay = httpx.get(url + "/v1/edges", headers=headers, timeout=10)
    assert replay.status_code == 401 and replay.json()["error"] == "replayed"
    forged = dict(headers, **{"Portal-Nonce": os.urandom(16).hex()})
    assert httpx.get(url + "/v1/edges", headers=forged, timeout=10).json()["error"] == "bad-signature"
    from portalfs.hub.auth import request_message

    past, nonce = time.time_ns() - 612 * 10**9, os.urandom(16)  # a clock ten minutes slow says how slow
    late = {"Portal-Key": stranger.public.hex(), "Portal-Time": str(past), "Portal-Nonce": nonce.hex(),
            "Portal-Signature": stranger.sign(request_message("GET", "/v1/edges", past, nonce, b"")).hex()}  # fmt: skip
    skewed = httpx.get(url + "/v1/edges", headers=late, timeout=10)
    assert skewed.status_code == 401 and skewed.json()["error"] == "clock-skew"
    assert "clock is 612 s behind the hub's" in skewed.json()["message"]
    assert httpx.get(url + "/v1/openapi.json", timeout=10).json()["openapi"].startswith("3.")
    # a stale parent: two devices of one identity race to publish
    ok(a, "portal", "create", "race")
    (tmp_path / "f").write_text("one")
    ok(a, "put", "race", str(tmp_path / "f"))
    ok(a, "sync")
    b, _ = _device(tmp_path, "b", lab, words)
    (tmp_path / "f").write_text("two")
    ok(a, "put", "race", str(tmp_path / "f"))
    ok(b, "put", "race", str(tmp_path / "f"))
    ok(a, "sync", "race")
    with pytest.raises(Conflict):  # b's v2 names a parent that is no longer the head: compare-and-swap refuses it
        _publish_head(b, "race", lab.hub_url)
    synced = json.loads(ok(b, "sync", "race", "--json"))  # ... so b merges a's v2 with its own, into v3
    assert synced[0]["version"] == 3 and synced[0]["published"] == 1
    assert lab.hub is not None and lab.hub.process.poll() is None


def _peak_rss(pid: int) -> int:
    """The most memory process ``pid`` has held, in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _huge_post(url: str, headers: dict[str, str], declared: bool) -> int | None:
    """POST 512 MiB (with its Content-Length, or chunked); the status, or None when the hub cut it off."""
    size, block = 512 << 20, bytes(1 << 20)

    def body() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    if declared:
        headers = {**headers, "Content-Length": str(size)}
    try:
        return httpx.post(url, content=body(), headers=headers, timeout=30).status_code
    except (httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadError):
        return None


def test_the_hub_refuses_an_oversized_body_before_holding_it(tmp_path: Path, lab: FabricLab) -> None:
    assert lab.hub is not None
    pid, url = lab.hub.process.pid, lab.hub_url + "/v1/edges"
    before = _peak_rss(pid)
    stranger = DeviceKey(os.urandom(32))
    signed = sign_request(stranger.sign, stranger.public, "POST", "/v1/edges", b"{}")  # the right size is unknown
    for headers, declared in (({}, True), ({}, False), (signed, True), (signed, False)):
        assert _huge_post(url, headers, declared) in (None, 401, 413)  # unsigned, then oversized: refused
    grown = _peak_rss(pid) - before
    assert grown < 32 << 20, f"the hub grew by {grown >> 20} MiB for 4 x 512 MiB it refused"
    assert httpx.get(lab.hub_url + "/v1/openapi.json", timeout=10).status_code == 200  # and still serves


def _publish_head(home: Path, name: str, hub_url: str) -> None:
    from portalfs.device import Device
    from portalfs.hub.client import HubClient
    from portalfs.paths import DeviceHome

    device = Device(DeviceHome.from_environ({"PORTAL_HOME": str(home)}))
    try:
        secrets = device.unlock(None)
        row = device.state.portal(name)
        head = device.state.head(row.id)
        assert head is not None
        hub = HubClient(hub_url, secrets.device)
        try:
            hub.publish(row.id, head.record.to_bytes())
        finally:
            hub.close()
    finally:
        device.close()


@needs_fuse
def test_two_devices_that_wrote_at_once_are_merged_and_a_true_conflict_keeps_both(
    tmp_path: Path, lab: FabricLab
) -> None:
    a, words = _device(tmp_path, "a", lab)
    b, _ = _device(tmp_path, "b", lab, words)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for name, text in {"x.txt": "base\n", "c.txt": "doomed\n", "sub/d.txt": "d0\n", "sub/e.txt": "e0\n"}.items():
        (src / name).write_text(text)
    ok(a, "portal", "create", "notes")
    ok(a, "put", "notes", f"{src}/")
    ok(a, "sync")
    ok(b, "sync")  # both at v1

    on_a = tmp_path / "on-a"  # a, offline: a put over v1, not published
    ok(a, "get", "notes", str(on_a))
    (on_a / "x.txt").write_text("from a\n")  # both change x.txt: a true conflict
    (on_a / "a.txt").write_text("new on a\n")
    (on_a / "sub" / "d.txt").write_text("d on a\n")  # one directory changed on both sides, other files
    ok(a, "put", "notes", f"{on_a}/")
    with mounted(b, "notes", tmp_path / "mnt-b") as mnt:  # b: versions made in mounts, which publish them
        (mnt / "x.txt").write_text("from b\n")
        (mnt / "b.txt").write_text("new on b\n")
        (mnt / "c.txt").unlink()  # deleted on b only
        (mnt / "sub" / "e.txt").write_text("e on b\n")
    with mounted(b, "notes", tmp_path / "mnt-b") as mnt:
        (mnt / "later.txt").write_text("a second version on b\n")
    synced = json.loads(ok(a, "sync", "--json"))  # a merges b's versions with its own, into one
    assert synced[0]["pulled"] >= 2 and synced[0]["published"] == 1
    ok(b, "sync")  # b takes the merge

    for home, out in ((a, tmp_path / "out-a"), (b, tmp_path / "out-b")):
        ok(home, "get", "notes", str(out))
        names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        conflict = next(n for n in names if n.startswith("x (conflict "))
        assert re.fullmatch(r"x \(conflict .+ \d{4}-\d\d-\d\d\)\.txt", conflict), conflict
        assert names == sorted(["a.txt", "b.txt", "later.txt", "sub/d.txt", "sub/e.txt", "x.txt", conflict])
        assert (out / "x.txt").read_text() == "from b\n"  # theirs (published first) keeps the name
        assert (out / conflict).read_text() == "from a\n"
        assert (out / "sub" / "d.txt").read_text() == "d on a\n" and (out / "sub" / "e.txt").read_text() == "e on b\n"

    # the conflict is listed on both devices, and settled once, on a: a's bytes (beside) take the name back
    for home in (a, b):
        [listed] = json.loads(ok(home, "conflicts", "--json"))
        assert (listed["path"], listed["of"], listed["portal"]) == (conflict, "x.txt", "notes")
        assert listed["copy_key"] != listed["name_key"] and listed["name_mtime_ns"] is not None
    assert "beside x.txt" in ok(a, "conflicts", "notes")
    assert [p["conflicts"] for p in json.loads(ok(a, "status", "--json"))["portals"]] == [1]
    assert "1 conflict copies" in ok(a, "status")
    fails(a, 3, "resolve", "notes", "nowhere.txt", "--keep", "mine", match="no conflict copy")
    ok(a, "resolve", "notes", "x.txt", "--keep", "mine")
    ok(a, "sync")
    assert [p["conflicts"] for p in json.loads(ok(a, "status", "--json"))["portals"]] == [0]
    with mounted(b, "notes", tmp_path / "mnt-b") as mnt:
        assert shows(mnt / "x.txt", "from a\n") and not (mnt / conflict).exists()
        assert json.loads(ok(b, "conflicts", "--json")) == []


@needs_fuse
def test_a_directory_stored_in_parts_reaches_a_second_device(tmp_path: Path, lab: FabricLab) -> None:
    """15,000 names of 250 bytes (about 4.7 MB of entries, past the 4 MiB a directory node holds before it is
    split): the parts are pushed with their directory, and fetched by the other device's get and mount."""
    src = tmp_path / "src"
    (src / "many").mkdir(parents=True)
    names = sorted(f"{i:05d}".ljust(250, "x") for i in range(15_000))
    for name in names:
        (src / "many" / name).touch()
    (src / "many" / names[123]).write_text("one with bytes")
    a, words = _device(tmp_path, "a", lab)
    ok(a, "portal", "create", "docs")
    ok(a, "put", "docs", f"{src}/", "--sync")
    b, _ = _device(tmp_path, "b", lab, words)
    with mounted(b, "docs", tmp_path / "mnt-b", "ro") as mnt:  # fetches the directory's nodes before it serves
        assert sorted(os.listdir(mnt / "many")) == names
        assert (mnt / "many" / names[123]).read_text() == "one with bytes"
    got = tmp_path / "got"
    ok(b, "get", "docs", str(got))
    assert sorted(os.listdir(got / "many")) == names and (got / "many" / names[123]).read_text() == "one with bytes"


@needs_fuse
def test_a_second_device_mounts_the_portal_and_reads_chunks_it_never_had(tmp_path: Path, lab: FabricLab) -> None:
    src, a, b = _docs_on_two_devices(tmp_path, lab)
    held_before = len(held(b))
    with mounted(b, "docs", tmp_path / "mnt-b", "ro") as mnt:
        assert (mnt / SMALL_NAME).read_text() == SMALL_TEXT
        assert (mnt / "nested" / "big.bin").read_bytes() == (src / "nested" / "big.bin").read_bytes()
    assert len(held(b)) > held_before  # fetched as read, and kept

    # while b has it mounted read-write, versions from elsewhere land in the mount itself
    (src / "later.txt").write_text("written on a\n")
    ok(a, "put", "docs", f"{src}/")
    ok(a, "sync")
    with mounted(b, "docs", tmp_path / "mnt-rw") as mnt:
        assert shows(mnt / "later.txt", "written on a\n")
        assert json.loads(ok(b, "sync", "--json"))[0]["elsewhere"] is True  # the mount syncs it, not a command


@needs_fuse
def test_a_read_write_mount_publishes_what_it_commits_and_a_sync_beside_it_leaves_it_alone(
    tmp_path: Path, lab: FabricLab
) -> None:
    a, b = _two_devices_with(tmp_path, lab, "live")
    with mounted(a, "live", tmp_path / "mnt-a") as mnt:  # no portald: the mount publishes by itself
        (mnt / "note.txt").write_text("closed on a\n")
        _pulls(b, "the mount did not publish within 30 s")
        ok(b, "get", "live", str(tmp_path / "on-b.txt"), "--path", "note.txt")
        assert (tmp_path / "on-b.txt").read_text() == "closed on a\n"
        beside = json.loads(ok(a, "sync", "--json"))[0]  # the mount holds the portal's sync claim
        assert beside["elsewhere"] is True and beside["published"] == 0
        assert "its read-write mount syncs it" in ok(a, "sync", "live")
        (mnt / "last.txt").write_text("written just before the unmount\n")
        os.link(mnt / "last.txt", mnt / "hard-link.txt")  # a link group travels with the tree
    after = json.loads(ok(a, "sync", "--json"))[0]  # the unmount's last version was published by the mount
    assert after["published"] == 0 and "elsewhere" not in after
    ok(b, "sync")
    ok(b, "get", "live", str(tmp_path / "last.txt"), "--path", "last.txt")
    assert (tmp_path / "last.txt").read_text() == "written just before the unmount\n"
    with mounted(b, "live", tmp_path / "mnt-b") as mnt:  # on the other device, still one file with two names
        assert os.stat(mnt / "last.txt").st_ino == os.stat(mnt / "hard-link.txt").st_ino
        assert os.stat(mnt / "hard-link.txt").st_nlink == 2


@needs_fuse
def test_on_battery_a_read_write_mount_keeps_its_versions_until_the_charger_is_plugged_in(
    tmp_path: Path, lab: FabricLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    supplies = on_battery(tmp_path / "power", 12)
    monkeypatch.setenv("PORTAL_POWER_SUPPLY", str(supplies))  # the mount's, as portald's (section 16)
    a, b = _two_devices_with(tmp_path, lab, "live")
    mount_log = a / "logs" / "mount.log"
    with mounted(a, "live", tmp_path / "mnt") as mnt:
        (mnt / "note.txt").write_text("written on battery\n")
        deadline = time.monotonic() + 30
        while not (mount_log.exists() and "publishing waits: on battery (12%, below 20%)" in mount_log.read_text()):
            assert time.monotonic() < deadline, "the mount did not hold its versions back"
            time.sleep(0.1)
        while len(json.loads(ok(a, "log", "live", "--json"))) < 1:  # committed here ...
            assert time.monotonic() < deadline, "the mount did not commit"
            time.sleep(0.1)
        time.sleep(1.0)
        assert json.loads(ok(b, "sync", "--json"))[0]["pulled"] == 0  # ... and not published
        (supplies / "AC" / "online").write_text("1\n")  # plugged in
        _pulls(b, "the mount did not publish once plugged in")
    ok(b, "get", "live", str(tmp_path / "note.txt"), "--path", "note.txt")
    assert (tmp_path / "note.txt").read_text() == "written on battery\n"


@needs_fuse
def test_a_read_write_mount_whose_portal_is_deleted_turns_read_only_and_keeps_what_was_written(
    tmp_path: Path, lab: FabricLab
) -> None:
    a, b = _two_devices_with(tmp_path, lab, "live")
    mount_log = b / "logs" / "mount.log"
    with mounted(b, "live", tmp_path / "mnt") as mnt:
        (mnt / "before.txt").write_text("published\n")
        _pulls(a, "the mount did not publish within 30 s")
        ok(a, "portal", "delete", "live", "--yes")  # on the other device, while b has it mounted
        (mnt / "after.txt").write_text("written once the portal was deleted\n")
        deadline = time.monotonic() + 30
        while not (mount_log.exists() and "is read-only from now on" in mount_log.read_text()):
            assert time.monotonic() < deadline, "the mount did not turn read-only"
            time.sleep(0.1)
        with pytest.raises(OSError) as refused:
            (mnt / "more.txt").write_text("refused\n")
        assert refused.value.errno == errno.EROFS
        with pytest.raises(OSError):
            (mnt / "before.txt").unlink()
        assert (mnt / "after.txt").read_text() == "written once the portal was deleted\n"  # still there
        (live,) = json.loads(ok(b, "status", "--json"))["portals"]
        assert "deleted" in live["read_only"]
        assert "its mount is read-only" in ok(b, "status")
    assert len(json.loads(ok(b, "log", "live", "--json"))) >= 2  # what it wrote stays in its versions
    ok(b, "get", "live", str(tmp_path / "kept"))
    assert (tmp_path / "kept" / "after.txt").read_text() == "written once the portal was deleted\n"


def _pulls(home: Path, failure: str, seconds: float = 30) -> None:
    """Sync ``home`` until it pulls a version (another device's mount published), within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not json.loads(ok(home, "sync", "--json"))[0]["pulled"]:
        assert time.monotonic() < deadline, failure
        time.sleep(0.1)


def _conflicts(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "(conflict " in p.name)


@needs_fuse
def test_two_read_write_mounts_take_each_others_changes_live_and_lose_nothing(tmp_path: Path, lab: FabricLab) -> None:
    a, b = _two_devices_with(tmp_path, lab, "live")
    with mounted(a, "live", tmp_path / "mnt-a") as on_a, mounted(b, "live", tmp_path / "mnt-b") as on_b:
        (on_a / "from-a.txt").write_text("a1\n")
        assert shows(on_b / "from-a.txt", "a1\n")  # no portald, no command: the mounts sync themselves
        (on_b / "dir").mkdir()
        (on_b / "dir" / "from-b.txt").write_text("b1\n")
        assert shows(on_a / "dir" / "from-b.txt", "b1\n")

        with open(on_b / "from-a.txt") as held:  # open on b, unchanged there, changed on a
            (on_a / "from-a.txt").write_text("a2\n")
            assert shows(on_b / "from-a.txt", "a2\n")  # the next open reads the new bytes ...
            assert held.read() == "a1\n"  # ... and the open handle what it opened

        writing = open(on_b / "dir" / "from-b.txt", "w")  # being written on b while a changes it
        writing.write("b2, still open\n")
        writing.flush()
        (on_a / "dir" / "from-b.txt").write_text("a's version\n")
        deadline = time.monotonic() + 30
        while not _conflicts(on_b / "dir"):
            assert time.monotonic() < deadline, "the change from a did not land beside the open file"
            time.sleep(0.05)
        writing.close()
        assert (on_b / "dir" / "from-b.txt").read_text() == "b2, still open\n"  # b's bytes keep the name
        [copy] = _conflicts(on_b / "dir")
        assert (on_b / "dir" / copy).read_text() == "a's version\n"  # a's beside them
        assert shows(on_a / "dir" / "from-b.txt", "b2, still open\n")
        assert shows(on_a / "dir" / copy, "a's version\n")  # and both on a: nothing lost

        ok(b, "resolve", "live", "dir/from-b.txt", "--keep", "theirs")  # through b's mount: a's bytes win
        assert (on_b / "dir" / "from-b.txt").read_text() == "a's version\n" and not _conflicts(on_b / "dir")
        assert shows(on_a / "dir" / "from-b.txt", "a's version\n") and shows(on_a / "dir" / copy, None)


@needs_fuse
def test_a_read_only_mount_on_a_second_device_shows_what_another_device_publishes(
    tmp_path: Path, lab: FabricLab
) -> None:
    src, a, b = _docs_on_two_devices(tmp_path, lab)
    with mounted(b, "docs", tmp_path / "mnt-b", "ro") as mnt:
        assert (mnt / SMALL_NAME).read_text() == SMALL_TEXT
        assert (mnt / "nested" / "big.bin").stat().st_size > 0  # the kernel holds this name now
        (src / "fresh").mkdir()  # a directory b has never had: its node comes from the edges
        (src / "fresh" / "note.txt").write_text("published by a\n")
        (src / "nested" / "big.bin").unlink()
        ok(a, "put", "docs", f"{src}/")  # replaces fresh/ and nested/, keeps the rest
        ok(a, "sync")
        assert json.loads(ok(b, "sync", "--json"))[0]["pulled"] == 1  # beneath a read-only mount, it lands
        assert shows(mnt / "fresh" / "note.txt", "published by a\n")
        assert shows(mnt / "nested" / "big.bin", None)
        assert (mnt / SMALL_NAME).read_text() == SMALL_TEXT


@needs_fuse
def test_a_mount_keeps_no_more_of_what_it_fetched_than_the_cache_limit(tmp_path: Path, lab: FabricLab) -> None:
    src, _, b = _docs_on_two_devices(tmp_path, lab)
    big = (src / "nested" / "big.bin").read_bytes()  # 6 MiB in several chunks
    assert "limit 4.0 MiB" in ok(b, "cache", "--limit", "4M")
    with mounted(b, "docs", tmp_path / "mnt-b", "ro") as mnt:
        assert (mnt / "nested" / "big.bin").read_bytes() == big
        kept = json.loads(ok(b, "cache", "--json"))
        assert 0 < kept["bytes"] <= 4 * 1024 * 1024 and kept["limit"] == 4 * 1024 * 1024
        assert (mnt / "nested" / "big.bin").read_bytes() == big  # what was dropped comes back from the edges
    dropped = json.loads(ok(b, "cache", "--drop", "--json"))
    assert dropped["objects"] == 0 and dropped["bytes"] == 0 and dropped["dropped"] > 0
    with mounted(b, "docs", tmp_path / "mnt-b", "ro") as mnt:
        assert (mnt / SMALL_NAME).read_text() == SMALL_TEXT  # its chunk was dropped too: fetched again
        assert (mnt / "nested" / "big.bin").read_bytes() == big
    fails(b, 2, "cache", "--limit", "lots", match="is not a size")


@needs_fuse
def test_a_mount_reads_what_it_lacks_from_the_edges_while_the_hub_is_down(tmp_path: Path, lab: FabricLab) -> None:
    src, _, b = _docs_on_two_devices(tmp_path, lab)
    with mounted(b, "docs", tmp_path / "mnt-b", "ro") as mnt:
        assert (mnt / SMALL_NAME).read_text() == SMALL_TEXT
        # Every edge has met b (status says HELLO to each), so each has b in its device directory:
        # an edge that never saw a device cannot admit it with the hub down.
        assert all(edge["up"] for edge in json.loads(ok(b, "status", "--json"))["edges"])
        assert lab.hub is not None
        lab.hub.stop()  # no more locations: every edge is asked
        assert (mnt / "nested" / "big.bin").read_bytes() == (src / "nested" / "big.bin").read_bytes()
    shutil.rmtree(b / "store")  # a new command, the hub still down: the edges the hub listed last are asked
    ok(b, "get", "docs", str(tmp_path / "out"), "--path", "nested/big.bin")
    assert (tmp_path / "out").read_bytes() == (src / "nested" / "big.bin").read_bytes()


def test_repair_copies_what_a_lost_edge_held_so_a_second_loss_loses_nothing(tmp_path: Path, lab: FabricLab) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):  # enough objects that each edge holds some of them
        (src / f"part{i}.bin").write_bytes(os.urandom(300_000))
    a, words = _device(tmp_path, "a", lab)
    ok(a, "portal", "create", "archive")
    ok(a, "put", "archive", f"{src}/")
    ok(a, "sync")
    nothing_to_do = json.loads(ok(a, "sync", "--repair", "--json"))[0]["repair"]
    assert nothing_to_do["checked"] > 12 and nothing_to_do["copied"] == 0

    lab.edges[0].stop(signal.SIGKILL)
    repaired = json.loads(ok(a, "sync", "--repair", "--json"))[0]["repair"]
    assert repaired["copied"] > 0  # what edge 0 held is now on both edges that are left
    lab.edges[1].stop(signal.SIGKILL)
    b, _ = _device(tmp_path, "b", lab, words)  # another device, with one edge left and nothing local
    said = ok(b, "get", "archive", str(tmp_path / "out"))
    _same(src, tmp_path / "out")
    assert f"(from the edges: {lab.edge_address(2)} 100%)" in said, said  # where the bytes came from


async def test_a_revoked_device_is_cut_off_at_the_edges_within_seconds(tmp_path: Path, lab: FabricLab) -> None:
    from portalfs.device import Device
    from portalfs.edge.client import EdgeAddress, connect_edge
    from portalfs.errors import PortalError
    from portalfs.paths import DeviceHome

    a, words = await trio.to_thread.run_sync(_device, tmp_path, "a", lab)
    b, _ = await trio.to_thread.run_sync(_device, tmp_path, "b", lab, words)
    device = Device(DeviceHome.from_environ({"PORTAL_HOME": str(b)}))
    key = device.unlock(None).device
    cert = device.state.device_cert(key.public)
    device.close()
    assert cert is not None
    host, port = lab.edge_address(0).rsplit(":", 1)
    edge = EdgeAddress(host, int(port), bytes.fromhex(lab.edge_key(0)), "tcp")
    async with connect_edge(edge, key, cert) as held:  # b's connection, authenticated before the revocation
        await held.stat()
        await trio.to_thread.run_sync(lambda: ok(a, "device", "revoke", key.public.hex()[:16], input=words))
        revoked = trio.current_time()
        with trio.fail_after(10):
            while True:
                try:
                    await held.stat()
                except PortalError:
                    break
                await trio.sleep(0.1)
        assert trio.current_time() - revoked < 5, "the edge kept serving a revoked device's connection"
    with pytest.raises(PortalError):  # and no new HELLO is accepted
        async with connect_edge(edge, key, cert) as again:
            await again.stat()


def test_with_one_of_two_edges_down_a_sync_publishes_and_the_missing_copies_follow(tmp_path: Path) -> None:
    from .fabricutil import start

    with fabric(tmp_path / "fabric", edges=2) as lab:
        a, words = _device(tmp_path, "a", lab)
        ok(a, "portal", "create", "p")
        (tmp_path / "f.txt").write_text("placed while an edge is down\n")
        ok(a, "put", "p", str(tmp_path / "f.txt"))
        data = lab.edges[1].data
        lab.edges[1].stop()
        synced = json.loads(ok(a, "sync", "p", "--json"))[0]  # R = 2, one edge: published on the one that answers
        assert synced["published"] == 1 and synced["underplaced"] > 0
        assert "wait for more edges" in ok(a, "sync", "p")  # still short, and said so
        b, _ = _device(tmp_path, "b", lab, words)
        ok(b, "get", "p", str(tmp_path / "out-b"))
        assert (tmp_path / "out-b" / "f.txt").read_text() == "placed while an edge is down\n"

        lab.edges[1] = start(["edge", "serve", "--data", str(data), "--listen", "127.0.0.1:0", "--hub", lab.hub_url,
                              "--quota", "0"], data)  # fmt: skip
        healed = json.loads(ok(a, "sync", "p", "--json"))[0]  # the edge is back: the missing copies are made
        assert healed["underplaced"] == 0
        assert lab.edge_objects(0) == lab.edge_objects(1)


@needs_fuse
def test_a_paused_portal_syncs_nothing_in_the_background_until_resumed(tmp_path: Path, lab: FabricLab) -> None:
    a, b = _two_devices_with(tmp_path, lab, "live")
    fails(a, 3, "pause", "nowhere")
    ok(a, "pause", "live")
    assert [p["paused"] for p in json.loads(ok(a, "status", "--json"))["portals"]] == [True]
    with mounted(a, "live", tmp_path / "mnt-a") as on_a:
        (on_a / "held.txt").write_text("written while paused\n")
        synced = json.loads(ok(a, "sync", "live", "--json"))[0]
        assert synced["paused"] is True and synced["published"] == 0
        assert json.loads(ok(b, "sync", "--json"))[0]["pulled"] == 0  # nothing left this device
        ok(a, "resume")  # every portal
        deadline = time.monotonic() + 30
        while not json.loads(ok(b, "sync", "--json"))[0]["pulled"]:  # the mount publishes once it sees the resume
            assert time.monotonic() < deadline, "the mount did not publish after the resume"
            time.sleep(0.2)
    ok(b, "get", "live", str(tmp_path / "held.txt"), "--path", "held.txt")
    assert (tmp_path / "held.txt").read_text() == "written while paused\n"
