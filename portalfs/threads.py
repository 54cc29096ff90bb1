"""Blocking calls from a trio task, on a pool of worker threads, with a lighter hand-off than trio's.

``trio.to_thread.run_sync`` passes each call through a capacity limiter, a
thread cache and several trips through the scheduler. A mount makes such a
call for every close that journals a file and every chunk it loads (and for
its fetches and checkpoints), and waits for it: on a two-core machine a call
that did nothing took 170-210 µs there and 60-75 µs here (medians of 1,000),
and a close of a small file, whose journal record is one durable SQLite
transaction, 410-540 µs there and 350-410 µs here.

``run_sync`` keeps the semantics the callers rely on: the call cannot be
cancelled once started (the task waits for it, as with trio's default), a
task already cancelled does not start it, and what it raises is raised in
the task. The pool starts a thread when a call finds none idle, up to
``MAX_THREADS``; past that, calls wait their turn. Threads live as long as
the process (daemon threads, idle in a queue); a child of fork(2) starts a
pool of its own.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

import outcome
import trio

__all__ = ["run_sync", "MAX_THREADS"]

T = TypeVar("T")

MAX_THREADS = 32  # as many calls at once (a mount's read-ahead, several writers' closes)


class _Pool:
    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # threads waiting for a job that no call has claimed yet

    def submit(self, job: Callable[[], None]) -> None:
        start = False
        with self._lock:
            if self._idle:
                self._idle -= 1  # this job is that thread's
            elif self._threads < self._limit:
                self._threads += 1
                start = True
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._work, name="portal-worker", daemon=True).start()

    def _work(self) -> None:
        while True:
            self._jobs.get()()
            with self._lock:
                self._idle += 1


_pool = _Pool(MAX_THREADS)


def _forked() -> None:
    """A child of fork(2) has none of the parent's threads: it starts its own pool."""
    global _pool
    _pool = _Pool(MAX_THREADS)


os.register_at_fork(after_in_child=_forked)


async def run_sync(func: Callable[..., T], *args: object) -> T:
    """``func(*args)`` on a worker thread; its result, or what it raised. Not cancellable once started."""
    await trio.lowlevel.checkpoint_if_cancelled()
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def job() -> None:
        result = outcome.capture(func, *args)
        token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    _pool.submit(job)
    return await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)  # type: ignore[no-any-return]
