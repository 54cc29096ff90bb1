"""The hub's policies on a real SQLite file, with explicit time: links (expiry, downloads, window, revocation)
and a portal's lifecycle (active, expired, deactivated) for its owner, its members and its links."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from portalfs.hub.state import Caller, HubRefusal, HubState
from portalfs.keys import DeviceKey, Identity

NOON = int(datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()) * 10**9
MINUTE = 60 * 10**9
PORTAL = b"p" * 16


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
    hub.create_link(owner, PORTAL, b"L" * 16, b"wrapped", {"expires_ns": NOON + MINUTE})
    assert hub.redeem(stranger, b"L" * 16, NOON + MINUTE - 1)["wrapped"] == b"wrapped".hex()
    assert _refusal(hub.redeem, stranger, b"L" * 16, NOON + MINUTE) == (410, "expired")


def test_a_link_opens_as_many_times_as_it_allows(hub: HubState) -> None:
    owner, stranger = _enrolled(hub, NOON), _enrolled(hub, NOON)
    hub.create_portal(owner, PORTAL, None, NOON)
    hub.create_link(owner, PORTAL, b"L" * 16, b"w", {"max_downloads": 2})
    hub.redeem(stranger, b"L" * 16, NOON)
    hub.redeem(owner, b"L" * 16, NOON)
    assert _refusal(hub.redeem, stranger, b"L" * 16, NOON) == (410, "exhausted")


@pytest.mark.parametrize(
    ("window", "minute", "opens"),
    [("09:00-17:00", 12 * 60, True), ("09:00-17:00", 17 * 60, False), ("09:00-17:00", 8 * 60 + 59, False),
     ("22:00-02:00", 23 * 60, True), ("22:00-02:00", 60, True), ("22:00-02:00", 12 * 60, False)],
)  # fmt: skip
def test_a_link_opens_only_inside_its_utc_window(hub: HubState, window: str, minute: int, opens: bool) -> None:
    owner, stranger = _enrolled(hub, NOON), _enrolled(hub, NOON)
    hub.create_portal(owner, PORTAL, None, NOON)
    hub.create_link(owner, PORTAL, b"L" * 16, b"w", {"window": window})
    now = NOON - 12 * 60 * MINUTE + minute * MINUTE  # that minute of the day, UTC
    if opens:
        hub.redeem(stranger, b"L" * 16, now)
    else:
        assert _refusal(hub.redeem, stranger, b"L" * 16, now) == (403, "outside-window")


def test_a_revoked_link_and_an_unknown_one_are_refused(hub: HubState) -> None:
    owner, stranger = _enrolled(hub, NOON), _enrolled(hub, NOON)
    hub.create_portal(owner, PORTAL, None, NOON)
    hub.create_link(owner, PORTAL, b"L" * 16, b"w", {})
    hub.revoke_link(owner, b"L" * 16)
    assert _refusal(hub.redeem, stranger, b"L" * 16, NOON) == (410, "revoked")
    assert _refusal(hub.redeem, stranger, b"?" * 16, NOON) == (404, "not-found")


def test_an_expired_or_deactivated_portal_is_closed_to_members_and_links_and_its_objects_become_garbage(
    hub: HubState,
) -> None:
    owner, member = _enrolled(hub, NOON), _enrolled(hub, NOON)
    hub.create_portal(owner, PORTAL, NOON + MINUTE, NOON)
    assert member.identity is not None
    hub.set_member(owner, PORTAL, member.identity, b"grant", False, NOON)
    hub.create_link(owner, PORTAL, b"L" * 16, b"w", {})
    edge = Caller(b"E" * 32, None)
    hub.register_edge(edge.key, "127.0.0.1:1", ["tcp"], {"capacity": 0, "used": 0, "objects": 0}, NOON)
    other = b"q" * 16  # a live portal that shares one object with the one that expires
    hub.create_portal(owner, other, None, NOON)
    hub.add_locations(owner, PORTAL, edge.key, [b"only" * 8, b"both" * 8], NOON)
    hub.add_locations(owner, other, edge.key, [b"both" * 8], NOON)
    assert hub.garbage(edge, NOON) == []
    assert hub.portal_state(PORTAL, NOON) in ("created", "active")
    hub.roots(member, PORTAL, 0, NOON)  # a member reads while it lives
    assert hub.portal_state(PORTAL, NOON + MINUTE) == "expired"
    assert _refusal(hub.roots, member, PORTAL, 0, NOON + MINUTE) == (410, "expired")
    assert _refusal(hub.redeem, member, b"L" * 16, NOON + MINUTE) == (410, "expired")
    assert hub.garbage(edge, NOON + MINUTE) == [(b"only" * 8).hex()]  # the shared object stays
    hub.set_policy(owner, PORTAL, {"expires_ns": None, "active": False}, NOON + 2 * MINUTE)
    assert hub.portal_state(PORTAL, NOON + 2 * MINUTE) == "deactivated"
    hub.set_policy(owner, PORTAL, {"active": True}, NOON + 3 * MINUTE)
    hub.roots(member, PORTAL, 0, NOON + 3 * MINUTE)
    assert _refusal(hub.set_policy, member, PORTAL, {"active": False}, NOON) == (403, "forbidden")
