"""Reading committed file content for the mount.

Each file's chunk layout (offsets) is worked out once per file node; chunks
are fetched and unsealed on worker threads, kept in a bounded cache of
plaintext chunks, and read ahead of a sequential reader. Concurrent reads of
one chunk share a single fetch. On a device whose store fetches from a
fabric, the chunks ahead come from the edges in batches (one location lookup
and parallel requests each) before they are unsealed.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict

import trio

from .. import threads
from ..errors import PortalError
from ..portal import PortalView
from ..sealing import ChunkRef
from ..tree import iter_file_chunks

__all__ = ["ContentReader"]

# Room for the chunks read ahead and the one being read (6 + 1 of at most 4 MiB) and a little more: what was
# read stays in the kernel's page cache (keep_cache), so this bounds the mount's memory, not its re-reads.
CHUNK_CACHE_BYTES = 48 * 1024 * 1024
READ_AHEAD_CHUNKS = 6  # chunks unsealed ahead of a reader, on worker threads
FETCH_AHEAD_CHUNKS = 32  # chunks ahead of a reader brought from the fabric, half a window per batch
LAYOUTS_KEPT = 4096

Plaintext = bytes | memoryview


def _by_object(refs: list[ChunkRef]) -> list[ChunkRef]:
    """``refs`` in order, each object once: a batch registers, fetches and ends each of its objects once."""
    return list({ref.cid: ref for ref in refs}.values())


class _ChunkCache:
    """Plaintext chunks by object id, least recently used first out, bounded in bytes."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._items: OrderedDict[bytes, Plaintext] = OrderedDict()

    def get(self, cid: bytes) -> Plaintext | None:
        data = self._items.get(cid)
        if data is not None:
            self._items.move_to_end(cid)
        return data

    def put(self, cid: bytes, data: Plaintext) -> None:
        if cid in self._items:
            return
        self._items[cid] = data
        self._size += len(data)
        while self._size > self._limit and self._items:
            _, old = self._items.popitem(last=False)
            self._size -= len(old)


