"""The chunk pipeline: hash, seal and store chunks on worker threads.

blake3, zstandard and AES-GCM release the GIL, so worker threads use every
core. At most ``max_in_flight`` chunks wait in memory (``submit`` blocks the
producer beyond that), and a plaintext is sealed once while it is recent: a
worker that meets bytes another worker is sealing waits for that result, and
bytes among the last RECENT_SEALED sealed take their reference (an older
duplicate is sealed again and found in the store, so memory stays bounded).
Used by ingest (`portalctl put`) and by the mount's commits.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from io import RawIOBase
from types import TracebackType
from typing import BinaryIO

from . import chunking
from .sealing import ChunkRef, plaintext_hash, seal
from .store import ObjectStore

__all__ = ["ChunkPipeline", "store_sealed"]

RECENT_SEALED = 4096


def store_sealed(
    store: ObjectStore,
    secret: bytes,
    plaintext: bytes | memoryview,
    pid: bytes | None = None,
    durable: bool = True,
    cache: bool = True,
) -> tuple[ChunkRef, int]:
    """Seal ``plaintext`` under ``secret`` and store it unless the store has it.

    Returns its ref and the number of bytes newly stored (0 when it was there). Not ``durable``: the object is
    flushed at the store's next ``sync()``, which the caller makes before it records anything that names it.
    """
    ref, sealed = seal(secret, plaintext, pid)
    if not store.put(ref.cid, sealed, durable=durable, verify=False, cache=cache):  # id just made; False: it was there
        return ref, 0
    return ref, len(sealed)


class ChunkPipeline:
    def __init__(
        self,
        store: ObjectStore,
        secret: bytes,
        workers: int | None = None,
        max_in_flight: int | None = None,
        durable: bool = True,
        cache: bool = True,
    ) -> None:
        """``durable=False``: chunks are flushed by the store's next ``sync()`` (one syncfs for a whole ingest,
        not an fsync each), which the caller makes before it records a version that names them.
        ``cache=False``: chunks are not expected to be read again soon (``ObjectStore.put``)."""
        self.store = store
        self._durable = durable
        self._cache = cache
        self.chunks_stored = 0
        self.bytes_stored = 0
        self._secret = secret
        # Twice the cores: a worker waiting in fsync leaves its core to another.
        workers = workers or 2 * (os.cpu_count() or 2)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="seal")
        self._slots = threading.Semaphore(max_in_flight or 2 * workers + 2)
        self._sealing: dict[bytes, Future[ChunkRef]] = {}  # plaintext hash -> the seal in progress
        self._sealed: OrderedDict[bytes, ChunkRef] = OrderedDict()  # the last RECENT_SEALED sealed, by hash
        self._lock = threading.Lock()

    def __enter__(self) -> ChunkPipeline:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._pool.shutdown(wait=True, cancel_futures=exc is not None)

    def submit(self, data: bytes | memoryview) -> Future[ChunkRef]:
        """Queue one chunk; blocks while ``max_in_flight`` chunks are waiting."""
        self._slots.acquire()
        try:
            return self._pool.submit(self._seal, data)
        except BaseException:
            self._slots.release()
            raise

    def seal_stream(self, stream: BinaryIO | RawIOBase) -> Iterator[Future[ChunkRef]]:
        """Cut ``stream`` into content-defined chunks and queue each; yields their futures in order."""
        for chunk in chunking.cdc_chunks(stream):
            yield self.submit(chunk)

    def _seal(self, data: bytes | memoryview) -> ChunkRef:
        try:
            pid = plaintext_hash(data)
            with self._lock:
                done = self._sealed.get(pid)
                known = None if done is not None else self._sealing.get(pid)
                if done is None and known is None:  # this worker seals it; any other with the same bytes waits
                    claim = self._sealing[pid] = Future()
            if done is not None:
                return done
            if known is not None:
                return known.result()
            try:
                ref, stored = store_sealed(self.store, self._secret, data, pid, self._durable, self._cache)
            except BaseException as exc:
                with self._lock:
                    del self._sealing[pid]
                claim.set_exception(exc)
                raise
            with self._lock:
                del self._sealing[pid]
                self._sealed[pid] = ref
                if len(self._sealed) > RECENT_SEALED:  # bounded: an older duplicate is sealed again, not stored
                    self._sealed.popitem(last=False)
                if stored:
                    self.chunks_stored += 1
                    self.bytes_stored += stored
            claim.set_result(ref)
            return ref
        finally:
            self._slots.release()
