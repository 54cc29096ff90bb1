"""portalctl, run for real: subprocesses, temporary PORTAL_HOMEs, real SQLite and object files."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from portalfs import encoding, keys
from portalfs.sealing import object_id
from portalfs.store import LocalStore

from .mountutil import fill, small_disk
from .storeutil import held, largest


def portalctl(
    home: Path,
    *args: str,
    input: str | None = None,
    env: dict[str, str] | None = None,
    enter: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess:
    """Run portalctl with ``home`` as PORTAL_HOME (in the network namespace ``enter`` moves it to)."""
    full_env = {k: v for k, v in os.environ.items() if k != "PORTAL_PASSPHRASE"}
    full_env["PORTAL_HOME"] = str(home)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "portalfs.cli.portalctl", *args],
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        preexec_fn=enter,
    )


def ok(home: Path, *args: str, **kw: object) -> str:
    result = portalctl(home, *args, **kw)  # type: ignore[arg-type]
    assert result.returncode == 0, result.stderr
    return result.stdout


def fails(home: Path, code: int, *args: str, match: str = "", **kw: object) -> str:
    result = portalctl(home, *args, **kw)  # type: ignore[arg-type]
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("portalctl: "), result.stderr
    assert "Traceback" not in result.stderr
    assert match in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    ok(h, "init", "--no-passphrase")
    ok(h, "portal", "create", "docs")
    return h


def make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").write_bytes(b"")
    (root / "small.txt").write_text("hello, portal\n")
    (root / "sub" / "big.bin").write_bytes(os.urandom(5 * 1024 * 1024 + 17))
    (root / "sub" / "deeper" / "text.md").write_bytes(b"lorem ipsum dolor sit amet\n" * 50000)
    (root / "link").symlink_to("small.txt")
    os.chmod(root / "small.txt", 0o640)
    os.utime(root / "sub" / "big.bin", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.setxattr(root / "small.txt", "user.color", b"blue")


def assert_same_tree(a: Path, b: Path) -> None:
    names_a = sorted(p.relative_to(a) for p in a.rglob("*"))
    names_b = sorted(p.relative_to(b) for p in b.rglob("*"))
    assert names_a == names_b
    for rel in names_a:
        pa, pb = a / rel, b / rel
        sa, sb = pa.lstat(), pb.lstat()
        assert stat.S_IFMT(sa.st_mode) == stat.S_IFMT(sb.st_mode), rel
        if pa.is_symlink():
            assert os.readlink(pa) == os.readlink(pb)
            continue
        assert stat.S_IMODE(sa.st_mode) == stat.S_IMODE(sb.st_mode), rel
        assert sa.st_mtime_ns == sb.st_mtime_ns, rel
        if pa.is_file():
            assert pa.read_bytes() == pb.read_bytes(), rel
        assert {n: os.getxattr(pa, n) for n in os.listxattr(pa)} == {n: os.getxattr(pb, n) for n in os.listxattr(pb)}


# identity


def test_init_prints_24_words_and_recover_reproduces_the_identity(tmp_path: Path) -> None:
    first = tmp_path / "a"
    out = json.loads(ok(first, "init", "--json"))
    assert len(out["words"]) == 24
    fails(first, 4, "init", match="already holds")
    second = tmp_path / "b"
    ok(second, "recover", "--name", "phone", input=" ".join(out["words"]) + "\n")
    a, b = json.loads(ok(first, "whoami", "--json")), json.loads(ok(second, "whoami", "--json"))
    assert a["fingerprint"] == b["fingerprint"] == out["fingerprint"]
    assert a["device"] != b["device"] and b["device_name"] == "phone"
    assert stat.S_IMODE((second / "keys" / "secrets").stat().st_mode) == 0o600


def _checksum_holds(words: str) -> bool:
    try:
        keys.root_from_words(words)
    except keys.BadRecoveryPhrase:
        return False
    return True


def test_wrong_recovery_words_are_refused(tmp_path: Path) -> None:
    words = json.loads(ok(tmp_path / "a", "init", "--json"))["words"]
    # The checksum is 8 bits: one swap in 256 still passes it, so take the first that does not.
    for i in range(23):
        swapped = [*words[:i], words[i + 1], words[i], *words[i + 2 :]]
        if swapped != words and not _checksum_holds(" ".join(swapped)):
            words = swapped
            break
    fails(tmp_path / "b", 6, "recover", match="recovery phrase", input=" ".join(words))
    fails(tmp_path / "b", 5, "whoami", match="no identity")


def test_passphrase_protects_the_key_file(tmp_path: Path) -> None:
    home, pw, bad = tmp_path / "h", tmp_path / "pw", tmp_path / "bad"
    pw.write_text("correct horse battery staple\n")
    bad.write_text("wrong\n")
    ok(home, "--passphrase-file", str(pw), "init")
    ok(home, "whoami")  # public facts need no passphrase
    fails(home, 7, "portal", "create", "x", match="passphrase")
    fails(home, 7, "--passphrase-file", str(bad), "portal", "create", "x", match="wrong passphrase")
    ok(home, "--passphrase-file", str(pw), "portal", "create", "x")
    ok(home, "portal", "create", "y", env={"PORTAL_PASSPHRASE": "correct horse battery staple"})


# put, get, log


def test_put_get_round_trip_keeps_content_and_metadata(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    put = json.loads(ok(home, "put", "docs", str(src) + "/", "--json"))
    assert put["version"] == 1 and put["files"] == 4 and put["symlinks"] == 1
    dest = tmp_path / "dest"
    ok(home, "get", "docs", str(dest))
    assert_same_tree(src, dest)
    check = ok(home, "check", "docs")
    assert "verified" in check
    # put --sync on a device with no hub: refused before anything is put
    fails(home, 2, "put", "docs", str(src / "small.txt"), "--sync", match="no hub")
    assert [v["version"] for v in json.loads(ok(home, "log", "docs", "--json"))] == [1]


def test_names_of_255_bytes_are_put_and_got(home: Path, tmp_path: Path) -> None:
    """A name may take 255 bytes: `get` writes each file under a temporary name before it renames it into
    place, and that name must fit too (a file, a symlink, and a second name of the file)."""
    src = tmp_path / "src"
    src.mkdir()
    long = "n" * 250
    (src / f"{long}.file").write_text("long name")
    (src / f"{long}.link").symlink_to(f"{long}.file")
    os.link(src / f"{long}.file", src / f"{long}.hard")
    ok(home, "put", "docs", str(src) + "/")
    dest = tmp_path / "dest"
    ok(home, "get", "docs", str(dest))
    assert_same_tree(src, dest)
    assert sorted(os.listdir(dest)) == [f"{long}.file", f"{long}.hard", f"{long}.link"]  # no temporary left


def test_put_by_name_versions_and_log(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("one")
    ok(home, "put", "docs", str(folder))
    (folder / "a.txt").write_text("two, longer")
    ok(home, "put", "docs", str(folder))
    log = json.loads(ok(home, "log", "docs", "--json"))
    assert [v["version"] for v in log] == [1, 2]
    assert [v["size"] for v in log] == [3, 11]
    text = ok(home, "log", "docs")
    assert text.splitlines()[0].startswith("v2\t")
    out = tmp_path / "old.txt"
    ok(home, "get", "docs", str(out), "--path", "folder/a.txt", "--version", "1")
    assert out.read_text() == "one"
    fails(home, 4, "get", "docs", str(out), "--path", "folder/a.txt", match="already exists")
    ok(home, "get", "docs", str(out), "--path", "folder/a.txt", "--overwrite")
    assert out.read_text() == "two, longer"


def test_unchanged_files_are_not_read_again_and_duplicates_stored_once(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    payload = os.urandom(3 * 1024 * 1024)
    (src / "one.bin").write_bytes(payload)
    (src / "two.bin").write_bytes(payload)
    for p in src.iterdir():  # old enough for the files cache to trust
        os.utime(p, ns=(1_600_000_000_000_000_000,) * 2)
    first = json.loads(ok(home, "put", "docs", str(src) + "/", "--json"))
    assert first["bytes_read"] == 2 * len(payload)
    assert first["bytes_stored"] < len(payload) * 1.1  # the duplicate cost nothing
    second = json.loads(ok(home, "put", "docs", str(src) + "/", "--json"))
    assert second["bytes_read"] == 0 and second["bytes_reused"] == 2 * len(payload)
    assert second["chunks_stored"] == 0
    (src / "one.bin").write_bytes(payload[:1000] + b"changed" + payload[1000:])
    third = json.loads(ok(home, "put", "docs", str(src) + "/", "--json"))
    assert third["bytes_read"] == len(payload) + 7
    assert third["chunks_stored"] <= 2  # only the chunk around the edit is new


def test_standard_input_is_put_with_fixed_size_chunks(home: Path, tmp_path: Path) -> None:
    text = "".join(f"row {i}, a line of a database dump\n" for i in range(120_000))  # about 4.3 MB
    put = json.loads(ok(home, "put", "docs", "-", "--name", "dump.sql", "--json", input=text))
    assert put["files"] == 1 and put["chunks"] == -(-len(text) // (1024 * 1024))
    out = tmp_path / "dump.sql"
    ok(home, "get", "docs", str(out), "--path", "dump.sql")
    assert out.read_text() == text
    fails(home, 2, "put", "docs", "-", match="--name", input="x")
    fails(home, 2, "put", "docs", "-", "--name", "a/b", input="x", match="a/b")


@pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0, reason="the demo mounts")
def test_demo_is_the_main_job(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    mnt = home / "mnt" / "demo"
    out = ok(home, "demo")
    try:
        assert "Identity:" in out and "portalctl log demo" in out and "\nv1\t" in out
        assert f"portalctl unmount {mnt}" in out
        assert (mnt / "portalfs" / "cli" / "portalctl.py").is_file()
        assert "already mounted" in ok(home, "demo")
    finally:
        ok(home, "unmount", str(mnt))
    out = ok(home, "demo")
    try:
        assert "unchanged since demo v1" in out and "Identity:" not in out  # the same folder: no new version
    finally:
        ok(home, "unmount", str(mnt))


# bad input


def test_unknown_portal_version_and_path(home: Path, tmp_path: Path) -> None:
    fails(home, 3, "log", "nope", match="no portal named 'nope'")
    fails(home, 3, "get", "docs", str(tmp_path / "x"), match="no versions")
    (tmp_path / "f").write_text("x")
    ok(home, "put", "docs", str(tmp_path / "f"))
    fails(home, 3, "get", "docs", str(tmp_path / "x"), "--version", "9", match="no version 9")
    fails(home, 3, "get", "docs", str(tmp_path / "x"), "--path", "missing", match="'missing'")
    fails(home, 2, "portal", "create", "bad/name", match="invalid portal name")
    fails(home, 4, "portal", "create", "docs", match="already exists")


def test_unreadable_source_records_no_version(home: Path, tmp_path: Path) -> None:
    fails(home, 11, "put", "docs", str(tmp_path / "does-not-exist"), match="does-not-exist")
    assert json.loads(ok(home, "log", "docs", "--json")) == []


def test_a_flipped_bit_in_a_chunk_is_named_and_nothing_half_restored(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "data.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    ok(home, "put", "docs", str(src) + "/")
    victim = largest(home)
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x04
    victim.write_bytes(bytes(raw))
    fails(home, 8, "check", "docs", match=victim.name)
    dest = tmp_path / "dest"
    dest.mkdir()
    fails(home, 8, "get", "docs", str(dest), match=victim.name)
    assert list(dest.iterdir()) == []


def test_a_missing_chunk_is_reported(home: Path, tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_bytes(os.urandom(1024 * 1024))
    ok(home, "put", "docs", str(tmp_path / "data.bin"))
    victim = largest(home)
    victim.unlink()
    fails(home, 9, "get", "docs", str(tmp_path / "dest"), match=victim.name)


def test_a_root_record_with_a_bad_signature_is_refused(home: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    ok(home, "put", "docs", str(tmp_path / "f"))
    db = sqlite3.connect(home / "state.db")
    record = encoding.decode(db.execute("SELECT record FROM versions").fetchone()[0])
    record["sig"] = record["sig"][:10] + bytes([record["sig"][10] ^ 1]) + record["sig"][11:]
    db.execute("UPDATE versions SET record = ?", (encoding.encode(record),))
    db.commit()
    db.close()
    fails(home, 8, "log", "docs", match="signature")
    fails(home, 8, "get", "docs", str(tmp_path / "out"), match="signature")


def test_gc_removes_orphans_and_keeps_every_live_version(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(600_000))
    ok(home, "put", "docs", str(src) + "/")
    (src / "a.bin").write_bytes(os.urandom(600_000))
    ok(home, "put", "docs", str(src) + "/")
    store = LocalStore(home / "store")
    orphan = os.urandom(1000)
    store.put(object_id(orphan), orphan)
    store.close()
    before = len(held(home))
    dry = json.loads(ok(home, "gc", "--dry-run", "--json"))
    assert dry["removed"] == 1 and len(held(home)) == before
    report = json.loads(ok(home, "gc", "--json"))
    assert report["removed"] == 1 and report["live"] == before - 1
    assert "2 versions" in ok(home, "check", "docs")
    ok(home, "get", "docs", str(tmp_path / "v1"), "--version", "1")


def test_a_full_disk_fails_cleanly(tmp_path: Path) -> None:
    with small_disk(tmp_path / "small") as mnt:
        home = mnt / "home"
        ok(home, "init", "--no-passphrase")
        ok(home, "portal", "create", "docs")
        (tmp_path / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))
        fails(home, 10, "put", "docs", str(tmp_path / "big.bin"), match="no space left")
        assert json.loads(ok(home, "log", "docs", "--json")) == []
        assert list((home / "store" / "tmp").iterdir()) == []
        filler = fill(mnt)  # what the put left free varies with its chunks: none at all
        ok(home, "gc")  # the device's reserve makes it room to open its databases
        filler.unlink()
        (tmp_path / "small.txt").write_text("fits")
        ok(home, "put", "docs", str(tmp_path / "small.txt"))
        ok(home, "check", "docs")


# what a new user and a hostile tester tried


def test_whoami_prints_the_identity_key_that_share_takes(home: Path) -> None:
    key = json.loads(ok(home, "whoami", "--json"))["identity"]
    assert len(key) == 64 and key in ok(home, "whoami")


def test_a_cache_limit_too_large_to_hold_is_refused(home: Path) -> None:
    fails(home, 2, "cache", "--limit", "99999999999999999999G", match="too large")
    fails(home, 2, "cache", "--limit", "9" * 400, match="is not a size")


def test_a_fifo_or_a_device_is_refused_and_makes_no_version(home: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    fails(home, 11, "put", "docs", str(fifo), match="a FIFO")
    fails(home, 11, "put", "docs", "/dev/null", match="a character device")
    assert json.loads(ok(home, "log", "docs", "--json")) == []


def test_special_files_inside_a_directory_are_kept_as_nodes_and_restored(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    os.mkfifo(src / "pipe", 0o600)  # a source named on the command line is refused; one inside is a node
    os.mknod(src / "tty", stat.S_IFCHR | 0o620, os.makedev(5, 0))
    ok(home, "put", "docs", f"{src}/")
    out = tmp_path / "out"
    ok(home, "get", "docs", str(out))
    assert stat.S_ISFIFO(os.lstat(out / "pipe").st_mode) and stat.S_IMODE(os.lstat(out / "pipe").st_mode) == 0o600
    assert os.lstat(out / "tty").st_rdev == os.makedev(5, 0) and (out / "a.txt").read_text() == "a\n"


def test_putting_the_same_files_again_makes_no_new_version(home: Path, tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    ok(home, "put", "docs", str(tmp_path / "src"))
    again = json.loads(ok(home, "put", "docs", str(tmp_path / "src"), "--json"))
    assert again["unchanged"] and again["version"] == 1
    assert "unchanged" in ok(home, "put", "docs", str(tmp_path / "src"))
    assert len(json.loads(ok(home, "log", "docs", "--json"))) == 1
    (tmp_path / "src" / "small.txt").write_text("changed\n")
    assert json.loads(ok(home, "put", "docs", str(tmp_path / "src"), "--json"))["version"] == 2


def test_a_file_whose_size_its_file_system_does_not_know_is_stored_whole(home: Path, tmp_path: Path) -> None:
    proc = Path("/proc/version")
    assert proc.stat().st_size == 0
    ok(home, "put", "docs", str(proc))
    ok(home, "get", "docs", str(tmp_path / "out"))
    assert (tmp_path / "out" / "version").read_bytes() == proc.read_bytes() != b""


def test_a_bad_version_to_mount_is_a_mount_error(home: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    ok(home, "put", "docs", str(tmp_path / "f"))
    (tmp_path / "mnt").mkdir()
    fails(home, 13, "mount", "docs@99", str(tmp_path / "mnt"), match="no version 99")
    fails(home, 13, "mount", "docs@x", str(tmp_path / "mnt"), match="positive number")


def test_a_long_name_is_not_echoed_whole(home: Path, tmp_path: Path) -> None:
    name = "n" * 5000
    for line in (
        fails(home, 2, "portal", "create", name, match="invalid portal name"),
        fails(home, 3, "log", name, match="no portal named"),
    ):
        assert len(line) < 300 and "5000 characters" in line


def test_a_destination_whose_parent_is_missing_is_named_as_missing(home: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    ok(home, "put", "docs", str(tmp_path / "f"))
    fails(home, 3, "get", "docs", str(tmp_path / "nodir" / "out"), match="nodir does not exist")
    (tmp_path / "plain").write_text("a file")
    fails(home, 3, "get", "docs", str(tmp_path / "plain" / "out"), match="plain is not a directory")


def test_a_portal_deleted_on_a_device_alone_is_restorable_then_gc_forgets_it(home: Path, tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    ok(home, "put", "docs", str(tmp_path / "src"))
    ok(home, "portal", "create", "kept")
    fails(home, 2, "portal", "delete", "docs", match="--yes")  # no terminal to confirm on: nothing deleted
    assert "brings it back until" in ok(home, "portal", "delete", "docs", "--yes")
    assert "deleted (restorable until" in ok(home, "portal", "ls")
    assert "deleted portals" not in ok(home, "gc") and held(home)  # within the grace period: all kept
    ok(home, "portal", "restore", "docs")
    fails(home, 2, "portal", "restore", "docs", match="not deleted")
    ok(home, "check", "docs")

    ok(home, "portal", "delete", "docs", "--yes")
    portal = json.loads(ok(home, "portal", "ls", "--json"))[0]["id"]
    with sqlite3.connect(home / "state.db") as db:  # the grace period has passed
        db.execute("UPDATE meta SET value = ? WHERE key = ?", (b"1", f"deleted:{portal}"))
    assert "removed the deleted portals docs" in ok(home, "gc")
    assert [p["name"] for p in json.loads(ok(home, "portal", "ls", "--json"))] == ["kept"]
    assert held(home) == []  # what only docs reached is gone with it
    fails(home, 3, "log", "docs", match="no portal named")
