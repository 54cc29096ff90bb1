"""When to sync which portal: the daemon's reconciliation triggers. Sans-I/O: ``now`` is a parameter.

A portal is synced when something says it changed (a local version not yet
published, a version announced by the hub's event stream, a request from
``portalctl sync``), and at the latest ``interval`` seconds after its last
sync. Every ``repair`` seconds after a successful sync, the portal's objects
are also brought back to R edges that answer. A failed sync is retried after an exponential backoff (``BACKOFF_MIN``
doubling to ``BACKOFF_MAX``); an explicit request skips the backoff. Changes
that arrive while a sync runs mark the portal again, so none is lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..backoff import Backoff

__all__ = ["SyncPlanner", "PortalSchedule", "BACKOFF_MIN", "BACKOFF_MAX", "EdgeWatch"]

BACKOFF_MIN = 1.0  # seconds before the first retry of a failed sync
BACKOFF_MAX = 60.0
SYNC_BACKOFF = Backoff(BACKOFF_MIN, BACKOFF_MAX)


@dataclass(slots=True)
class PortalSchedule:
    dirty: bool = True  # something changed since the last sync started
    running: bool = False
    not_before: float = 0.0  # no sync before this time (backoff after a failure)
    last_finished: float | None = None
    failures: int = 0  # consecutive
    last_error: str | None = None
    completed: int = 0  # syncs finished, failed or not
    repaired: float | None = None  # when its objects were last brought back to R edges


class SyncPlanner:
    def __init__(self, interval: float, refresh: float, repair: float = 600.0) -> None:
        self.interval = interval  # seconds between syncs of a portal nothing announced a change of
        self.refresh = refresh  # seconds between looks at the keyring and shares
        self.repair = repair  # seconds between checks that a portal's objects are on R edges
        self.portals: dict[bytes, PortalSchedule] = {}
        self._refreshed: float | None = None

    def track(self, portals: Iterable[bytes]) -> list[bytes]:
        """Follow exactly ``portals`` from now on; return the ones new to the planner."""
        wanted = set(portals)
        for gone in set(self.portals) - wanted:
            del self.portals[gone]
        new = [p for p in wanted if p not in self.portals]
        for portal in new:
            self.portals[portal] = PortalSchedule()
        return new

    def changed(self, portal: bytes, *, urgent: bool = False) -> None:
        schedule = self.portals.get(portal)
        if schedule is None:
            return
        schedule.dirty = True
        if urgent:
            schedule.not_before = 0.0

    def completion_after_now(self, portal: bytes) -> int:
        """The count of finished syncs at which one begun after this moment has finished (see ``completed``)."""
        schedule = self.portals[portal]
        return schedule.completed + (2 if schedule.running else 1)

    def due(self, now: float) -> list[bytes]:
        """Portals to sync now, in a stable order."""
        return sorted(p for p, s in self.portals.items() if not s.running and self._due_at(s) <= now)

    def repair_due(self, portal: bytes, now: float) -> bool:
        """After a successful sync: whether to check its objects' replicas too (first after ``repair`` seconds)."""
        schedule = self.portals.get(portal)
        if schedule is None:
            return False
        if schedule.repaired is None:
            schedule.repaired = now  # a daemon that just started has nothing to repair yet
        return now >= schedule.repaired + self.repair

    def repair_soon(self, portal: bytes) -> None:
        if portal in self.portals:
            self.portals[portal].repaired = float("-inf")

    def repaired(self, portal: bytes, now: float) -> None:
        if portal in self.portals:
            self.portals[portal].repaired = now

    def refresh_due(self, now: float) -> bool:
        return self._refreshed is None or now >= self._refreshed + self.refresh

    def refresh_soon(self) -> None:
        """Look at the keyring and shares in the next round (a portal appeared here, or a user asked)."""
        self._refreshed = None

    def refreshed(self, now: float) -> None:
        self._refreshed = now

    def started(self, portal: bytes) -> None:
        schedule = self.portals[portal]
        schedule.running = True
        schedule.dirty = False

    def finished(self, portal: bytes, now: float, error: str | None) -> None:
        schedule = self.portals.get(portal)
        if schedule is None:  # no longer followed
            return
        schedule.running = False
        schedule.last_finished = now
        schedule.completed += 1
        schedule.last_error = error
        if error is None:
            schedule.failures = 0
            schedule.not_before = 0.0
        else:
            schedule.failures += 1
            schedule.dirty = True
            schedule.not_before = now + SYNC_BACKOFF.delay(schedule.failures)

    def wake_at(self, *, refreshing: bool = True) -> float | None:
        """The earliest time anything becomes due (refreshes too, when ``refreshing``); None: nothing ever is."""
        times = [self._due_at(s) for s in self.portals.values() if not s.running]
        if refreshing:
            times.append(0.0 if self._refreshed is None else self._refreshed + self.refresh)
        return min(times, default=None)

    def _due_at(self, schedule: PortalSchedule) -> float:
        if schedule.dirty:
            return schedule.not_before
        if schedule.last_finished is None:
            return 0.0
        return max(schedule.not_before, schedule.last_finished + self.interval)


class EdgeWatch:
    """Which edges went silent (docs/design.md, section 16, "Self-healing"): the hub lists an edge while it
    heartbeats; one it stopped listing is *down* once ``grace`` seconds have passed since it was last listed,
    and is up again when it is listed again. Sans-I/O: the daemon tells it each list and the time."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._listed: dict[str, tuple[str, float]] = {}  # key hex -> (address, when last listed)
        self.down: dict[str, dict[str, Any]] = {}  # key hex -> {"edge", "key", "since_ns"}

    def listed(self, edges: list[tuple[str, str]], now: float, now_ns: int) -> tuple[list[str], list[str]]:
        """The hub lists ``edges`` ((key hex, address)) now; return (edges down from now, edges back)."""
        current = dict(edges)
        back = [key for key in current if key in self.down]
        for key in back:
            del self.down[key]
        for key, address in current.items():
            self._listed[key] = (address, now)
        went = []
        for key, (address, seen) in self._listed.items():
            if key not in current and key not in self.down and now - seen >= self.grace:
                since_ns = now_ns - int((now - seen) * 1e9)
                self.down[key] = {"edge": address, "key": key, "since_ns": since_ns}
                went.append(key)
        return went, back
