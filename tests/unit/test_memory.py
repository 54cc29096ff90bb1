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


GIVE_BACK = """
import ctypes, re
from portalfs.memory import give_back_freed_memory, keep_freed_memory
assert keep_freed_memory() is True
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
rss = lambda: int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024
blocks = [libc.malloc(4096) for _ in range(12_800)]  # 50 MiB, below the trim threshold: kept when freed
for block in blocks:
    ctypes.memset(block, 1, 4096)
held = rss()
for block in blocks[:-1]:  # the last one stays, so that the free pages are not only the heap's top
    libc.free(block)
kept = rss()
give_back_freed_memory()
print(held, kept, rss())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim(3) is glibc's")
def test_freed_memory_the_heap_keeps_goes_back_to_the_kernel_when_asked() -> None:
    out = subprocess.run([sys.executable, "-c", GIVE_BACK], capture_output=True, text=True, check=True, timeout=60)
    held, kept, after = map(int, out.stdout.split())
    assert kept > held - 10  # freed but kept by the heap (TRIM_THRESHOLD), for reuse
    assert after < kept - 40  # handed back: about 50 MiB
