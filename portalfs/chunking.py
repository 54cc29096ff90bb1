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

import os
import stat
from collections.abc import Iterator
from io import RawIOBase
from typing import BinaryIO

from pyfastcdc.cy import FastCDC

__all__ = ["CDC_MIN", "CDC_AVG", "CDC_MAX", "cdc_chunks", "fixed_chunks", "cdc_cut_points"]

CDC_MIN = 256 * 1024
CDC_AVG = 1024 * 1024
CDC_MAX = 4 * 1024 * 1024
FIXED_SIZE = 1024 * 1024


def _chunker() -> FastCDC:
    # A FastCDC object is not safe to share between threads: make one per use.
    return FastCDC(CDC_AVG, min_size=CDC_MIN, max_size=CDC_MAX, normalized_chunking=1, seed=0)


def cdc_chunks(stream: BinaryIO | RawIOBase) -> Iterator[bytes]:
    """Content-defined chunks of ``stream``, each an independent ``bytes``."""
    fd, start = _regular_file(stream)
    for chunk in _chunker().cut_stream(stream):
        # The view is only valid until the next chunk: a chunk of a file is read again by the kernel, which
        # copies with the GIL released (a copy of the view holds it, and every other thread waits).
        if fd is not None:
            data = os.pread(fd, chunk.length, start + chunk.offset)
            if len(data) == chunk.length:  # else the file shrank since: what the chunker read is the chunk
                yield data
                continue
        yield bytes(chunk.data)


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
