"""What a device learns of each edge, on explicit time: throughput, RFC 6298 round trips, health."""

from __future__ import annotations

import pytest

from portalfs.sched.estimators import RTO_MAX, RTO_MIN, SETTLE_SAMPLES, Health, RoundTrip, Throughput


def test_throughput_takes_its_first_sample_whole_and_forgets_it_within_five() -> None:
    t = Throughput()
    t.sample(10_000_000, 1.0)  # 10 MB/s first
    assert t.bytes_per_second == 10_000_000
    for _ in range(SETTLE_SAMPLES):
        t.sample(1_000_000, 1.0)  # the edge is 1 MB/s now
    assert t.bytes_per_second is not None
    assert (t.bytes_per_second - 1_000_000) < 0.1 * (10_000_000 - 1_000_000)  # under 10% of the start is left
    t.sample(0, 1.0)
    t.sample(100, 0.0)  # nothing to learn from
    assert t.bytes_per_second < 1_900_000


def test_round_trips_follow_rfc_6298() -> None:
    r = RoundTrip()
    assert r.rto == 1.0  # before any measurement
    r.sample(0.100)
    assert (r.srtt, r.rttvar) == (0.100, 0.050)
    assert r.rto == pytest.approx(0.100 + 4 * 0.050)
    r.sample(0.300)
    assert r.rttvar == pytest.approx(0.75 * 0.050 + 0.25 * 0.200)
    assert r.srtt == pytest.approx(0.875 * 0.100 + 0.125 * 0.300)
    assert r.rto == pytest.approx(r.srtt + 4 * r.rttvar)
    fast = RoundTrip()
    for _ in range(20):
        fast.sample(0.001)
    assert fast.rto == RTO_MIN  # bounded below
    for _ in range(20):
        fast.timed_out()  # doubled on each timeout, bounded above
    assert fast.rto == RTO_MAX


def test_health_falls_with_failures_and_recovers_with_answers() -> None:
    h = Health()
    assert h.score(0.0, 0.01, 0.2) == 1.0
    h.failed(now=100.0)
    just_failed = h.score(100.0, 0.01, 0.2)
    assert just_failed < 0.5
    assert h.score(200.0, 0.01, 0.2) > just_failed  # time since the failure counts
    for _ in range(10):
        h.answered()
    assert h.score(200.0, 0.01, 0.2) > 0.95
