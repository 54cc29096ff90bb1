"""What a device learns of each edge as it uses it, sans-I/O with time passed in (docs/design.md, section 14,
"Edge estimates"): throughput, round-trip time and health. The scheduler feeds them each answer (the
response time to the round trip, the delivery rate to the throughput) and plans with them.

- ``Throughput``: an exponentially weighted mean of bytes per second, whose first sample is taken whole and
  whose weight makes the start forgotten within ``SETTLE_SAMPLES`` samples (less than 10% of it left).
- ``RoundTrip``: SRTT, RTTVAR and RTO as RFC 6298 computes them (alpha 1/8, beta 1/4, K = 4), with the RTO
  doubled on each timeout and bounded.
- ``Health``: a success rate (weighted like throughput), the time since the last failure and the response
  time against the RTO, in one score from 0 to 1.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Throughput", "RoundTrip", "Health", "EdgeEstimate", "SETTLE_SAMPLES"]

SETTLE_SAMPLES = 5
WEIGHT = 1 - 0.08 ** (1 / SETTLE_SAMPLES)  # after SETTLE_SAMPLES samples, 8% of the start is left (under 10%)
RTO_MIN = 0.2  # seconds: RFC 6298 says 1 s for the Internet; edges answer in milliseconds on a LAN
RTO_MAX = 60.0
RTO_INITIAL = 1.0


@dataclass(slots=True)
class Throughput:
    bytes_per_second: float | None = None

    def sample(self, size: int, seconds: float) -> None:
        if seconds <= 0 or size <= 0:
            return
        rate = size / seconds
        old = self.bytes_per_second
        self.bytes_per_second = rate if old is None else old + WEIGHT * (rate - old)


@dataclass(slots=True)
class RoundTrip:
    """RFC 6298: the first measurement R sets SRTT = R, RTTVAR = R/2; each later one
    RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|, then SRTT = 7/8 SRTT + 1/8 R; RTO = SRTT + max(G, 4 RTTVAR)."""

    srtt: float | None = None
    rttvar: float = 0.0
    rto: float = RTO_INITIAL
    granularity: float = 0.001

    def sample(self, seconds: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = seconds, seconds / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - seconds)
            self.srtt = 0.875 * self.srtt + 0.125 * seconds
        self.rto = min(RTO_MAX, max(RTO_MIN, self.srtt + max(self.granularity, 4 * self.rttvar)))

    def timed_out(self) -> None:
        """RFC 6298 (5.5): back off, doubling the RTO."""
        self.rto = min(RTO_MAX, self.rto * 2)


@dataclass(slots=True)
class Health:
    success: float = 1.0  # weighted rate of answers among requests
    last_failure: float | None = None  # when (the caller's clock)

    def answered(self) -> None:
        self.success += WEIGHT * (1.0 - self.success)

    def failed(self, now: float) -> None:
        self.success += WEIGHT * (0.0 - self.success)
        self.last_failure = now

    def score(self, now: float, srtt: float | None, rto: float) -> float:
        """1: answers everything, long since it last failed, well within its RTO; toward 0 as it fails, failed
        just now, or answers slowly."""
        recent = 1.0 if self.last_failure is None else min(1.0, (now - self.last_failure) / 30.0)
        speed = 1.0 if srtt is None else min(1.0, rto / (4 * srtt)) if srtt > 0 else 1.0
        return self.success**2 * (0.5 + 0.5 * recent) * (0.5 + 0.5 * speed)  # failures in a row weigh most


@dataclass(slots=True)
class EdgeEstimate:
    """All that is known of one edge (the scheduler turns it into the edge's ready time and rate)."""

    throughput: Throughput
    rtt: RoundTrip
    health: Health

    @classmethod
    def new(cls) -> EdgeEstimate:
        return cls(Throughput(), RoundTrip(), Health())

    def answered(self, response: float, size: int, delivery: float) -> None:
        """An answer came ``response`` seconds after its request went; ``size`` bytes over ``delivery`` seconds
        is the throughput sample (the scheduler's delivery rate: ``_Edge.delivered``)."""
        self.rtt.sample(response)
        self.throughput.sample(size, delivery)
        self.health.answered()

    def failed(self, now: float) -> None:
        self.rtt.timed_out()
        self.health.failed(now)
