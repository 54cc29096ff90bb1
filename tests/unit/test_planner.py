"""The daemon's sync planner, on explicit time: changes, periodic syncs, backoff, changes during a sync."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from portalfs.daemon.planner import BACKOFF_MAX, BACKOFF_MIN, SyncPlanner

A, B = b"a" * 16, b"b" * 16


def _planner() -> SyncPlanner:
    planner = SyncPlanner(interval=60.0, refresh=30.0)
    planner.track([A, B])
    return planner


def _sync(planner: SyncPlanner, portal: bytes, now: float, error: str | None = None) -> None:
    planner.started(portal)
    planner.finished(portal, now, error)


def test_new_portals_are_due_at_once_then_at_the_interval() -> None:
    planner = _planner()
    assert planner.due(0.0) == [A, B]
    _sync(planner, A, 1.0)
    _sync(planner, B, 1.0)
    assert planner.due(60.9) == []
    assert planner.wake_at(refreshing=False) == 61.0
    assert planner.due(61.0) == [A, B]


def test_a_change_makes_a_portal_due_before_its_interval() -> None:
    planner = _planner()
    _sync(planner, A, 1.0)
    _sync(planner, B, 1.0)
    planner.changed(B)
    assert planner.due(2.0) == [B]


def test_a_change_during_a_sync_is_not_lost() -> None:
    planner = _planner()
    assert planner.completion_after_now(A) == 1
    planner.started(A)
    assert planner.completion_after_now(A) == 2  # the running sync began before now: the next one counts
    assert A not in planner.due(0.0)  # never twice at once
    planner.changed(A)
    planner.finished(A, 5.0, None)
    assert A in planner.due(5.0)


def test_failures_back_off_exponentially_and_an_urgent_request_skips_the_wait() -> None:
    planner = _planner()
    now = 0.0
    waits = []
    for _ in range(10):
        _sync(planner, A, now, "hub down")
        waits.append(planner.portals[A].not_before - now)
        assert A not in planner.due(now)
        now = planner.portals[A].not_before
        assert A in planner.due(now)
    assert waits[:3] == [BACKOFF_MIN, 2 * BACKOFF_MIN, 4 * BACKOFF_MIN]
    assert max(waits) == BACKOFF_MAX
    _sync(planner, A, now, "hub down")
    planner.changed(A, urgent=True)
    assert A in planner.due(now)
    _sync(planner, A, now, None)
    assert planner.portals[A].failures == 0 and planner.portals[A].last_error is None


def test_refreshes_come_first_then_at_their_period_and_on_request() -> None:
    planner = _planner()
    assert planner.refresh_due(0.0) and planner.wake_at() == 0.0
    planner.refreshed(0.0)
    assert not planner.refresh_due(29.0) and planner.refresh_due(30.0)
    planner.refresh_soon()
    assert planner.refresh_due(1.0)


def test_tracking_drops_portals_that_are_gone_and_ignores_their_late_results() -> None:
    planner = _planner()
    planner.started(A)
    assert planner.track([B]) == []
    planner.finished(A, 1.0, None)  # the sync that was running ends after the portal went away
    planner.changed(A)
    assert planner.due(2.0) == [B] and set(planner.portals) == {B}


@given(st.lists(st.tuples(st.sampled_from("cdsf"), st.sampled_from([A, B]), st.floats(0, 5)), max_size=60))
def test_whatever_happens_a_changed_portal_is_synced_by_the_time_it_is_due(
    steps: list[tuple[str, bytes, float]],
) -> None:
    planner = _planner()
    now = 0.0
    running: set[bytes] = set()
    for op, portal, dt in steps:
        now += dt
        if op == "c":
            planner.changed(portal)
        elif op == "d":
            for due in planner.due(now):
                planner.started(due)
                running.add(due)
        elif op in "sf" and portal in running:
            running.discard(portal)
            planner.finished(portal, now, None if op == "s" else "failed")
    for portal in running:
        planner.finished(portal, now, None)
    planner.changed(A)
    wake = planner.wake_at(refreshing=False)
    assert wake is not None and wake <= now + BACKOFF_MAX
    assert A in planner.due(max(now, planner.portals[A].not_before))


def test_repairs_follow_a_sync_once_per_period_and_on_request() -> None:
    planner = SyncPlanner(interval=60.0, refresh=30.0, repair=600.0)
    planner.track([A])
    assert not planner.repair_due(A, 10.0)  # a daemon that just started: the period starts now
    assert not planner.repair_due(A, 609.0)
    assert planner.repair_due(A, 610.0)
    planner.repaired(A, 610.0)
    assert not planner.repair_due(A, 611.0)
    planner.repair_soon(A)
    assert planner.repair_due(A, 612.0)
    assert not planner.repair_due(B, 10_000.0)  # not followed


def test_the_one_backoff_doubles_from_its_first_wait_to_its_most() -> None:
    from portalfs.backoff import Backoff

    backoff = Backoff(1.0, 60.0)
    assert [backoff.delay(n) for n in range(9)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert backoff.delay(10**6) == 60.0  # no overflow after a very long outage


def test_an_edge_is_down_once_unlisted_past_the_grace_and_up_when_listed_again() -> None:
    from portalfs.daemon.planner import EdgeWatch

    watch = EdgeWatch(grace=600.0)
    both = [("aa", "10.0.0.1:8471"), ("bb", "10.0.0.2:8471")]
    assert watch.listed(both, 0.0, 10**12) == ([], [])
    assert watch.listed(both[1:], 300.0, 10**12 + 300 * 10**9) == ([], [])  # unlisted, within the grace
    assert watch.listed(both[1:], 599.0, 10**12 + 599 * 10**9) == ([], [])
    assert watch.listed(both[1:], 600.0, 10**12 + 600 * 10**9) == (["aa"], [])
    assert watch.down["aa"] == {"edge": "10.0.0.1:8471", "key": "aa", "since_ns": 10**12}  # last listed
    assert watch.listed(both[1:], 900.0, 10**12 + 900 * 10**9) == ([], [])  # said once
    assert watch.listed(both, 901.0, 10**12 + 901 * 10**9) == ([], ["aa"]) and watch.down == {}
