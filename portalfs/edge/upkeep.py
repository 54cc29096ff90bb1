"""An edge's background work: the garbage pass the hub directs, and the scrub that finds damaged copies.

Garbage (docs/design.md, section 13, "Garbage") is deleted in two steps, so
that no object a device has just counted on is lost: the ids the hub names
are *condemned* first (HAVE answers 0 for them, a PUT of one pardons it);
after ``hold`` seconds the hub is asked again, and only the ids it still names
and no PUT pardoned are deleted. A device records the locations of what a HAVE
found within ``HAVE_TRUST_SECONDS`` of it (fabric/sync.py), well inside the hold,
so a location recorded for a live portal always reaches the hub before the
second question.

The scrub reads every stored object, at a bounded rate, and removes those
whose bytes no longer match their id: HAVE then answers 0 for them and the next
repair puts a good copy back.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from ..errors import PortalError
from ..protocol.edge import HAVE_TRUST_SECONDS
from .service import EdgeService

__all__ = ["collect_garbage", "scrub", "garbage_pass", "GarbageHub", "GARBAGE_HOLD_SECONDS"]

log = logging.getLogger("portal.edge")

GARBAGE_HOLD_SECONDS = 2 * HAVE_TRUST_SECONDS  # condemned ids wait at least this long before they are deleted
GARBAGE_INTERVAL_SECONDS = 60.0
SCRUB_FIRST_SECONDS = 60.0  # the first scrub pass starts this long after the edge (or one interval, if shorter)


class GarbageHub(Protocol):
    """What a garbage pass asks of the hub (``EdgeHubClient``)."""

    async def garbage(self) -> list[bytes]: ...

    async def forget(self, cids: list[bytes]) -> None: ...


async def garbage_pass(hub: GarbageHub, service: EdgeService, hold: float) -> tuple[int, int]:
    """Condemn what the hub names, wait ``hold``, delete what it still names; return (condemned, deleted)."""
    condemned = await hub.garbage()
    if not condemned:
        return 0, 0
    service.condemn(condemned)
    try:
        await trio.sleep(hold)
        still = set(await hub.garbage())
    except BaseException:
        service.release([])  # pardon them all: the next pass starts over
        raise
    deleted = await trio.to_thread.run_sync(service.release, [c for c in condemned if c in still])
    if deleted:
        await hub.forget(deleted)
    return len(condemned), len(deleted)


async def collect_garbage(hub: GarbageHub, service: EdgeService, interval: float, hold: float) -> None:
    """A garbage pass every ``interval`` seconds, until cancelled."""
    while True:
        await trio.sleep(interval)
        try:
            condemned, deleted = await garbage_pass(hub, service, hold)
        except PortalError as exc:
            log.warning("garbage pass: %s", exc)
            continue
        log.info("garbage pass: %d condemned, %d deleted (portals whose grace period ended)", condemned, deleted)


async def scrub(service: EdgeService, rate: int, interval: float) -> None:
    """Read every stored object at most ``rate`` bytes a second, a pass every ``interval`` seconds."""
    await trio.sleep(min(interval, SCRUB_FIRST_SECONDS))
    while True:
        ids = await trio.to_thread.run_sync(lambda: list(service.store.ids()))
        started, done, damaged = trio.current_time(), 0, 0
        for cid in ids:
            size, intact = await trio.to_thread.run_sync(service.scrub_one, cid)
            done += size
            damaged += not intact
            ahead = done / rate - (trio.current_time() - started)
            if ahead > 0:
                await trio.sleep(ahead)
        log.info("scrub pass: %d objects, %d bytes read, %d damaged (removed)", len(ids), done, damaged)
        await trio.sleep(interval)
