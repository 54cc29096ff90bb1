"""An in-memory object store: the reference implementation of the contract."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from ..errors import MissingObject
from .base import StoreStat, check_object

__all__ = ["MemoryStore"]


class MemoryStore:
    def __init__(self) -> None:
        self._objects: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    def put(
        self, cid: bytes, data: bytes | bytearray, durable: bool = True, verify: bool = True, cache: bool = True
    ) -> bool:
        if verify:
            check_object(cid, data)
        with self._lock:
            if cid in self._objects:
                return False
            self._objects[cid] = bytes(data)
            return True

    def get(self, cid: bytes, verify: bool = True) -> bytes:
        with self._lock:
            data = self._objects.get(cid)
        if data is None:
            raise MissingObject(f"object {cid.hex()} is not in the store")
        if verify:
            check_object(cid, data)
        return data

    def has(self, cids: Sequence[bytes]) -> list[bool]:
        with self._lock:
            return [cid in self._objects for cid in cids]

    def delete(self, cid: bytes) -> None:
        with self._lock:
            self._objects.pop(cid, None)

    def ids(self) -> Iterator[bytes]:
        with self._lock:
            snapshot = list(self._objects)
        return iter(snapshot)

    def stat(self) -> StoreStat:
        with self._lock:
            return StoreStat(len(self._objects), sum(map(len, self._objects.values())))

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass
