"""The allocator's thresholds, set through mallopt(3) on glibc: in a fresh interpreter each time."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

REUSE = """
import ctypes, sys
if sys.argv[1] == "keep":
    from portalfs.memory import keep_freed_memory
    assert keep_freed_memory() is True
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
first = libc.malloc(1 << 20)
libc.free(first)
second = libc.malloc(1 << 20)
libc.free(second)
print(first == second)
"""


def _reused(mode: str) -> bool:
    out = subprocess.run([sys.executable, "-c", REUSE, mode], capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip() == "True"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's thresholds are glibc's")
def test_a_freed_megabyte_is_reused_from_the_heap_not_mapped_afresh() -> None:
    assert not _reused("default")  # glibc maps the first megabyte block of its own, and unmaps it on free
    assert _reused("keep")


ACROSS_THREADS = """
import ctypes, threading
from portalfs.memory import keep_freed_memory
assert keep_freed_memory() is True
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
made = []
worker = threading.Thread(target=lambda: made.append(libc.malloc(1 << 20)))
worker.start()
worker.join()
libc.free(made[0])
again = libc.malloc(1 << 20)
print(again == made[0])
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's")
def test_a_block_a_worker_thread_made_is_reused_by_the_thread_that_freed_it() -> None:
    # One arena: a chunk unsealed on a worker and freed by the event loop is not kept aside in the worker's.
    out = subprocess.run([sys.executable, "-c", ACROSS_THREADS], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "True"
