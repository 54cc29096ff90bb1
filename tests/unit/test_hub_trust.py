"""Who may take part, on the hub's real SQLite file: only edges its operator admitted register, read the device
directory and are handed to devices; strangers learn nothing of an identity (its devices, where its objects
are) and cannot make its lookups name an edge of their choosing (docs/design.md, sections 11 and 13)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from portalfs.fabric.grants import link_redeem_key, redeem_proof
from portalfs.hub import state as hub_state
from portalfs.hub.auth import CLOCK_SKEW_NS
from portalfs.hub.state import Caller, HubState

from .test_hub_policy import MINUTE, NOON, _enrolled, _refusal

STAT = {"capacity": 0, "used": 0, "objects": 0}


@pytest.fixture
def hub(tmp_path: Path) -> HubState:
    return HubState(tmp_path / "hub.db")


def _listed(hub: HubState, caller: Caller) -> list[str]:
    return [e["key"] for e in hub.edges(caller, NOON)]


def test_only_an_admitted_edge_registers_reads_the_directory_and_is_listed(hub: HubState) -> None:
    device = _enrolled(hub, NOON)
    edge = Caller(os.urandom(32), None)
    assert _refusal(hub.register_edge, edge, "10.0.0.9:8471", ["tcp"], STAT, NOON) == (403, "not-admitted")
    assert _refusal(hub.device_directory, edge) == (403, "not-admitted")
    assert _refusal(hub.garbage, edge, NOON) == (403, "not-admitted")
    assert _listed(hub, device) == []
    (waiting,) = hub.admissions(NOON)
    assert (waiting["key"], waiting["state"], waiting["address"]) == (edge.key.hex(), "waiting", "10.0.0.9:8471")

    hub.admit_edge(edge.key, "acme", NOON)
    hub.register_edge(edge, "10.0.0.9:8471", ["tcp"], STAT, NOON)
    assert device.key.hex() in hub.device_directory(edge)
    assert [(e["key"], e["operator"]) for e in hub.edges(device, NOON)] == [(edge.key.hex(), "acme")]
    assert [(a["state"], a["operator"], a["live"]) for a in hub.admissions(NOON)] == [("admitted", "acme", True)]

    assert hub.remove_edge(edge.key, NOON) and not hub.remove_edge(edge.key, NOON)
    assert _refusal(hub.register_edge, edge, "10.0.0.9:8471", ["tcp"], STAT, NOON) == (403, "not-admitted")
    assert _refusal(hub.device_directory, edge) == (403, "not-admitted")
    assert _listed(hub, device) == []  # registered a moment ago, and gone from what devices are given
    assert [a["state"] for a in hub.admissions(NOON)] == ["removed"]
    hub.admit_edge(edge.key, "acme", NOON)  # admitted again
    assert _listed(hub, device) == [edge.key.hex()]


def test_a_key_neither_enrolled_nor_admitted_is_not_told_the_edges(hub: HubState) -> None:
    assert _refusal(hub.edges, Caller(os.urandom(32), None), NOON) == (403, "not-admitted")


def test_the_edges_waiting_for_admission_are_bounded(hub: HubState, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_state, "MAX_WAITING", 3)
    for i in range(5):
        _refusal(hub.register_edge, Caller(bytes([i]) * 32, None), f"10.0.0.{i}:1", ["tcp"], STAT, NOON + i)
    assert [a["address"] for a in hub.admissions(NOON + 5)] == ["10.0.0.2:1", "10.0.0.3:1", "10.0.0.4:1"]


def test_a_hub_from_before_admission_admits_the_edges_it_had(tmp_path: Path) -> None:
    hub = HubState(tmp_path / "hub.db")
    hub.admit_edge(b"E" * 32, "", NOON)
    hub.register_edge(Caller(b"E" * 32, None), "10.0.0.1:1", ["tcp"], STAT, NOON)
    hub.close()
    import sqlite3

    with sqlite3.connect(tmp_path / "hub.db") as db:  # as a hub of hub API revision 3 left it
        db.execute("DROP TABLE admitted")
    hub = HubState(tmp_path / "hub.db")
    assert [(a["key"], a["state"]) for a in hub.admissions(NOON)] == [((b"E" * 32).hex(), "admitted")]


def test_strangers_see_neither_an_identitys_devices_nor_where_its_objects_are(hub: HubState) -> None:
    owner, member, reader, stranger = (_enrolled(hub, NOON) for _ in range(4))
    assert owner.identity and member.identity and reader.identity and stranger.identity
    portal, theirs = b"p" * 16, b"q" * 16
    real, fake = b"R" * 32, b"F" * 32
    cid = os.urandom(32)
    hub.create_portal(owner, portal, None, NOON)
    hub.set_member(owner, portal, member.identity, b"wrapped", False, None, NOON)
    hub.add_locations(owner, portal, real, [cid], NOON)
    # the stranger names the owner's object, in a portal of its own, at an edge of its choosing
    hub.create_portal(stranger, theirs, None, NOON)
    hub.add_locations(stranger, theirs, fake, [cid], NOON)
    assert hub.locations(owner, [cid]) == {cid.hex(): [real.hex()]}
    assert hub.locations(member, [cid]) == {cid.hex(): [real.hex()]}
    assert hub.locations(reader, [cid]) == {}
    assert hub.locations(stranger, [cid]) == {cid.hex(): [fake.hex()]}  # its own record, and no one else's

    assert [d["device"] for d in hub.identity_devices(owner, owner.identity)] == [owner.key.hex()]
    assert [d["device"] for d in hub.identity_devices(member, owner.identity)] == [owner.key.hex()]
    assert _refusal(hub.identity_devices, stranger, owner.identity) == (403, "forbidden")
    assert _refusal(hub.identity_devices, reader, owner.identity) == (403, "forbidden")

    # a link opened with its secret makes its reader one who may look both up
    link, secret = b"L" * 16, b"s" * 32
    hub.create_link(owner, portal, link, b"w", link_redeem_key(secret).public, {})
    hub.redeem(reader, link, redeem_proof(secret, link, reader.key), NOON)
    assert hub.locations(reader, [cid]) == {cid.hex(): [real.hex()]}
    assert [d["device"] for d in hub.identity_devices(reader, owner.identity)] == [owner.key.hex()]
    assert _refusal(hub.identity_devices, stranger, owner.identity) == (403, "forbidden")


def test_a_new_device_is_approved_once_by_an_enrolled_device_and_only_it_reads_the_answer(hub: HubState) -> None:
    from portalfs.keys import DeviceKey, Identity

    identity, device = Identity(os.urandom(32)), DeviceKey(os.urandom(32))
    hub.enroll(Caller(device.public, None), identity.enroll(device.public, "a", NOON).to_bytes(), NOON)
    owner, stranger = hub.caller(device.public), _enrolled(hub, NOON)
    new, box = Caller(os.urandom(32), None), os.urandom(32)
    assert _refusal(hub.request_provisioning, owner, box, NOON) == (409, "exists")  # enrolled already
    request = bytes.fromhex(hub.request_provisioning(new, box, NOON)["id"])
    assert hub.provisioning(owner, request, NOON) == {"device": new.key.hex(), "box": box.hex()}
    assert _refusal(hub.provisioning, new, request, NOON) == (401, "unknown-device")
    assert hub.provisioning_answer(new, request, NOON) is None  # waiting
    assert _refusal(hub.provisioning_answer, owner, request, NOON) == (403, "forbidden")

    other_device = identity.enroll(os.urandom(32), "x", NOON).to_bytes()
    assert _refusal(hub.approve_provisioning, owner, request, other_device, b"s", NOON)[1] == "bad-certificate"
    theirs = identity.enroll(new.key, "x", NOON).to_bytes()  # signed by an identity that is not the stranger's
    assert _refusal(hub.approve_provisioning, stranger, request, theirs, b"s", NOON)[1] == "bad-certificate"
    hub.approve_provisioning(owner, request, theirs, b"sealed", NOON)
    assert hub.provisioning_answer(new, request, NOON) == {"cert": theirs.hex(), "sealed": b"sealed".hex()}
    assert _refusal(hub.approve_provisioning, owner, request, theirs, b"again", NOON) == (409, "exists")
    later = NOON + hub_state.PROVISIONING_NS + 1
    assert _refusal(hub.provisioning_answer, new, request, later) == (404, "not-found")  # forgotten


def test_the_devices_waiting_for_approval_are_bounded(hub: HubState, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_state, "MAX_PROVISIONING", 2)
    for _ in range(2):
        hub.request_provisioning(Caller(os.urandom(32), None), os.urandom(32), NOON)
    assert _refusal(hub.request_provisioning, Caller(os.urandom(32), None), os.urandom(32), NOON)[0] == 429
    later = NOON + hub_state.PROVISIONING_NS + 1  # the old ones forgotten, there is room again
    hub.request_provisioning(Caller(os.urandom(32), None), os.urandom(32), later)


def test_a_nonce_is_refused_again_until_it_expires_and_expiry_reads_an_index(tmp_path: Path) -> None:
    """Every request forgets the nonces past twice the clock window; that reads an index on their times (a full
    scan cost 3.5 ms a request at 100,000 nonces, serialized), also in a hub made before the index was."""
    path = tmp_path / "hub.db"
    HubState(path).close()
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX nonces_by_time")  # as a hub from before it
    hub = HubState(path)
    hub.remember_nonce(b"a" * 16, NOON)
    assert _refusal(hub.remember_nonce, b"a" * 16, NOON + MINUTE) == (401, "replayed")
    hub.remember_nonce(b"b" * 16, NOON + 2 * CLOCK_SKEW_NS + 1)  # "a" is past the window now: forgotten
    hub.remember_nonce(b"a" * 16, NOON + 2 * CLOCK_SKEW_NS + 2)
    hub.close()
    with sqlite3.connect(path) as db:
        plan = db.execute("EXPLAIN QUERY PLAN DELETE FROM nonces WHERE time_ns < ?", (NOON,)).fetchall()
    assert any("USING INDEX nonces_by_time" in row[-1] or "USING COVERING INDEX nonces_by_time" in row[-1]
               for row in plan), plan  # fmt: skip
