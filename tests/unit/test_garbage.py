"""Garbage collection against a publish and a deactivation, in every order: a real hub state, a real edge
service over a real store, each step called in turn (docs/design.md, section 13, "Garbage")."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import trio
import trio.testing

from portalfs.edge.server import EDGE_SMALL_MAX
from portalfs.edge.service import EdgeService, QuotaBook
from portalfs.edge.upkeep import garbage_pass
from portalfs.hub.state import Caller, HubRefusal, HubState
from portalfs.keys import DeviceKey, Identity
from portalfs.protocol.edge import Bitmap, Have, Put, Stored
from portalfs.sealing import object_id
from portalfs.store import LocalStore

NOW = 1_800_000_000 * 10**9
DEAD, LIVE = b"d" * 16, b"l" * 16  # DEAD: deleted, its grace period over; LIVE: what a device now publishes
SHARED = os.urandom(1000)  # an object both portals name (convergent encryption stores it once)
OWN = os.urandom(1000)  # an object only LIVE names, recorded before the race


class World:
    def __init__(self, root: Path) -> None:
        self.hub = HubState(root / "hub.db", grace_ns=0)
        identity, device = Identity(os.urandom(32)), DeviceKey(os.urandom(32))
        self.hub.enroll(Caller(device.public, None), identity.enroll(device.public, "a", NOW).to_bytes(), NOW)
        self.owner = self.hub.caller(device.public)
        self.identity = identity.public
        self.edge = Caller(b"E" * 32, None)
        self.hub.admit_edge(self.edge.key, "", NOW)
        self.hub.register_edge(self.edge, "127.0.0.1:1", ["tcp"], {"capacity": 0, "used": 0, "objects": 0}, NOW)
        store = LocalStore(root / "edge", small_max=EDGE_SMALL_MAX)
        self.service = EdgeService(store, b"E" * 32, QuotaBook(root / "edge.db", 0))
        self.shared, self.own = object_id(SHARED), object_id(OWN)
        for portal in (DEAD, LIVE):
            self.hub.create_portal(self.owner, portal, None, NOW)
        for cid, data, portal in ((self.shared, SHARED, DEAD), (self.own, OWN, LIVE)):
            assert isinstance(self.service.serve(self.identity, Put(cid, data)), Stored)
            self.hub.add_locations(self.owner, portal, self.edge.key, [cid], NOW)
        self.hub.delete_portal(self.owner, DEAD, NOW)
        self.held: bool | None = None
        self.recorded = False
        self.condemned: list[bytes] = []

    def holds(self, cid: bytes) -> bool:
        return self.service.store.has([cid])[0]

    # a device pushing a version of LIVE that names SHARED: HAVE, PUT what is missing, record the locations

    def have(self) -> None:
        answer = self.service.serve(self.identity, Have((self.shared,)))
        assert isinstance(answer, Bitmap)
        self.held = answer.flags()[0]

    def put(self) -> None:
        if not self.held:
            assert isinstance(self.service.serve(self.identity, Put(self.shared, SHARED)), Stored)

    def record(self) -> None:
        try:
            self.hub.add_locations(self.owner, LIVE, self.edge.key, [self.shared], NOW)
            self.recorded = True
        except HubRefusal:  # deactivated meanwhile: the device publishes nothing
            pass

    # the edge's garbage pass, in its two steps

    def condemn(self) -> None:
        self.condemned = [bytes.fromhex(c) for c in self.hub.garbage(self.edge, NOW)]
        self.service.condemn(self.condemned)

    def confirm(self) -> None:
        still = {bytes.fromhex(c) for c in self.hub.garbage(self.edge, NOW)}
        deleted = self.service.release([c for c in self.condemned if c in still])
        self.hub.forget_locations(self.edge, deleted, NOW)

    # the owner

    def deactivate(self) -> None:
        self.hub.set_policy(self.owner, LIVE, {"active": False}, NOW)


DEVICE = ("have", "put", "record")
GARBAGE = ("condemn", "confirm")
OWNER = ("deactivate",)


def _interleavings() -> list[tuple[str, ...]]:
    steps = DEVICE + GARBAGE + OWNER
    orders = set()
    for order in itertools.permutations(steps):
        if all(order.index(a) < order.index(b) for seq in (DEVICE, GARBAGE) for a, b in itertools.pairwise(seq)):
            orders.add(order)
    return sorted(orders)


def _trusts_too_long(order: tuple[str, ...]) -> bool:
    """A device recorded a HAVE from before the condemnation after the edge confirmed: the timing rule
    (a HAVE is trusted 60 s, condemned ids are held 120 s) makes this order impossible."""
    return order.index("have") < order.index("condemn") and order.index("confirm") < order.index("record")


ORDERS = _interleavings()


def test_every_order_is_tried() -> None:
    assert len(ORDERS) == 60


@pytest.mark.parametrize("order", [o for o in ORDERS if not _trusts_too_long(o)], ids="-".join)
def test_no_order_of_publish_deactivation_and_garbage_pass_loses_an_object_a_portal_names(
    tmp_path: Path, order: tuple[str, ...]
) -> None:
    world = World(tmp_path)
    for step in order:
        getattr(world, step)()
    assert world.holds(world.own)  # a deactivated portal's objects are never garbage
    if world.recorded:  # the hub says LIVE has SHARED here: it must be here
        assert world.holds(world.shared)
    world.condemn()
    world.confirm()  # a later pass, whatever happened, changes nothing of that
    assert world.holds(world.own) and (world.holds(world.shared) or not world.recorded)


@pytest.mark.parametrize("order", [o for o in ORDERS if _trusts_too_long(o)], ids="-".join)
def test_the_timing_rule_is_what_keeps_the_other_orders_safe(tmp_path: Path, order: tuple[str, ...]) -> None:
    world = World(tmp_path)
    for step in order:
        getattr(world, step)()
    if world.recorded:
        assert not world.holds(world.shared)  # what would be lost if a device trusted a HAVE too long


async def test_a_garbage_pass_deletes_only_what_the_hub_still_names_after_the_hold(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    world = World(tmp_path)

    class Hub:  # the hub's side of a garbage pass, on the real hub state
        async def garbage(self) -> list[bytes]:
            return [bytes.fromhex(c) for c in world.hub.garbage(world.edge, NOW)]

        async def forget(self, cids: list[bytes]) -> None:
            world.hub.forget_locations(world.edge, cids, NOW)

    started = trio.current_time()
    assert await garbage_pass(Hub(), world.service, hold=120.0) == (1, 1)
    assert trio.current_time() - started >= 120.0  # it held the condemned id (on virtual time)
    assert not world.holds(world.shared) and world.holds(world.own)
    assert world.hub.garbage(world.edge, NOW) == []
