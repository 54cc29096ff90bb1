"""The token bucket behind bandwidth limits, on virtual time."""

from __future__ import annotations

import pytest

from portalfs.sched.limits import BURST_SECONDS, TokenBucket


def test_the_average_rate_holds_whatever_the_request_sizes() -> None:
    bucket = TokenBucket(rate=1e6, at=0.0)
    now, moved = 0.0, 0
    for i in range(200):
        now = bucket.ready_at(now)
        size = 50_000 + (i % 7) * 100_000  # known only after the request, as a download's
        bucket.charge(size, now)
        moved += size
    assert moved / now == pytest.approx(1e6, rel=0.1)


def test_an_idle_bucket_allows_a_burst_of_at_most_half_a_second() -> None:
    bucket = TokenBucket(rate=2e6, at=0.0)
    assert bucket.ready_at(100.0) == 100.0
    assert bucket.balance == pytest.approx(2e6 * BURST_SECONDS)
    bucket.charge(3_000_000, 100.0)  # past the balance: the next waits for the debt to refill
    assert bucket.ready_at(100.0) == pytest.approx(100.0 + 2_000_000 / 2e6)
