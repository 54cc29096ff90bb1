"""Who may take part, with real processes on loopback: edges serve a hub's devices only once its operator
admitted them (`portal-hub edge`), a device places copies only on admitted edges and spreads them across
operators, and an edge the operator removes is cut off (docs/design.md, sections 11 and 13)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .fabricutil import Server, edge_held, fabric, start, wait_for_log
from .test_cli import ok


def _hub_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portalfs.cli.servers", "hub", *args], capture_output=True, text=True, timeout=60
    )


def _held(data: Path) -> set[str]:
    """The ids of the objects the edge keeping its data in ``data`` stores."""
    return set(edge_held(data))


def test_only_admitted_edges_get_copies_spread_across_operators_and_a_removed_one_is_cut_off(tmp_path: Path) -> None:
    operators = ["acme", "acme", "bolt", "bolt"]
    strangers: list[Server] = []
    with fabric(tmp_path / "fabric", edges=4, operators=operators) as lab:
        db = str(lab.root / "hub.db")
        try:
            for i in range(3):  # anyone may start an edge and point it at the hub
                data = tmp_path / f"stranger{i}"
                strangers.append(start(["edge", "serve", "--data", str(data), "--listen", "127.0.0.1:0",
                                        "--hub", lab.hub_url], data))  # fmt: skip
            for stranger in strangers:
                wait_for_log(stranger, "not admitted at the hub")
            listed = json.loads(_hub_cli("edge", "ls", "--db", db, "--json").stdout)
            waiting = {row["key"] for row in listed if row["state"] == "waiting"}
            assert waiting == {s.line.rsplit(" ", 1)[1] for s in strangers}
            assert {row["operator"] for row in listed if row["state"] == "admitted"} == {"acme", "bolt"}

            src = tmp_path / "src"
            src.mkdir()
            for i in range(16):
                (src / f"part{i}.bin").write_bytes(os.urandom(200_000))
            a = tmp_path / "a"
            words = " ".join(json.loads(ok(a, "init", "--no-passphrase", "--json"))["words"])
            ok(a, "hub", "add", lab.hub_url)
            edges = json.loads(ok(a, "edge", "ls", "--json"))
            assert {e["key"] for e in edges} == {lab.edge_key(i) for i in range(4)}  # no stranger among them
            ok(a, "edge", "replicas", "2")
            ok(a, "portal", "create", "docs")
            ok(a, "put", "docs", f"{src}/")
            ok(a, "sync")

            assert all(_held(s.data) == set() for s in strangers)  # not one copy on an edge nobody admitted
            held = [_held(lab.edges[i].data) for i in range(4)]
            ids = set().union(*held)
            assert len(ids) > 16
            for cid in ids:  # two copies, one with each operator
                assert sorted(operators[i] for i in range(4) if cid in held[i]) == ["acme", "bolt"], cid

            # the operator admits a stranger, then takes it back: removed, it serves the hub's devices no more
            newcomer = strangers[0]
            key = newcomer.line.rsplit(" ", 1)[1]
            assert _hub_cli("edge", "approve", key, "--operator", "cask", "--db", db).returncode == 0
            wait_for_log(newcomer, "admitted at the hub: serving its devices", timeout=30)
            b = tmp_path / "b"
            ok(b, "recover", "--no-passphrase", input=words)
            ok(b, "hub", "add", lab.hub_url)
            assert key in {e["key"] for e in json.loads(ok(b, "edge", "ls", "--json"))}
            removed = _hub_cli("edge", "remove", key, "--db", db)
            assert removed.returncode == 0, removed.stderr
            deadline = time.monotonic() + 30
            while key in {e["key"] for e in json.loads(ok(b, "edge", "ls", "--json"))}:
                assert time.monotonic() < deadline, "a removed edge is still given to devices"
                time.sleep(0.2)
            ok(b, "get", "docs", str(tmp_path / "out"))
            assert all((tmp_path / "out" / p.name).read_bytes() == p.read_bytes() for p in src.iterdir())

            again = _hub_cli("edge", "remove", key, "--db", db)
            assert again.returncode == 3 and again.stderr.strip().count("\n") == 0, again.stderr
            bad = _hub_cli("edge", "approve", "not-a-key", "--db", db)
            assert bad.returncode == 2 and bad.stderr.startswith("portal-hub: "), bad.stderr
            assert "Traceback" not in bad.stderr + again.stderr
        finally:
            for stranger in strangers:
                stranger.stop()


def test_no_device_keeps_the_identity_root_so_a_revoked_one_cannot_certify_another(tmp_path: Path) -> None:
    """A revoked device once minted a device key of its own, certified it with the root in its key file and
    enrolled again. Now the root lives in the words (and, by choice, under a passphrase): the identity's
    signing key is nowhere in a device's home, and what signs for the identity asks for the words."""
    from portalfs.device import Device
    from portalfs.errors import RootNotKept
    from portalfs.keys import Identity, root_from_words
    from portalfs.paths import DeviceHome

    from .test_cli import fails

    with fabric(tmp_path / "fabric", edges=1) as lab:
        a = tmp_path / "a"
        words = " ".join(json.loads(ok(a, "init", "--no-passphrase", "--json"))["words"])
        ok(a, "hub", "add", lab.hub_url)
        b = tmp_path / "b"
        ok(b, "recover", "--no-passphrase", input=words)
        ok(b, "hub", "add", lab.hub_url)
        identity = Identity(root_from_words(words))
        secret = {"root": identity.root, "signing key": identity.signing_key.private_bytes_raw()}
        for home in (a, b):
            for path in home.rglob("*"):
                if path.is_file():
                    data = path.read_bytes()
                    assert not [what for what, needle in secret.items() if needle in data], path

        b_device = json.loads(ok(b, "whoami", "--json"))["device"]
        fails(a, 2, "device", "revoke", b_device, match="24 recovery words")  # nothing to sign it with
        ok(a, "device", "revoke", b_device, input=words)
        held = Device(DeviceHome.from_environ({"PORTAL_HOME": str(b)}))
        try:  # all the revoked device holds of its identity cannot certify a key
            with pytest.raises(RootNotKept):
                held.unlock(None).identity.signing_key  # noqa: B018 - the property raises
        finally:
            held.close()
        fails(b, 15, "sync", match="revoked")

        c = tmp_path / "c"  # the choice to keep it: under a passphrase, and then no words are asked
        env = {"PORTAL_PASSPHRASE": "a long passphrase"}
        fails(c, 2, "recover", "--no-passphrase", "--keep-root", input=words, match="passphrase")
        ok(c, "recover", "--keep-root", input=words, env=env)
        assert not any(identity.root in p.read_bytes() for p in c.rglob("*") if p.is_file())
        ok(c, "hub", "add", lab.hub_url, env=env)
        ok(c, "device", "revoke", json.loads(ok(a, "whoami", "--json"))["device"], env=env)
        fails(a, 15, "sync", match="revoked")
        assert json.loads(ok(c, "forget-root", "--json", env=env))["dropped"]  # and the choice undone
        kept = Device(DeviceHome.from_environ({"PORTAL_HOME": str(c)}))
        try:
            assert kept.unlock("a long passphrase").identity.root is None
        finally:
            kept.close()
        assert not json.loads(ok(c, "forget-root", "--json", env=env))["dropped"]


