"""Where a push puts an object: rendezvous hashing weighted by each edge's upload rate."""

from __future__ import annotations

import os

import blake3

from portalfs.fabric.swarm import placement

EDGES = [bytes([i]) * 32 for i in range(4)]


def test_with_no_rates_it_is_plain_rendezvous_hashing() -> None:
    for _ in range(50):
        cid = os.urandom(32)
        assert placement(EDGES, cid, {}) == sorted(EDGES, key=lambda k: blake3.blake3(k + cid).digest())


def test_an_edge_comes_first_in_proportion_to_its_rate_and_each_order_stays_put() -> None:
    rates = {EDGES[0]: 40e6, EDGES[1]: 10e6, EDGES[2]: 10e6}  # EDGES[3] not measured: the median, 10e6
    cids = [i.to_bytes(32, "big") for i in range(7000)]
    first = [placement(EDGES, cid, rates)[0] for cid in cids]
    for edge, expected in zip(EDGES, [4 / 7, 1 / 7, 1 / 7, 1 / 7], strict=True):
        assert abs(first.count(edge) / len(cids) - expected) < 0.02
    assert [placement(EDGES, cid, dict(rates))[0] for cid in cids[:100]] == first[:100]
    assert all(sorted(placement(EDGES, cid, rates)) == sorted(EDGES) for cid in cids[:100])
