"""What the process's allocator does with freed memory: megabyte objects come and go by the thousand.

glibc's malloc serves a block above its mmap threshold (128 KiB at first,
raised as such blocks are freed) with an mmap of its own, and hands the top of
a heap back to the kernel once more than its trim threshold lies free there.
Either way the next block of that size arrives as fresh pages, each faulted in
and zeroed by the kernel on first touch. Moving 1 MiB objects through an edge or
a device paid that for every object: page faults were a tenth of an edge's CPU
in ``bench/transfer``. With the thresholds fixed, freed blocks stay in the heap
and are reused warm; the cost is that up to ``TRIM_THRESHOLD`` of free heap per
arena stays with the process instead of going back to the kernel at once.

So there is one arena (``ARENAS``): glibc gives threads arenas of their own (up
to eight per core), and a buffer that a worker thread unseals and the event loop
frees goes back to the worker's arena, where it stays. A mount reading an 8 GiB
file peaked 94 MB above its start with as many arenas as glibc makes, 73 MB with
two, 49 MB (its chunk cache) with one. Python allocates with the GIL held, and
the libraries that release it (blake3, AES-GCM, zstd) work in buffers given to
them, so threads hardly ever wait on the one arena's lock: throughput measured
the same with one arena as with many.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys
from collections.abc import Callable
from typing import cast

__all__ = ["keep_freed_memory", "give_back_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "ARENAS"]

log = logging.getLogger("portal")

M_TRIM_THRESHOLD = -1  # mallopt(3) parameters, as glibc's malloc.h numbers them
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 << 20  # glibc's largest: above every object (an edge frame's body is at most 8 MiB)
TRIM_THRESHOLD = 64 << 20  # free heap kept for reuse: a few dozen objects in flight
ARENAS = 1  # malloc arenas (M_ARENA_MAX): see above


def keep_freed_memory() -> bool:
    """Fix glibc malloc's thresholds so freed object buffers are reused; False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    mallopt(M_ARENA_MAX, ARENAS)
    if not done:  # another C library (musl's mallopt does nothing and says so)
        log.debug("malloc thresholds left as they are")
    return done


def give_back_freed_memory() -> None:
    """Hand the heap's free pages back to the kernel now (malloc_trim(3)), whatever the trim threshold: after a
    burst that freed much (a mount's checkpoint of a large directory), so that what it freed is not kept as
    the process's for the next; a no-op where the C library has no malloc_trim."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return cast(Callable[[int], int], trim)
