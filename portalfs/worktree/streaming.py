"""Sealing a file while it is being written, front to back.

Most large files are written sequentially from empty (cp, tar, downloads).
For those, a background thread runs the content-defined chunker over the
staging file as it grows and hands chunks to the chunk pipeline, so that by
the time the writer closes the file only its tail is left to seal. The cut
points are those of the whole file (the chunker reads the same bytes in the
same order), so the result is exactly what sealing at close would give.

Any write that is not an append, a truncate, or a second writer abandons the
stream; the file is then sealed at close as usual.

Behind the sealer, the staging file gives its bytes back (a hole is punched)
once the chunks that hold them are stored, PUNCH_STEP at a time. A large file
written through the mount is then held in the page cache once (its sealed
objects), not twice, and the pages given back are the next ones the writer
fills: fresh pages cost far more than reused ones (on a virtual machine whose
host reclaims the guest's free memory, about 1.5 s of CPU per GiB first
touched). The stream is then the only whole copy of the file's front: whoever
uses the staging file other than by appending (a read, a write elsewhere, a
truncate, a checkpoint) first stops the stream and, if ``stop`` says so,
``restore``s the front from the store.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import Future
from pathlib import Path

from .. import chunking
from ..chunking import cdc_window_chunks
from ..fsutil import punch_hole
from ..pipeline import ChunkPipeline
from ..sealing import ChunkRef, unseal
from ..store import ObjectStore

__all__ = ["StreamingSeal", "PUNCH_STEP"]

PUNCH_STEP = 8 * 1024 * 1024  # the staging file's stored front is given back this much at a time
PAGE = 4096


class _Abandoned(Exception):
    pass


class _GrowingFile:
    """A file that is still being appended to, read a window at a time: a read waits for its bytes."""

    def __init__(self, path: Path) -> None:
        self._fd: int | None = os.open(path, os.O_RDWR)
        self._available = 0
        self._finished = False
        self._abandoned = False
        self._changed = threading.Condition()

    def window(self, offset: int, at_least: int) -> tuple[bytes, bool]:
        """Up to WINDOW bytes from ``offset``, once ``at_least`` of them are written or the file is finished;
        and whether they reach its end (chunking.Window)."""
        with self._changed:
            while offset + at_least > self._available and not self._finished and not self._abandoned:
                self._changed.wait()
            if self._abandoned:
                raise _Abandoned
            count = max(0, min(chunking.WINDOW, self._available - offset))
            end = self._finished and offset + count >= self._available
        assert self._fd is not None
        return os.pread(self._fd, count, offset), end  # the kernel copies, with the GIL released

    def grow(self, size: int, finished: bool = False) -> None:
        with self._changed:
            self._available = size
            self._finished = finished
            self._changed.notify()

    def abandon(self) -> None:
        with self._changed:
            self._abandoned = True
            self._changed.notify()

    def punch(self, offset: int, length: int) -> None:
        assert self._fd is not None
        punch_hole(self._fd, offset, length)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class StreamingSeal:
    def __init__(self, store: ObjectStore, secret: bytes, staging: Path, after: StreamingSeal | None = None) -> None:
        """``after``: a finished stream of the same file, which goes on being written (an fsync came): this
        one takes its chunks but the last (cut where the file then ended) and seals on from there."""
        self._store = store
        self._staging = staging
        self._file = _GrowingFile(staging)
        self._pipeline = ChunkPipeline(store, secret, cache=False)  # the kernel holds the plaintext written
        self._refs: list[ChunkRef] | None = None
        self._error: BaseException | None = None
        self._stored: list[ChunkRef] = []  # the file's first chunks, each stored, in order
        self._stored_to = 0  # the bytes they hold
        self._holes = threading.Lock()  # a punch, or the stop that ends them
        self._order = threading.Lock()  # the seals in flight, taken in order as they end
        self._waiting: deque[Future[ChunkRef]] = deque()
        self._failed = False  # a seal failed: no more chunks are cut
        self._stopped = False
        self._can_punch = True
        self.punched = 0  # the staging file's first bytes given back (a multiple of PAGE)
        if after is not None:  # every chunk start is a cut point of the whole file: the chunker resumes at one
            assert after._refs is not None
            self._stored = after._refs[:-1]
            self._stored_to = sum(ref.length for ref in self._stored)
            self._can_punch = after._can_punch
            self.punched = after.punched  # no hole past the last chunk's start: finish() stopped them
        self._thread = threading.Thread(target=self._run, name="stream-seal", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._pipeline:
                for chunk in cdc_window_chunks(self._file.window, self._stored_to):
                    future = self._pipeline.submit(chunk)
                    with self._order:
                        self._waiting.append(future)
                    future.add_done_callback(self._settle)
                    if self._failed:
                        break
            with self._order:  # every seal has ended (the pipeline waited): one that failed is left, raised here
                for future in self._waiting:
                    future.result()
            self._refs = self._stored
        except _Abandoned:
            pass
        except BaseException as exc:  # reported to whoever finishes the stream
            self._error = exc
        finally:
            self._file.close()

    def _settle(self, _: Future[ChunkRef]) -> None:
        """Take the chunks stored so far, in order (a seal's callback, on its worker thread): the front is given
        back as soon as it is stored, even while the chunker waits for bytes not yet written."""
        with self._order:
            while self._waiting and self._waiting[0].done():
                first = self._waiting[0]
                if first.cancelled() or first.exception() is not None:
                    self._failed = True
                    return  # left for _run, which raises it
                self._took(self._waiting.popleft().result())

    def _took(self, ref: ChunkRef) -> None:
        """The next chunk is stored: give back the staging file's front up to it, PUNCH_STEP at a time."""
        self._stored.append(ref)
        self._stored_to += ref.length
        upto = self._stored_to - self._stored_to % PAGE
        if upto - self.punched < PUNCH_STEP:
            return
        with self._holes:
            if self._stopped or not self._can_punch:
                return
            try:
                self._file.punch(self.punched, upto - self.punched)
            except OSError:  # this file system cannot: the staging file stays whole
                self._can_punch = False
                return
            self.punched = upto

    def grow(self, size: int) -> None:
        """The file now holds ``size`` bytes (written front to back)."""
        self._file.grow(size)

    def finish(self, size: int) -> list[ChunkRef]:
        """The file is complete at ``size`` bytes: wait for the rest to be sealed (blocks; call off the loop).
        On an error, the staging file's front may have been given back: ``restore`` it."""
        with self._holes:
            self._stopped = True  # it is read no more: a hole now would only be written back on an error
        self._file.grow(size, finished=True)
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._refs is not None
        return self._refs

    def stop(self) -> bool:
        """Stop sealing (whatever was stored stays in the store as garbage until the file is sealed again);
        return whether the staging file's front was given back, for ``restore``. Does not wait for the sealer,
        and no hole is punched once it returns."""
        with self._holes:
            self._stopped = True
        self._file.abandon()
        return self.punched > 0

    def restore(self) -> None:
        """Write the front given back into the staging file again, from the store (blocks; after ``stop``
        or a failed ``finish``)."""
        self._thread.join()
        fd = os.open(self._staging, os.O_WRONLY)
        try:
            offset = 0
            for ref in self._stored:
                if offset >= self.punched:
                    break
                os.pwrite(fd, unseal(ref, self._store.get(ref.cid), "chunk", id_checked=True), offset)
                offset += ref.length
        finally:
            os.close(fd)
