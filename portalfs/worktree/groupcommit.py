"""Group commit of journal records: one transaction, and so one flush, for every close waiting at once.

Each close that makes a file durable appends one journal record, and the
transaction that appends it returns once the record is on the disk (an fsync of
the database's log). Closes that come together (several writers, a parallel
build or unpack) would pay that flush one after another. Here the worker thread
that sealed a file queues its record; if no batch is being written, it writes
everything queued in one transaction and wakes the others; otherwise it waits
for the batch in progress and, if its record came too late for that one, one of
the waiting threads writes the next. A close still returns only once its own
record is durable, and records are written in the order they were queued. A
close that comes alone pays nothing more than before: it writes its own record
at once, on the thread that sealed it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["GroupCommit"]


@dataclass(slots=True)
class _Waiting:
    item: tuple[int, bytes]
    seq: int | None = None
    error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.seq is not None or self.error is not None


class GroupCommit:
    def __init__(self, write: Callable[[list[tuple[int, bytes]]], list[int]]) -> None:
        """``write``: append (base version, record) pairs in one durable transaction; return their sequence
        numbers."""
        self._write = write
        self._changed = threading.Condition()
        self._queued: list[_Waiting] = []
        self._writing = False
        self.batches = 0  # transactions written (for tests and figures)

    @property
    def queued(self) -> int:
        """Records waiting for the next transaction."""
        with self._changed:
            return len(self._queued)

    def append(self, base: int, record: bytes) -> int:
        """Append one record; return its sequence number once it is durable. Blocks: call it on a worker
        thread."""
        waiting = _Waiting((base, record))
        batch: list[_Waiting] = []
        with self._changed:
            self._queued.append(waiting)
            while not waiting.done:
                if not self._writing:  # this thread writes what is queued, its own record with it
                    self._writing = True
                    batch, self._queued = self._queued, []
                    break
                self._changed.wait()
        if batch:
            self._write_batch(batch)
        if waiting.error is not None:
            raise waiting.error
        assert waiting.seq is not None
        return waiting.seq

    def _write_batch(self, batch: list[_Waiting]) -> None:
        try:
            seqs = self._write([w.item for w in batch])
            for w, seq in zip(batch, seqs, strict=True):
                w.seq = seq
            self.batches += 1
        except BaseException as exc:  # every close of the batch learns it failed (a full disk, a closed store)
            for w in batch:
                w.error = exc
        finally:
            with self._changed:
                self._writing = False
                self._changed.notify_all()
