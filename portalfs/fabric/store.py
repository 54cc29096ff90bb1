"""The local store, with the fabric behind it: a missing object is fetched from the edges and kept."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ..errors import CorruptObject, MissingObject
from ..portal import PortalView
from ..sealing import ChunkRef
from ..store.base import Priority, StoreStat
from ..store.local import LocalStore
from ..tree import Entry, load_parts, open_dir
from .cache import FetchCache
from .swarm import Swarm

__all__ = ["FabricStore", "fetch_directories"]

log = logging.getLogger("portal.store")


class FabricStore:
    """ObjectStore: everything goes to the local store, except that ``get`` falls back to the swarm.

    With ``keep`` (a mount), what is fetched is kept in the local store; without
    (a restore to a directory, which reads each object once), a prefetched
    object is held in memory until its one ``get`` takes it, and the local
    store is not filled with a second copy of what the restore writes out.
    With a ``cache`` as well, what is kept is recorded there and dropped again,
    least recently used first, past the cache's limit.
    """

    def __init__(
        self,
        local: LocalStore,
        open_swarm: Callable[[], Swarm],
        keep: bool = True,
        cache: FetchCache | None = None,
        priority: Priority = Priority.FOREGROUND,
    ) -> None:
        self.local = local
        self.priority = priority  # of what ``get`` fetches: the reader waits (a mount), or a sync's or repair's walk
        self.keep = keep
        self.cache = cache if keep else None
        self._swarm: Swarm | None = None
        self._open_swarm = open_swarm
        self._held: dict[bytes, bytes] = {}  # prefetched, not kept: taken by the next get
        self._lock = threading.Lock()
        self.healed = 0  # damaged local objects replaced by good copies from the edges

    @property
    def swarm(self) -> Swarm:
        """The swarm, opened at the first object this device lacks: a device whose hub is down (or that is
        offline) reads what it holds as before, and only a read of what it lacks fails."""
        with self._lock:
            if self._swarm is None:
                self._swarm = self._open_swarm()  # raises Unreachable while the hub is down; tried again next time
            return self._swarm

    def fetched(self) -> dict[str, Any] | None:
        """The swarm's figures (``Swarm.fetched``), or None if nothing was fetched through it."""
        with self._lock:
            swarm = self._swarm
        return None if swarm is None else swarm.fetched()

    def put(
        self, cid: bytes, data: bytes | bytearray, durable: bool = True, verify: bool = True, cache: bool = True
    ) -> bool:
        return self.local.put(cid, data, durable, verify, cache)

    def get(self, cid: bytes, verify: bool = True) -> bytes:
        try:
            data = self.local.get(cid, verify)
        except CorruptObject as exc:
            log.warning("%s in the local store; replacing it with a copy from the edges", exc)
            data = self.swarm.get(cid, self.priority)  # CorruptObject too if every copy is damaged
            self.local.delete(cid)
            self.local.put(cid, data, verify=False)  # durable: it may be an object this device made, on one edge only
            self.local.sync()
            with self._lock:
                self.healed += 1
            return data
        except MissingObject:
            with self._lock:
                held = self._held.pop(cid, None)
            if held is not None:
                return held
            data = self.swarm.get(cid, self.priority)  # verified against cid by the edge client
            if self.keep:
                self._keep(cid, data)
            return data
        if self.cache is not None:
            self.cache.read(cid)
        return data

    def _keep(self, cid: bytes, data: bytes, record: bool = True) -> None:
        # A cache: losing it on a crash costs a refetch. The swarm has checked the bytes against the id.
        self.local.put(cid, data, durable=False, verify=False)
        if record and self.cache is not None:
            self.cache.fetched(cid, len(data))

    def prefetch(
        self,
        cids: Sequence[bytes],
        priority: Priority = Priority.READAHEAD,
        sizes: Mapping[bytes, int] | None = None,
        pinned: bool = False,
    ) -> int:
        """Fetch, in parallel, those of ``cids`` not held locally; return how many that was.

        ``sizes``: the bytes expected of some (a ref's plaintext length), for the scheduler's plan.
        ``pinned``: kept for good, never dropped by the cache (what a mount reads on its event loop).
        """
        with self._lock:
            wanted = [c for c in dict.fromkeys(cids) if c not in self._held]
        missing = [c for c, held in zip(wanted, self.local.has(wanted), strict=True) if not held]
        if missing:
            fetched = self.swarm.get_many(missing, priority, sizes)
            if self.keep:
                for cid, data in fetched.items():
                    self._keep(cid, data, record=not pinned)
            else:
                with self._lock:
                    self._held.update(fetched)
        return len(missing)

    def has(self, cids: Sequence[bytes]) -> list[bool]:
        return self.local.has(cids)

    def delete(self, cid: bytes) -> None:
        self.local.delete(cid)
        if self.cache is not None:
            self.cache.forget(cid)

    def ids(self) -> Iterator[bytes]:
        return self.local.ids()

    def stat(self) -> StoreStat:
        return self.local.stat()

    def sync(self) -> None:
        self.local.sync()

    def remove_temp_files(self) -> int:
        return self.local.remove_temp_files()

    def close(self) -> None:
        """Nothing of its own to close: the local store is the device's, the swarm and the cache the fabric's."""


def _fetch_nodes(store: FabricStore, refs: list[ChunkRef]) -> int:
    if not refs:
        return 0
    return store.prefetch(
        [ref.cid for ref in refs], Priority.FOREGROUND, {ref.cid: ref.length for ref in refs}, pinned=True
    )


def fetch_directories(view: PortalView, root: Entry) -> int:
    """Fetch every directory node under ``root`` this device lacks, one level at a time, each level in parallel.

    A mount reads directories on its event loop, where waiting for the network
    would stall every request (the first one never finished); file contents are
    read on worker threads and are fetched when read. Returns the nodes fetched.
    """
    store = view.store
    if not isinstance(store, FabricStore):
        return 0
    fetched = 0
    seen: set[bytes] = set()
    level = [root] if root.is_dir and root.node is not None else []
    while level:
        refs = [entry.node for entry in level if entry.node is not None and entry.node.cid not in seen]
        seen.update(ref.cid for ref in refs)
        fetched += _fetch_nodes(store, refs)
        opened = [(ref, *open_dir(view.load_node(ref))) for ref in refs]
        fetched += _fetch_nodes(store, [part for _, _, parts in opened for part in parts])
        level = [
            child
            for ref, entries, parts in opened
            for child in (load_parts(ref, parts, view.load_node) if parts else entries)
            if child.is_dir
        ]
    return fetched
