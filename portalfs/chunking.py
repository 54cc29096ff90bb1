"""Splitting a byte stream into chunks.

Content-defined chunking is FastCDC 2020 (pyfastcdc) with the parameters below,
gear table seed 0 and normalized chunking level 1: deterministic, so the same
bytes always cut at the same places, and a local edit moves only the nearby cut
points. Note that pyfastcdc's effective mean chunk size is ``avg + min``
(cut-point skipping), about 1.25 MiB here. Fixed-size chunking is for streams
whose length and content are not worth a content-defined pass.

See docs/design.md, section "Chunking".
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable, Iterator
from io import RawIOBase
from typing import BinaryIO

from pyfastcdc.cy import FastCDC

__all__ = ["CDC_MIN", "CDC_AVG", "CDC_MAX", "cdc_chunks", "cdc_window_chunks", "fixed_chunks", "cdc_cut_points"]

CDC_MIN = 256 * 1024
CDC_AVG = 1024 * 1024
CDC_MAX = 4 * 1024 * 1024
FIXED_SIZE = 1024 * 1024
WINDOW = 16 * 1024 * 1024  # how much of a regular file is read and cut at once (more than CDC_MAX)


def _chunker() -> FastCDC:
    # A FastCDC object is not safe to share between threads: make one per use.
    return FastCDC(CDC_AVG, min_size=CDC_MIN, max_size=CDC_MAX, normalized_chunking=1, seed=0)


def cdc_chunks(stream: BinaryIO | RawIOBase) -> Iterator[bytes | memoryview]:
    """Content-defined chunks of ``stream``, each independent of the others (read-only; a regular file's are
    views of the bytes read, valid as long as they are held). A regular file is read from where the stream
    stands, with pread: its position is left as it was."""
    fd, start = _regular_file(stream)
    if fd is not None:
        yield from cdc_window_chunks(functools.partial(os.pread, fd), start)
        return
    for chunk in _chunker().cut_stream(stream):
        yield bytes(chunk.data)  # the view is only valid until the next chunk


def cdc_window_chunks(pread: Callable[[int, int], bytes], start: int = 0) -> Iterator[memoryview]:
    """``cdc_chunks`` of what ``pread(size, offset)`` reads from ``start``: at most ``size`` bytes, fewer only
    at the end.

    It is read a WINDOW at a time (from a file, the kernel copies with the GIL released) and cut in place:
    no buffer to clear per file and no bytes moved within one, as the stream chunker does (its 8 MiB buffer,
    zeroed for each file, cost more than cutting a file of a few MiB). A chunk is cut only where at least
    CDC_MAX bytes follow its start in the window, or the window reaches the end: the cut then sees what the
    stream chunker would, so the cut points are the same. The rest of a window is read again as the start
    of the next.
    """
    chunker = _chunker()
    while window := pread(WINDOW, start):
        end = len(window) < WINDOW
        view, position = memoryview(window), 0
        chunks = chunker.cut_buf(window)
        while position < len(window) and (end or position + CDC_MAX <= len(window)):
            chunk = next(chunks)
            yield view[position : position + chunk.length]
            position += chunk.length
        if end:
            return
        start += position


def _regular_file(stream: BinaryIO | RawIOBase) -> tuple[int | None, int]:
    """The descriptor of ``stream`` and its position, if it reads a regular file; else None."""
    try:
        fd = stream.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, 0
        return fd, stream.tell()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the last two
        return None, 0


def cdc_cut_points(data: bytes) -> list[int]:
    """End offsets of the content-defined chunks of ``data`` (for tests and tools)."""
    return [c.offset + c.length for c in _chunker().cut_buf(data)]


def fixed_chunks(stream: BinaryIO, size: int = FIXED_SIZE) -> Iterator[bytes]:
    """Chunks of exactly ``size`` bytes (the last may be shorter)."""
    while True:
        block = stream.read(size)
        if not block:
            return
        while len(block) < size:  # pipes return short reads: fill the chunk
            more = stream.read(size - len(block))
            if not more:
                break
            block += more
        yield block
