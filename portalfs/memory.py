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
"""

from __future__ import annotations

import ctypes
import logging
import sys

__all__ = ["keep_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

log = logging.getLogger("portal")

M_TRIM_THRESHOLD = -1  # mallopt(3) parameters, as glibc's malloc.h numbers them
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest: above every object (an edge frame's body is at most 8 MiB)
TRIM_THRESHOLD = 64 << 20  # free heap kept for reuse: a few dozen objects in flight


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
    if not done:  # another C library (musl's mallopt does nothing and says so)
        log.debug("malloc thresholds left as they are")
    return done