def test_a_device_approved_from_another_reads_the_portals_without_the_words_and_a_strangers_approval_fails(
    tmp_path: Path,
) -> None:
    from portalfs.keys import Identity, root_from_words

    from .test_cli import fails

    def join(home: Path, url: str, identity: str) -> tuple[subprocess.Popen[str], str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "portalfs.cli.portalctl", "join", url, "--identity", identity, "--no-passphrase",
             "--json", "--wait", "60"],
            env={**os.environ, "PORTAL_HOME": str(home)}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert process.stdout is not None
        return process, json.loads(process.stdout.readline())["code"]

    with fabric(tmp_path / "fabric", edges=1) as lab:
        a = tmp_path / "a"
        words = " ".join(json.loads(ok(a, "init", "--no-passphrase", "--json"))["words"])
        ok(a, "hub", "add", lab.hub_url)
        ok(a, "portal", "create", "docs")
        (tmp_path / "note.txt").write_text("approved, not recovered\n")
        ok(a, "put", "docs", str(tmp_path / "note.txt"))
        ok(a, "sync")
        identity = json.loads(ok(a, "whoami", "--json"))["identity"]
        x = tmp_path / "x"  # a device revoked before: the approval hands over the key generation it made
        ok(x, "recover", "--no-passphrase", input=words)
        ok(x, "hub", "add", lab.hub_url)
        ok(a, "device", "revoke", json.loads(ok(x, "whoami", "--json"))["device"], input=words)

        b = tmp_path / "b"
        process, code = join(b, lab.hub_url, identity)
        try:
            last = code[-1]
            tampered = code[:-1] + ("a" if last != "a" else "b")  # the check no longer names b's keys
            fails(a, 8, "device", "approve", tampered, input=words, match="not approved")
            fails(a, 2, "device", "approve", "not-a-code", input=words, match="device code")
            ok(a, "device", "approve", code, "--name", "phone", input=words)
            assert process.wait(timeout=60) == 0, process.stderr.read() if process.stderr else ""
        finally:
            process.kill()
        ok(b, "get", "docs", str(tmp_path / "out"))
        assert (tmp_path / "out" / "note.txt").read_text() == "approved, not recovered\n"
        root = Identity(root_from_words(words)).root
        assert not any(root in p.read_bytes() for p in b.rglob("*") if p.is_file())
        names = {d["device"]: d["name"] for d in json.loads(ok(a, "device", "ls", "--json"))}
        assert names[json.loads(ok(b, "whoami", "--json"))["device"]] == "phone"

        s = tmp_path / "s"  # a stranger answers c's request: c refuses to become the stranger's device
        stranger_words = " ".join(json.loads(ok(s, "init", "--no-passphrase", "--json"))["words"])
        ok(s, "hub", "add", lab.hub_url)
        c = tmp_path / "c"
        process, code = join(c, lab.hub_url, identity)
        try:
            ok(s, "device", "approve", code, input=stranger_words)
            assert process.wait(timeout=60) == 8
            assert "another identity" in (process.stderr.read() if process.stderr else "")
        finally:
            process.kill()
        fails(c, 5, "whoami")  # it holds no identity


