"""The hub's policies on a real SQLite file, with explicit time: links (expiry, downloads, window, revocation)
and a portal's lifecycle (active, expired, deactivated) for its owner, its members and its links."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from portalfs.fabric.grants import link_redeem_key, redeem_proof
from portalfs.hub.state import Caller, HubRefusal, HubState
from portalfs.keys import DeviceKey, Identity

NOON = int(datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()) * 10**9
MINUTE = 60 * 10**9
PORTAL = b"p" * 16
LINK, SECRET = b"L" * 16, b"s" * 32
REDEEM_KEY = link_redeem_key(SECRET).public


def _proof(caller: Caller, secret: bytes = SECRET) -> bytes:
    return redeem_proof(secret, LINK, caller.key)


def _enrolled(hub: HubState, now: int) -> Caller:
    identity, device = Identity(os.urandom(32)), DeviceKey(os.urandom(32))
    cert = identity.enroll(device.public, "laptop", now).to_bytes()
    hub.enroll(Caller(device.public, None), cert, now)
    return hub.caller(device.public)


@pytest.fixture
def hub(tmp_path: Path) -> HubState:
    return HubState(tmp_path / "hub.db")


def _refusal(call: object, *args: object) -> tuple[int, str]:
    with pytest.raises(HubRefusal) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value.status, caught.value.code


def test_a_link_opens_until_it_expires(hub: HubState) -> None:
    owner, stranger = _enrolled(hub, NOON), _enrolled(hub, NOON)
    hub.create_portal(owner, PORTAL, None, NOON)
    hub.create_link(owner, PORTAL, LINK, b"wrapped", REDEEM_KEY, {"expires_ns": NOON + MINUTE})
    assert hub.redeem(stranger, LINK, _proof(stranger), NOON + MINUTE - 1)["wrapped"] == b"wrapped".hex()
    assert _refusal(hub.redeem, stranger, LINK, _proof(stranger), NOON + MINUTE) == (410, "expired")


def test_a_link_opens_as_many_times_as_it_allows(hub: HubState) -> None:
    owner, stranger = _enrolled(hub, NOON), _enrolled(hub, NOON)
    hub.create_portal(owner, PORTAL, None, NOON)
    hub.create_link(owner, PORTAL, LINK, b"w", REDEEM_KEY, {"max_downloads": 2})
    hub.redeem(stranger, LINK, _proof(stranger), NOON)
    hub.redeem(owner, LINK, _proof(owner), NOON)
    assert _refusal(hub.redeem, stranger, LINK, _proof(stranger), NOON) == (410, "exhausted")


@pytest.mark.parametrize(
    ("window", "minute", "opens"),
    [("09:00-17:00", 12 * 60, True), ("09:00-17:00", 17 * 60, False), ("09:00-17:00", 8 * 60 + 59, False),
     ("22:00-02:00", 23 * 60, True), ("22:00-02:00", 60, True), ("22:00-02:00", 12 * 60, False)],
)  # fmt: skip
def test_a_link_opens_only_inside_its_utc_window(hub: HubState, window: str, minute: int, opens: bool) -> None:
    owner, stranger = _enrolled(hub, NOON), _enrolled(hub, NOON)
    hub.create_portal(owner, PORTAL, None, NOON)
    hub.create_link(owner, PORTAL, LINK, b"w", REDEEM_KEY, {"window": window})
    now = NOON - 12 * 60 * MINUTE + minute * MINUTE  # that minute of the day, UTC
    if opens:
        hub.redeem(stranger, LINK, _proof(stranger), now)
    else:
        assert _refusal(hub.redeem, stranger, LINK, _proof(stranger), now) == (403, "outside-window")


def test_a_link_is_used_only_by_who_knows_its_secret_and_a_failed_redeem_counts_nothing(hub: HubState) -> None:
    owner, stranger, friend = _enrolled(hub, NOON), _enrolled(hub, NOON), _enrolled(hub, NOON)
    hub.create_portal(owner, PORTAL, None, NOON)
    hub.create_link(owner, PORTAL, LINK, b"w", REDEEM_KEY, {"max_downloads": 1})
    assert _refusal(hub.redeem, stranger, LINK, None, NOON) == (403, "bad-proof")  # the link id alone
    assert _refusal(hub.redeem, stranger, LINK, _proof(stranger, b"x" * 32), NOON) == (403, "bad-proof")
    assert _refusal(hub.redeem, stranger, LINK, _proof(friend), NOON) == (403, "bad-proof")  # another's proof
    assert hub.redeem(friend, LINK, _proof(friend), NOON)["wrapped"] == b"w".hex()  # its one download is left
    assert _refusal(hub.redeem, friend, LINK, _proof(friend), NOON) == (410, "exhausted")


def test_a_revoked_link_and_an_unknown_one_are_refused(hub: HubState) -> None:
    owner, stranger = _enrolled(hub, NOON), _enrolled(hub, NOON)
    hub.create_portal(owner, PORTAL, None, NOON)
    hub.create_link(owner, PORTAL, LINK, b"w", REDEEM_KEY, {})
    hub.revoke_link(owner, b"L" * 16)
    assert _refusal(hub.redeem, stranger, LINK, _proof(stranger), NOON) == (410, "revoked")
    assert _refusal(hub.redeem, stranger, b"?" * 16, None, NOON) == (404, "not-found")


def _edge(hub: HubState) -> Caller:
    edge = Caller(b"E" * 32, None)
    hub.admit_edge(edge.key, "", NOON)
    hub.register_edge(edge, "127.0.0.1:1", ["tcp"], {"capacity": 0, "used": 0, "objects": 0}, NOON)
    return edge


def test_an_expired_or_deactivated_portal_is_closed_to_members_and_links_but_keeps_its_objects(
    hub: HubState,
) -> None:
    owner, member = _enrolled(hub, NOON), _enrolled(hub, NOON)
    hub.create_portal(owner, PORTAL, NOON + MINUTE, NOON)
    assert member.identity is not None
    hub.set_member(owner, PORTAL, member.identity, b"grant", False, None, NOON)
    hub.create_link(owner, PORTAL, LINK, b"w", REDEEM_KEY, {})
    edge = _edge(hub)
    other = b"q" * 16  # a live portal that shares one object with the one that expires
    hub.create_portal(owner, other, None, NOON)
    hub.add_locations(owner, PORTAL, edge.key, [b"only" * 8, b"both" * 8], NOON)
    hub.add_locations(owner, other, edge.key, [b"both" * 8], NOON)
    assert hub.portal_state(PORTAL, NOON) in ("created", "active")
    hub.roots(member, PORTAL, 0, NOON)  # a member reads while it lives
    assert hub.portal_state(PORTAL, NOON + MINUTE) == "expired"
    assert _refusal(hub.roots, member, PORTAL, 0, NOON + MINUTE) == (410, "expired")
    assert _refusal(hub.redeem, member, LINK, _proof(member), NOON + MINUTE) == (410, "expired")
    assert hub.garbage(edge, NOON + MINUTE) == []  # expired: restorable through the grace period
    released = NOON + MINUTE + hub.grace_ns
    assert hub.garbage(edge, released - 1) == []
    assert hub.garbage(edge, released) == [(b"only" * 8).hex()]  # the shared object stays

    hub.set_policy(owner, PORTAL, {"expires_ns": None, "active": False}, NOON + 2 * MINUTE)
    assert hub.portal_state(PORTAL, NOON + 2 * MINUTE) == "deactivated"
    assert hub.garbage(edge, NOON + 1000 * hub.grace_ns) == []  # deactivation is access only: never garbage
    hub.set_policy(owner, PORTAL, {"active": True}, NOON + 3 * MINUTE)
    hub.roots(member, PORTAL, 0, NOON + 3 * MINUTE)
    assert _refusal(hub.set_policy, member, PORTAL, {"active": False}, NOON) == (403, "forbidden")


def test_a_deleted_portal_is_closed_restorable_through_the_grace_period_then_released(hub: HubState) -> None:
    owner, member = _enrolled(hub, NOON), _enrolled(hub, NOON)
    assert member.identity is not None
    hub.create_portal(owner, PORTAL, None, NOON)
    hub.set_member(owner, PORTAL, member.identity, b"grant", False, None, NOON)
    edge = _edge(hub)
    hub.add_locations(owner, PORTAL, edge.key, [b"only" * 8], NOON)
    assert _refusal(hub.delete_portal, member, PORTAL, NOON) == (403, "forbidden")
    info = hub.delete_portal(owner, PORTAL, NOON)
    assert info["state"] == "deleted" and info["release_ns"] == NOON + hub.grace_ns
    assert _refusal(hub.roots, member, PORTAL, 0, NOON) == (410, "deleted")
    assert _refusal(hub.set_policy, owner, PORTAL, {"active": True}, NOON) == (410, "deleted")
    assert hub.garbage(edge, NOON + hub.grace_ns - 1) == []
    assert hub.restore_portal(owner, PORTAL, NOON + hub.grace_ns - 1)["state"] in ("created", "active")
    hub.roots(member, PORTAL, 0, NOON + hub.grace_ns)
    assert hub.garbage(edge, NOON + 2 * hub.grace_ns) == []  # restored: kept for good

    hub.delete_portal(owner, PORTAL, NOON + MINUTE)
    gone = NOON + MINUTE + hub.grace_ns
    assert hub.garbage(edge, gone) == [(b"only" * 8).hex()]
    assert _refusal(hub.restore_portal, owner, PORTAL, gone) == (410, "released")
    hub.forget_locations(edge, [b"only" * 8], gone)
    assert hub.garbage(edge, gone) == []


def test_an_expired_portal_is_restored_without_its_expiry(hub: HubState) -> None:
    owner = _enrolled(hub, NOON)
    hub.create_portal(owner, PORTAL, NOON + MINUTE, NOON)
    assert hub.portal_state(PORTAL, NOON + MINUTE) == "expired"
    info = hub.restore_portal(owner, PORTAL, NOON + 2 * MINUTE)
    assert info["expires_ns"] is None and info["state"] != "expired"


def test_forgetting_what_an_edge_deleted_keeps_the_rows_of_portals_still_alive(hub: HubState) -> None:
    owner = _enrolled(hub, NOON)
    edge = _edge(hub)
    live = b"q" * 16
    hub.create_portal(owner, PORTAL, None, NOON)
    hub.create_portal(owner, live, None, NOON)
    hub.add_locations(owner, PORTAL, edge.key, [b"x" * 32], NOON)
    hub.delete_portal(owner, PORTAL, NOON)
    hub.add_locations(owner, live, edge.key, [b"x" * 32], NOON)  # stored again for a live portal meanwhile
    hub.forget_locations(edge, [b"x" * 32], NOON + hub.grace_ns)
    assert hub.locations(owner, [b"x" * 32]) == {(b"x" * 32).hex(): [edge.key.hex()]}


def test_damaged_copies_reported_by_readers_are_handed_to_their_edge_once(hub: HubState) -> None:
    reader = _enrolled(hub, NOON)
    edge = _edge(hub)
    hub.report_damage(reader, edge.key, [b"a" * 32, b"b" * 32], NOON)
    hub.report_damage(reader, edge.key, [b"a" * 32], NOON)
    assert sorted(hub.take_suspects(edge)) == [(b"a" * 32).hex(), (b"b" * 32).hex()]
    assert hub.take_suspects(edge) == []
    assert _refusal(hub.take_suspects, reader) == (403, "not-admitted")
