"""The one narrow interface every object store implements.

An object store keeps sealed objects (chunks and tree nodes) named by their id,
``cid = BLAKE3(bytes)``. It never sees plaintext or keys and knows nothing of
trees: which objects are live is decided above it (pins, garbage collection).

Contract, checked for every implementation by tests/unit/test_store_conformance.py:

- ``put(cid, data)`` stores ``data`` under ``cid``. If ``BLAKE3(data) != cid`` it raises
  ``CorruptObject`` and stores nothing. It is idempotent: putting an id that is
  already there stores nothing and returns False; otherwise True. It is atomic:
  a concurrent or later ``get`` sees all of ``data`` or nothing. It is durable
  once ``sync()`` has returned; ``durable=False`` is a hint that the caller
  needs it durable only then (a store may defer its flush to ``sync()``).
  Safe to call from several threads at once.
  Raises ``StoreFull`` when out of space, leaving nothing half-written.
  ``verify=False``: the caller has just computed ``cid`` from these very bytes
  (it sealed them, or checked them as they arrived), so they are not hashed again.
  ``cache=False``: the object is not expected to be read again soon (a large file
  written through the mount, whose plaintext the kernel holds), so a store may let
  it leave the operating system's cache once it is durable.
- ``get(cid)`` returns bytes whose BLAKE3 is ``cid``; raises ``MissingObject`` when
  it has none and ``CorruptObject`` when its stored bytes no longer match.
  ``verify=False``: the caller authenticates the bytes itself (the AEAD tag of a
  sealed object, under a key no store holds), so bytes the store holds itself
  may come back unhashed; bytes it brings from elsewhere are always checked.
- ``has(cids)`` returns one bool per id, in order.
- ``delete(cid)`` removes the object; deleting an absent id is not an error.
- ``ids()`` yields every stored id once, in no particular order.
- ``stat()`` returns the object count and stored bytes.
- ``sync()`` makes every ``put`` that returned before it durable.
- ``close()`` releases resources; the store is not used after it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol, runtime_checkable

from ..errors import CorruptObject
from ..sealing import object_id

__all__ = ["CachedReads", "ObjectStore", "Prefetching", "Priority", "StoreStat", "check_object"]


@dataclass(frozen=True, slots=True)
class StoreStat:
    objects: int
    bytes: int


class ObjectStore(Protocol):
    def put(
        self, cid: bytes, data: bytes | bytearray, durable: bool = True, verify: bool = True, cache: bool = True
    ) -> bool: ...

    def get(self, cid: bytes, verify: bool = True) -> bytes: ...

    def has(self, cids: Sequence[bytes]) -> list[bool]: ...

    def delete(self, cid: bytes) -> None: ...

    def ids(self) -> Iterator[bytes]: ...

    def stat(self) -> StoreStat: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class CachedReads(Protocol):
    """A store that can say at once, without waiting for a disk, what it holds in memory.

    ``read_cached(cid)`` returns the stored bytes unchecked when every one of
    them is in memory, and None otherwise (absent, on disk, or unknown): the
    caller then uses ``get``, off its event loop. For serving to a reader that
    checks the bytes against the id itself (an edge's GET).
    """

    def read_cached(self, cid: bytes) -> bytearray | None: ...


class Priority(IntEnum):
    """Why an object is fetched, most urgent first: a fetching store serves a waiting read before read-ahead,
    and both before a sync's or a repair's walk (docs/design.md, section 14)."""

    FOREGROUND = 0  # a read that waits for it (a mount's request, a directory a mount needs, `get`)
    READAHEAD = 1  # what a reader will ask for next
    STAGING = 2  # a file opened for writing, copied to staging
    PULL = 3  # a sync: the trees it merges and walks
    REPAIR = 4  # a repair's copies


@runtime_checkable
class Prefetching(Protocol):
    """A store that fetches what it lacks from elsewhere: ``prefetch`` brings many ids in at once, in parallel
    (``sizes``: the bytes expected of some, which the fetch plans with)."""

    def prefetch(
        self, cids: Sequence[bytes], priority: Priority = Priority.READAHEAD, sizes: Mapping[bytes, int] | None = None
    ) -> int: ...


def check_object(cid: bytes, data: bytes | bytearray) -> None:
    """Raise CorruptObject unless ``data`` is the object named ``cid``."""
    if len(cid) != 32 or object_id(data) != cid:
        raise CorruptObject(f"object {cid.hex()}: bytes do not match the object id")
