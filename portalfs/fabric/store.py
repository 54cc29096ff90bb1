"""The local store, with the fabric behind it: a missing object is fetched from the edges and kept."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ..errors import MissingObject
from ..store.base import StoreStat
from ..store.local import LocalStore
from .swarm import Swarm

__all__ = ["FabricStore"]


class FabricStore:
    """ObjectStore: everything goes to the local store, except that ``get`` falls back to the swarm."""

    def __init__(self, local: LocalStore, swarm: Swarm) -> None:
        self.local = local
        self.swarm = swarm

    def put(self, cid: bytes, data: bytes | bytearray, durable: bool = True) -> bool:
        return self.local.put(cid, data, durable)

    def get(self, cid: bytes) -> bytes:
        try:
            return self.local.get(cid)
        except MissingObject:
            data = self.swarm.get(cid)  # verified against cid by the edge client
            self.local.put(cid, data, durable=False)  # a cache: losing it on a crash costs a refetch
            return data

    def prefetch(self, cids: Sequence[bytes]) -> None:
        """Fetch, in parallel, those of ``cids`` not held locally."""
        missing = [c for c, held in zip(cids, self.local.has(cids), strict=True) if not held]
        if missing:
            for cid, data in self.swarm.get_many(missing).items():
                self.local.put(cid, data, durable=False)

    def has(self, cids: Sequence[bytes]) -> list[bool]:
        return self.local.has(cids)

    def delete(self, cid: bytes) -> None:
        self.local.delete(cid)

    def ids(self) -> Iterator[bytes]:
        return self.local.ids()

    def stat(self) -> StoreStat:
        return self.local.stat()

    def sync(self) -> None:
        self.local.sync()

    def remove_temp_files(self) -> int:
        return self.local.remove_temp_files()

    def close(self) -> None:
        self.swarm.close()
        self.local.close()
