"""The swarm's memory of where objects are: what the hub named, kept least recently used last, forgotten when
an edge turns out not to hold one."""

from __future__ import annotations

from portalfs.fabric.locations import LocationCache

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32
E1, E2 = b"1" * 32, b"2" * 32


def test_what_the_hub_named_is_remembered_and_nothing_else() -> None:
    cache = LocationCache()
    cache.learn({A: [E1, E2], B: []})  # the hub placed B nowhere: asked again next time
    assert cache.known([A, B, C]) == {A: [E1, E2]}


def test_an_edge_that_did_not_hold_an_object_is_forgotten_for_it() -> None:
    cache = LocationCache()
    cache.learn({A: [E1, E2]})
    cache.forget(A, E1)
    assert cache.known([A]) == {A: [E2]}
    cache.forget(A, E2)
    assert cache.known([A]) == {} and len(cache) == 0
    cache.forget(C, E1)  # never known: nothing happens


def test_past_its_capacity_the_least_recently_used_go_first() -> None:
    cache = LocationCache(capacity=2)
    cache.learn({A: [E1]})
    cache.learn({B: [E1]})
    cache.known([A])  # A was used since B was learned
    cache.learn({C: [E2]})
    assert cache.known([A, B, C]) == {A: [E1], C: [E2]}
