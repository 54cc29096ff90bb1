"""What a device keeps of what it fetched: the cache's bookkeeping, and a FabricStore over a fake swarm."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from portalfs.errors import MissingObject
from portalfs.fabric.cache import FetchCache
from portalfs.fabric.store import FabricStore
from portalfs.sealing import object_id
from portalfs.store import LocalStore
from portalfs.store.base import Priority

KIB = 1024


def _clock() -> itertools.count:
    return itertools.count(1)


def test_past_the_limit_the_least_recently_read_go_first(tmp_path: Path) -> None:
    deleted: list[bytes] = []
    tick = _clock()
    cache = FetchCache(tmp_path / "fetched.db", 100 * KIB, deleted.append, clock=lambda: next(tick))
    a, b, c, d = (bytes([n]) * 32 for n in range(4))
    for cid in (a, b, c):
        cache.fetched(cid, 30 * KIB)
    cache.read(a)  # a is now the most recent
    cache.fetched(b, 30 * KIB)  # already counted: nothing changes
    assert deleted == [] and cache.statistics() == {"objects": 3, "bytes": 90 * KIB, "limit": 100 * KIB}
    cache.fetched(d, 30 * KIB)  # 120 KiB: down to 90 KiB at most, oldest use first
    assert deleted == [b] and cache.statistics()["bytes"] == 90 * KIB
    cache.forget(c)  # gone otherwise (a gc)
    assert cache.statistics() == {"objects": 2, "bytes": 60 * KIB, "limit": 100 * KIB}
    cache.close()
    again = FetchCache(tmp_path / "fetched.db", 100 * KIB, deleted.append)  # the book survives a restart
    assert again.statistics()["bytes"] == 60 * KIB
    assert again.shrink(0) == 2 and sorted(deleted[1:]) == sorted([a, d])
    again.close()


def test_no_limit_keeps_everything(tmp_path: Path) -> None:
    deleted: list[bytes] = []
    cache = FetchCache(tmp_path / "fetched.db", 0, deleted.append)
    for n in range(20):
        cache.fetched(bytes([n]) * 32, 1 << 20)
    assert deleted == [] and cache.statistics()["objects"] == 20
    cache.close()


class FakeSwarm:
    """The edges, as a dict: what FabricStore asks of a swarm (get, get_many, close)."""

    def __init__(self, objects: dict[bytes, bytes]) -> None:
        self.objects = objects
        self.fetches = 0

    def get(self, cid: bytes, priority: Priority = Priority.FOREGROUND) -> bytes:
        self.fetches += 1
        try:
            return self.objects[cid]
        except KeyError:
            raise MissingObject(cid.hex()) from None

    def get_many(
        self, cids: list[bytes], priority: Priority = Priority.FOREGROUND, sizes: dict[bytes, int] | None = None
    ) -> dict[bytes, bytes]:
        return {cid: self.get(cid) for cid in cids}

    def close(self) -> None:
        pass


def test_a_store_that_fetches_drops_what_it_fetched_past_its_limit_and_nothing_it_made(tmp_path: Path) -> None:
    blobs = [os.urandom(64 * KIB) for _ in range(8)]
    remote = {object_id(b): b for b in blobs}
    swarm = FakeSwarm(remote)
    local = LocalStore(tmp_path / "store")
    cache = FetchCache(tmp_path / "store" / "fetched.db", 200 * KIB, local.delete)
    store = FabricStore(local, lambda: swarm, keep=True, cache=cache)  # type: ignore[arg-type, return-value]
    own = os.urandom(300 * KIB)
    store.put(object_id(own), own)  # made here: never dropped, whatever the limit
    pinned = [object_id(blobs[0])]
    store.prefetch(pinned, pinned=True)  # what a mount reads on its event loop: never dropped
    for blob in blobs[1:]:
        assert store.get(object_id(blob)) == blob
    held = [cid for cid in remote if local.has([cid])[0]]
    assert object_id(blobs[0]) in held and local.has([object_id(own)]) == [True]
    assert 0 < sum(len(remote[c]) for c in held if c not in pinned) <= 200 * KIB
    fetches = swarm.fetches
    for blob in blobs[1:]:  # dropped ones come back from the edges, byte for byte
        assert store.get(object_id(blob)) == blob
    assert swarm.fetches > fetches
    cache.close()
    local.close()
