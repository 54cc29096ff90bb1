"""What the scheduler and its caller exchange (``scheduler.py``): requests, the actions on them, and an
edge's limits. Apart from the scheduler, so that importing these costs nothing (no NumPy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..store.base import Priority

__all__ = ["Request", "Send", "Cancel", "GiveUp", "Action", "EdgeLimits", "WAITED_FOR"]

WAITED_FOR = (Priority.FOREGROUND, Priority.READAHEAD)  # the classes a reader waits for: constraints do not hold them


@dataclass(slots=True)
class EdgeLimits:
    """What the configuration says of one edge: background classes skip it when it is metered, past its
    daily byte cap, or outside its hours (local time, [start, end), wrapping past midnight)."""

    metered: bool = False
    daily_cap: int | None = None
    hours: tuple[int, int] | None = None

    def allows(self, priority: int, hour: int, today: int) -> bool:
        if priority in WAITED_FOR:
            return True
        if self.metered or (self.daily_cap is not None and today >= self.daily_cap):
            return False
        if self.hours is not None:
            start, end = self.hours
            inside = start <= hour < end if start <= end else hour >= start or hour < end
            return inside
        return True


@dataclass(eq=False, slots=True)
class Request:
    cid: bytes
    size: int
    priority: int
    seq: int
    holders: list[int]  # edges that hold it (the hub's locations), by index
    others: list[int]  # edges not known to hold it: asked after every holder
    asked: float  # when it was added
    order: list[int] = field(default_factory=list)  # the plan: primary, then backups
    copies: dict[int, float] = field(default_factory=dict)  # edge -> when its copy was sent, in flight
    deadlines: dict[int, float] = field(default_factory=dict)  # edge -> when its copy is late
    ahead: dict[int, int] = field(default_factory=dict)  # edge -> bytes in flight there when its copy was sent
    late: set[int] = field(default_factory=set)  # copies past their deadline (already failed over)
    tried: set[int] = field(default_factory=set)  # edges whose copy failed
    duplicated: bool = False
    done: bool = False
    tag: Any = None  # the caller's own


@dataclass(frozen=True, slots=True)
class Send:
    request: Request
    edge: bytes
    why: str  # plan, steal, failover, late, endgame, hedge, retry (an edge that was down), unplanned (none of
    # its holders could be planned on: another edge)


@dataclass(frozen=True, slots=True)
class Cancel:
    request: Request
    edge: bytes


@dataclass(frozen=True, slots=True)
class GiveUp:
    request: Request


Action = Send | Cancel | GiveUp
