"""Bandwidth limits, sans-I/O with time passed in: a token bucket per direction for the device and per edge
(docs/design.md, section 14, "Limits"). The swarm waits until ``ready_at`` before a request and charges the
bytes it moved: a download's size is known only once it arrives, so the balance may go below zero, and the
next request waits until it has refilled (the average holds; a burst is at most one request)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .actions import EdgeLimits

__all__ = ["TokenBucket", "Limits", "BURST_SECONDS"]

BURST_SECONDS = 0.5  # a bucket holds at most this many seconds of its rate


@dataclass(slots=True)
class TokenBucket:
    rate: float  # bytes per second
    balance: float = 0.0
    at: float = 0.0  # when ``balance`` was last brought up to date

    def _refill(self, now: float) -> None:
        if now > self.at:
            self.balance = min(self.rate * BURST_SECONDS, self.balance + (now - self.at) * self.rate)
            self.at = now

    def ready_at(self, now: float) -> float:
        """When the next request may go: now if the balance is not below zero, else when it will have refilled."""
        self._refill(now)
        return now if self.balance >= 0 else now + -self.balance / self.rate

    def charge(self, size: int, now: float) -> None:
        self._refill(now)
        self.balance -= size


@dataclass(slots=True)
class Limits:
    """The configuration's limits (FabricConfig.limits): the device's download and upload rates, and per edge
    (by key) a rate for each direction and its constraints for background work (``EdgeLimits``)."""

    download: float | None = None  # bytes per second, None: no limit
    upload: float | None = None
    edges: dict[bytes, dict[str, Any]] = field(default_factory=dict)  # key -> {rate, metered, daily_cap, hours}

    @classmethod
    def from_json(cls, value: dict[str, Any] | None) -> Limits:
        value = value or {}
        edges = {bytes.fromhex(k): dict(v) for k, v in (value.get("edges") or {}).items()}
        return cls(value.get("download"), value.get("upload"), edges)

    def to_json(self) -> dict[str, Any]:
        return {"download": self.download, "upload": self.upload, "edges": {k.hex(): v for k, v in self.edges.items()}}

    def edge(self, key: bytes) -> EdgeLimits:
        row = self.edges.get(key, {})
        hours = row.get("hours")
        return EdgeLimits(bool(row.get("metered")), row.get("daily_cap"), None if hours is None else tuple(hours))

    def buckets(self, now: float) -> dict[Any, TokenBucket]:
        found: dict[Any, TokenBucket] = {}
        for direction, rate in (("down", self.download), ("up", self.upload)):
            if rate:
                found[direction] = TokenBucket(rate, at=now)
        for key, row in self.edges.items():
            if row.get("rate"):
                for direction in ("down", "up"):
                    found[(direction, key)] = TokenBucket(float(row["rate"]), at=now)
        return found