def test_revoking_a_device_rotates_what_it_could_read_and_the_words_still_open_everything(tmp_path: Path) -> None:
    """A revoked device kept the keyring and agreement keys and the portals' read keys: a keyring, a grant or a
    version it came by another way (a copy of the hub's database) still opened. Revoking now makes the identity's
    next key generation and rotates the read keys of its portals: nothing written after opens with what the
    revoked device holds, while the devices kept, a member, and a device recovered from the words read it all."""
    import sqlite3

    from portalfs.device import Device
    from portalfs.errors import IntegrityError
    from portalfs.fabric.grants import open_keyring, unwrap_for_identity
    from portalfs.paths import DeviceHome
    from portalfs.root import RootRecord

    def secrets_of(home: Path) -> Any:
        device = Device(DeviceHome.from_environ({"PORTAL_HOME": str(home)}))
        try:
            secrets = device.unlock(None)
            return secrets, {row.name: secrets.unwrap_portal_key(row) for row in device.state.portals()}
        finally:
            device.close()

    with fabric(tmp_path / "fabric", edges=1) as lab:
        hub_db = lab.root / "hub.db"
        a, b, member = tmp_path / "a", tmp_path / "b", tmp_path / "member"
        words = " ".join(json.loads(ok(a, "init", "--no-passphrase", "--json"))["words"])
        ok(a, "hub", "add", lab.hub_url)
        ok(a, "portal", "create", "docs")
        (tmp_path / "before.txt").write_text("written before the revocation\n")
        ok(a, "put", "docs", str(tmp_path / "before.txt"))
        ok(member, "init", "--no-passphrase")
        ok(member, "hub", "add", lab.hub_url)
        ok(a, "share", "docs", "--with", json.loads(ok(member, "whoami", "--json"))["identity"])
        ok(a, "sync")
        ok(b, "recover", "--no-passphrase", input=words)
        ok(b, "hub", "add", lab.hub_url)
        ok(b, "get", "docs", str(tmp_path / "b-before"))
        stolen, stolen_keys = secrets_of(b)  # all the device to be revoked holds
        assert stolen.generation_number == 0
        sharer = tmp_path / "sharer"  # another identity, which shares with this one before and after
        ok(sharer, "init", "--no-passphrase")
        ok(sharer, "hub", "add", lab.hub_url)
        for name in ("gift", "later"):
            ok(sharer, "portal", "create", name)
        identity = json.loads(ok(a, "whoami", "--json"))["identity"]
        ok(sharer, "share", "gift", "--with", identity)
        with sqlite3.connect(hub_db) as db:
            old_key = db.execute("SELECT agreement, agreement_sig FROM identities WHERE identity = ?",
                                 (bytes.fromhex(identity),)).fetchone()  # fmt: skip

        ok(a, "portal", "create", "notes")  # not at the hub yet: its key rotates all the same
        ok(a, "device", "revoke", json.loads(ok(b, "whoami", "--json"))["device"], input=words)
        (tmp_path / "after.txt").write_text("written after the revocation\n")
        ok(a, "put", "docs", str(tmp_path / "after.txt"))
        ok(a, "sync")
        kept, kept_keys = secrets_of(a)
        assert kept.generation_number == 1 and kept_keys["docs"] != stolen_keys["docs"]

        ok(sharer, "share", "gift", "--with", identity)  # to generation 1's agreement key, which it now knows
        with sqlite3.connect(hub_db) as db:  # a hub that hands out the agreement key the revoked device holds
            db.execute("UPDATE identities SET agreement = ?, agreement_sig = ?, generation = 0 WHERE identity = ?",
                       (*old_key, bytes.fromhex(identity)))  # fmt: skip
        fails_rollback = subprocess.run(
            [sys.executable, "-m", "portalfs.cli.portalctl", "share", "later", "--with", identity],
            capture_output=True, text=True, env={**os.environ, "PORTAL_HOME": str(sharer)}, timeout=60,
        )  # fmt: skip
        assert fails_rollback.returncode == 8 and "older than 1 seen before" in fails_rollback.stderr
        with sqlite3.connect(hub_db) as db:  # what the revoked device could come by: the hub's whole database
            keyring = db.execute("SELECT blob FROM keyrings").fetchone()[0]
            head = max(db.execute("SELECT version, record FROM roots"))[1]
            grants = {bytes(p): bytes(w) for p, w in db.execute("SELECT portal, wrapped FROM members")}
            sealed_to = {d for (d,) in db.execute("SELECT device FROM generation_seals")}
        assert kept.device.public in sealed_to and stolen.device.public not in sealed_to
        with pytest.raises(IntegrityError):
            open_keyring(stolen, keyring)
        assert open_keyring(kept, keyring)[1]  # written back under the new generation's key
        with pytest.raises(IntegrityError):
            RootRecord.from_bytes(head).open(stolen_keys["docs"])
        assert RootRecord.from_bytes(head).open(kept_keys["docs"])
        member_secrets, _ = secrets_of(member)
        portal = next(bytes.fromhex(p["id"]) for p in open_keyring(kept, keyring)[0]["portals"] if p["name"] == "docs")
        assert unwrap_for_identity(member_secrets, portal, grants[portal]).keys == kept_keys["docs"]  # re-given
        fails_b = subprocess.run([sys.executable, "-m", "portalfs.cli.portalctl", "sync"], capture_output=True,
                                 text=True, env={**os.environ, "PORTAL_HOME": str(b)}, timeout=60)  # fmt: skip
        assert fails_b.returncode == 15 and "revoked" in fails_b.stderr

        ok(member, "sync")
        ok(member, "get", "docs", str(tmp_path / "member-after"))
        assert (tmp_path / "member-after" / "after.txt").read_text() == "written after the revocation\n"
        c = tmp_path / "c"  # every device lost: the words open generation 1 (its recovery seal) and all before
        ok(c, "recover", "--no-passphrase", input=words)
        ok(c, "hub", "add", lab.hub_url)
        ok(c, "get", "docs", str(tmp_path / "c-after"))
        assert {p.name for p in (tmp_path / "c-after").iterdir()} == {"before.txt", "after.txt"}
        recovered, _ = secrets_of(c)
        assert recovered.generation_number == 1
        with sqlite3.connect(c / "state.db") as db:  # the recovery key is not kept past the first round
            assert db.execute("SELECT count(*) FROM meta WHERE key = 'recovery'").fetchone()[0] == 0
