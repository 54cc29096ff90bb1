"""Sealing a file while it is being written, front to back.

Most large files are written sequentially from empty (cp, tar, downloads).
For those, a background thread runs the content-defined chunker over the
staging file as it grows and hands chunks to the chunk pipeline, so that by
the time the writer closes the file only its tail is left to seal. The cut
points are those of the whole file (the chunker reads the same bytes in the
same order), so the result is exactly what sealing at close would give.

Any write that is not an append, a truncate, or a second writer abandons the
stream; the file is then sealed at close as usual.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .. import chunking
from ..chunking import cdc_window_chunks
from ..pipeline import ChunkPipeline
from ..sealing import ChunkRef
from ..store import ObjectStore

__all__ = ["StreamingSeal"]


class _Abandoned(Exception):
    pass


class _GrowingFile:
    """A file that is still being appended to, read a window at a time: a read waits for its bytes."""

    def __init__(self, path: Path) -> None:
        self._fd: int | None = os.open(path, os.O_RDONLY)
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

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class StreamingSeal:
    def __init__(self, store: ObjectStore, secret: bytes, staging: Path) -> None:
        self._file = _GrowingFile(staging)
        self._pipeline = ChunkPipeline(store, secret)
        self._refs: list[ChunkRef] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stream-seal", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._pipeline:
                futures = [self._pipeline.submit(chunk) for chunk in cdc_window_chunks(self._file.window)]
                self._refs = [future.result() for future in futures]
        except _Abandoned:
            pass
        except BaseException as exc:  # reported to whoever finishes the stream
            self._error = exc
        finally:
            self._file.close()

    def grow(self, size: int) -> None:
        """The file now holds ``size`` bytes (written front to back)."""
        self._file.grow(size)

    def finish(self, size: int) -> list[ChunkRef]:
        """The file is complete at ``size`` bytes: wait for the rest to be sealed (blocks; call off the loop)."""
        self._file.grow(size, finished=True)
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._refs is not None
        return self._refs

    def abandon(self) -> None:
        """Stop; whatever was stored stays in the store as garbage until the file is sealed again."""
        self._file.abandon()
