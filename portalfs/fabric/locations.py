"""Which edges hold which objects, as the hub said: remembered, so that a read does not ask the hub again.

Sans-I/O and thread-safe: the swarm's callers learn answers on their threads,
the swarm forgets a location on its loop when an edge turns out not to hold
the object. Only what the hub named is kept, the least recently used first to
go past ``capacity`` ids; an id the hub placed nowhere is asked again next time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["LocationCache", "LOCATION_CACHE_IDS"]

LOCATION_CACHE_IDS = 200_000  # about 20 MB of ids and edge keys


class LocationCache:
    def __init__(self, capacity: int = LOCATION_CACHE_IDS) -> None:
        self.capacity = capacity
        self._held: OrderedDict[bytes, list[bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def known(self, cids: Sequence[bytes]) -> dict[bytes, list[bytes]]:
        """The edges remembered for each of ``cids`` that has any."""
        found = {}
        with self._lock:
            for cid in cids:
                edges = self._held.get(cid)
                if edges:
                    self._held.move_to_end(cid)
                    found[cid] = list(edges)
        return found

    def learn(self, located: dict[bytes, list[bytes]]) -> None:
        """Remember the hub's answer (id -> edges)."""
        with self._lock:
            for cid, edges in located.items():
                if edges:
                    self._held[cid] = list(edges)
                    self._held.move_to_end(cid)
            while len(self._held) > self.capacity:
                self._held.popitem(last=False)

    def forget(self, cid: bytes, edge: bytes) -> None:
        """``edge`` does not hold ``cid`` after all (a GET found nothing there)."""
        with self._lock:
            edges = self._held.get(cid)
            if edges is not None and edge in edges:
                edges.remove(edge)
                if not edges:
                    del self._held[cid]

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)
