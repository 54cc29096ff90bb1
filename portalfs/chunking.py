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
        yield from cdc_window_chunks(functools.partial(_file_window, fd), start)
        return
    for chunk in _chunker().cut_stream(stream):
        yield bytes(chunk.data)  # the view is only valid until the next chunk


Window = Callable[[int, int], tuple[bytes, bool]]
"""``window(offset, at_least)``: up to WINDOW bytes from ``offset``, at least ``at_least`` of them unless they
reach the end, and whether they do."""


def _file_window(fd: int, offset: int, at_least: int) -> tuple[bytes, bool]:
    # What the file holds and a byte more, to see its end: a buffer of WINDOW bytes for a small file cost 16
    # times the read (77 us for a 64 KiB file; the allocator maps and unmaps it).
    want = min(WINDOW, max(os.fstat(fd).st_size - offset, 0) + 1)
    data = os.pread(fd, want, offset)  # the kernel copies, with the GIL released
    if len(data) == want < at_least:  # it holds more than its size says (it grew, or /proc says 0): a window
        data, want = os.pread(fd, WINDOW, offset), WINDOW
    return data, len(data) < want  # a regular file reads short only at its end


def cdc_window_chunks(window: Window, start: int = 0) -> Iterator[memoryview]:
    """``cdc_chunks`` of what ``window`` reads from ``start``: a file, or one still being written.

    It is read a window at a time and cut in place: no buffer to clear per file and no bytes moved within one,
    as the stream chunker does (its 8 MiB buffer, zeroed for each file, cost more than cutting a file of a
    few MiB). A chunk is taken where its cut is the one the whole file would give: the window reaches the
    end; or CDC_MAX bytes follow the chunk's start in it; or at least CDC_AVG do and a cut point was found
    before the window's end (the chunker scans the same bytes with the same masks, and the first cut point
    is the first). The rest is read again as the start of the next window, which waits for more bytes.
    """
    chunker = _chunker()
    at_least = CDC_AVG
    while True:
        data, end = window(start, at_least)
        view, position = memoryview(data), 0
        chunks = chunker.cut_buf(data)
        while (rest := len(data) - position) > 0:
            if not end and rest < CDC_AVG:
                break
            chunk = next(chunks)
            if not (end or rest >= CDC_MAX or chunk.length < rest):
                break  # no cut point yet: where it falls depends on bytes after the window
            yield view[position : position + chunk.length]
            position += chunk.length
        if end:
            return
        start += position
        at_least = min(CDC_MAX, len(data) - position + CDC_AVG)


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