class ContentReader:
    def __init__(self, view: PortalView, cache_bytes: int = CHUNK_CACHE_BYTES) -> None:
        self.view = view
        self.nursery: trio.Nursery | None = None  # for read-ahead; set once the mount runs
        self._cache = _ChunkCache(cache_bytes)
        self._loading: dict[bytes, trio.Event] = {}  # chunks being loaded and unsealed
        self._fetching: dict[bytes, trio.Event] = {}  # chunks in a batch coming from the fabric
        self._layouts: OrderedDict[bytes, tuple[list[int], list[ChunkRef]]] = OrderedDict()
        self._small: dict[bytes, trio.Event] = {}  # file nodes of small files being loaded ahead

    async def layout(self, file_node: ChunkRef | None) -> tuple[list[int], list[ChunkRef]]:
        """(start offset of each chunk, the chunks) of a file node."""
        if file_node is None:
            return [], []
        layout = self._layouts.get(file_node.cid)
        if layout is None and (loading := self._small.get(file_node.cid)) is not None:
            await loading.wait()  # loaded ahead with other small files, or left to this read
            layout = self._layouts.get(file_node.cid)
        if layout is None:
            refs = await threads.run_sync(lambda: list(iter_file_chunks(file_node, self.view.load_node)))
            layout = self._keep_layout(file_node, refs)
        return layout

    def _keep_layout(self, file_node: ChunkRef, refs: list[ChunkRef]) -> tuple[list[int], list[ChunkRef]]:
        offsets, position = [], 0
        for chunk in refs:
            offsets.append(position)
            position += chunk.length
        layout = self._layouts[file_node.cid] = (offsets, refs)
        if len(self._layouts) > LAYOUTS_KEPT:
            self._layouts.popitem(last=False)
        return layout

    async def chunk(self, ref: ChunkRef) -> Plaintext:
        while True:
            data = self._cache.get(ref.cid)
            if data is not None:
                return data
            busy = self._loading.get(ref.cid)
            if busy is None:
                busy = self._fetching.get(ref.cid)
            if busy is None:
                break
            await busy.wait()
        event = self._loading[ref.cid] = trio.Event()
        try:
            data = await threads.run_sync(self.view.load_chunk, ref)
            self._cache.put(ref.cid, data)
            return data
        finally:
            del self._loading[ref.cid]
            event.set()

    async def read(self, file_node: ChunkRef | None, file_size: int, offset: int, size: int) -> list[memoryview]:
        """The pieces of bytes ``offset`` to ``offset + size`` of a file; reads ahead after them."""
        end = min(offset + size, file_size)
        if offset >= end:
            return []
        offsets, refs = await self.layout(file_node)
        index = bisect.bisect_right(offsets, offset) - 1
        last = bisect.bisect_left(offsets, end) - 1  # the chunk that holds the read's last byte
        if self.nursery is not None:  # before the read waits: the chunks after it load meanwhile
            if self.view.fetches:
                self._fetch_ahead(refs[last + 1 : last + 1 + FETCH_AHEAD_CHUNKS])
            else:
                for ref in refs[last + 1 : last + 1 + READ_AHEAD_CHUNKS]:
                    if self._idle(ref):
                        self.nursery.start_soon(self._prefetch, ref)
        pieces: list[memoryview] = []
        position = offset
        while position < end and index < len(refs):
            data = await self.chunk(refs[index])
            start = position - offsets[index]
            piece = memoryview(data)[start : start + end - position]
            pieces.append(piece)
            position += len(piece)
            index += 1
        return pieces

    def read_ahead_file(self, file_node: ChunkRef) -> None:
        """Load a file's first chunk in the background: the file a reader walking its directory opens next."""
        if self.nursery is not None:
            self.nursery.start_soon(self._first_chunk, file_node)

    async def _first_chunk(self, file_node: ChunkRef) -> None:
        try:
            _, refs = await self.layout(file_node)
            if refs and self._idle(refs[0]):
                await self.chunk(refs[0])
        except PortalError:
            pass  # the read that needs it will report it

    def read_ahead_small_files(self, file_nodes: list[ChunkRef]) -> None:
        """Load small files (one chunk each) whole in one worker-thread job: the files a reader walking their
        directory opens next. Only once half of them are not loaded yet, so that a job loads several."""
        nodes = _by_object(file_nodes)  # files of one content share one node
        wanted = [node for node in nodes if node.cid not in self._layouts and node.cid not in self._small]
        if self.nursery is None or not wanted or len(wanted) < len(nodes) // 2:
            return
        done = trio.Event()
        for node in wanted:
            self._small[node.cid] = done
        self.nursery.start_soon(self._small_files, wanted, done)

    async def _small_files(self, file_nodes: list[ChunkRef], done: trio.Event) -> None:
        try:
            for node, refs, chunks in await threads.run_sync(self._load_small_files, file_nodes):
                self._keep_layout(node, refs)
                for ref, data in zip(refs, chunks, strict=True):
                    self._cache.put(ref.cid, data)
        finally:
            for node in file_nodes:
                del self._small[node.cid]
            done.set()

    def _load_small_files(self, file_nodes: list[ChunkRef]) -> list[tuple[ChunkRef, list[ChunkRef], list[Plaintext]]]:
        """(file node, its chunks, their plaintexts) of each file that loads; on a device that fetches, the nodes
        come from the edges in one batch, then the chunks in another."""
        self._prefetch_quietly(file_nodes)
        layouts = []
        for node in file_nodes:
            try:
                layouts.append((node, list(iter_file_chunks(node, self.view.load_node))))
            except PortalError:
                pass  # the read that needs it will report it
        self._prefetch_quietly([ref for _, refs in layouts for ref in refs])
        loaded = []
        for node, refs in layouts:
            try:
                loaded.append((node, refs, [self.view.load_chunk(ref) for ref in refs]))
            except PortalError:
                pass
        return loaded

    def _prefetch_quietly(self, refs: list[ChunkRef]) -> None:
        try:
            self.view.prefetch(refs)
        except PortalError:
            pass  # each is fetched alone then, and what fails is reported by the read that needs it

    def _idle(self, ref: ChunkRef) -> bool:
        return self._cache.get(ref.cid) is None and ref.cid not in self._loading and ref.cid not in self._fetching

    def _fetch_ahead(self, ahead: list[ChunkRef]) -> None:
        """Bring the chunks ahead of a reader from the fabric in batches of half the window (or what is left)."""
        ahead = _by_object(ahead)  # a file's chunks of one content are one object
        wanted = [ref for ref in ahead if self._idle(ref)]
        if wanted and len(wanted) >= min(FETCH_AHEAD_CHUNKS // 2, len(ahead)):
            assert self.nursery is not None
            done = trio.Event()
            for ref in wanted:
                self._fetching[ref.cid] = done
            self.nursery.start_soon(self._fetch_batch, wanted, done)

    async def _fetch_batch(self, refs: list[ChunkRef], done: trio.Event) -> None:
        try:
            await threads.run_sync(self.view.prefetch, refs)
        except PortalError:
            pass  # the foreground read that needs one of them fetches it again, and reports what fails
        finally:
            for ref in refs:
                del self._fetching[ref.cid]
            done.set()
        for ref in refs[:READ_AHEAD_CHUNKS]:  # unsealed ahead, from the local store now
            if self._idle(ref):
                self.nursery.start_soon(self._prefetch, ref)  # type: ignore[union-attr]

    async def _prefetch(self, ref: ChunkRef) -> None:
        try:
            await self.chunk(ref)
        except PortalError:
            pass  # the foreground read that needs it will report it
