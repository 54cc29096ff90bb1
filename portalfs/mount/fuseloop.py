"""Whose turn it is to read the next FUSE request: pyfuse3's wait, without its lock.

pyfuse3 serves requests on trio tasks that take turns reading /dev/fuse
(``_session_loop``). Before each read, its ``_wait_fuse_readable`` takes a
trio Lock, so that one task at a time waits for the descriptor, and then waits
through epoll even when requests are already queued. For a request that does
not wait on anything itself (a lookup, a getattr, a create), that is one pass
of trio's run loop to take the lock (trio's Lock checkpoints even when it is
free), the lock's parking-lot bookkeeping, and an epoll registration and
wake-up: about a quarter of the mount's event-loop thread in a run of small
files, by py-spy.

``Turns`` keeps pyfuse3's contract (one task waits for the descriptor at a time;
True once it is readable, False once the session is closing) and replaces that
function while a mount runs (pyfuse3 looks it up by name for each request). The
turn passes from one task straight to the next, first come first served. A task
whose turn it is reads at once when a request is waiting already (``poll`` with
no timeout), and goes through trio's run loop only every ``STREAK`` requests, so
that the other tasks (checkpoints, replies from worker threads) never wait long.

pyfuse3 counts its idle readers in a field only its own function updates, so
with this one it starts a worker task after each request it reads until it has
``pyfuse3.main``'s ``max_tasks`` (99), and ends none: an idle one is a parked
coroutine. Where pyfuse3 is not as expected (no such function, or not exactly
one /dev/fuse descriptor in the process), its own wait stays.
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import logging
import os
import select
from collections.abc import Iterator

import pyfuse3
import trio

__all__ = ["STREAK", "Turns", "installed"]

log = logging.getLogger("portalfs")

STREAK = 16  # requests read at once, one after another, before a pass through trio's run loop


class Turns:
    """The task whose turn it is to wait for ``fd``, and those waiting for theirs, in order."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._reader: trio.lowlevel.Task | None = None
        self._waiting: collections.deque[trio.lowlevel.Task] = collections.deque()
        self._streak = 0
        self.closed = False

    async def wait_readable(self) -> bool:
        """True once ``fd`` is readable and this task's turn has come; False once it is closing
        (``trio.lowlevel.notify_closing``, as ``pyfuse3.terminate`` does): every task then gets False."""
        task = trio.lowlevel.current_task()
        if self._reader is None:
            self._reader = task
        else:
            self._waiting.append(task)

            def abort(_: object) -> trio.lowlevel.Abort:
                self._waiting.remove(task)
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)  # rescheduled by the task before it in turn
        try:
            if self.closed:
                return False
            if self._streak < STREAK and self._poll.poll(0):
                self._streak += 1
                return True
            await trio.lowlevel.wait_readable(self.fd)
            self._streak = 1
            return True
        except trio.ClosedResourceError:
            self.closed = True
            return False
        finally:  # the turn passes on; this task reads its request before the next one runs
            self._reader = self._waiting.popleft() if self._waiting else None
            if self._reader is not None:
                trio.lowlevel.reschedule(self._reader)


def _fuse_fd() -> int | None:
    """The process's one /dev/fuse descriptor (``pyfuse3.init`` opened it), or None."""
    found = []
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # no /proc: pyfuse3's own wait
        return None
    for name in names:
        with contextlib.suppress(OSError):  # the listing's own descriptor, gone by now
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found.append(int(name))
    return found[0] if len(found) == 1 else None


@contextlib.contextmanager
def installed() -> Iterator[Turns | None]:
    """``Turns`` in place of pyfuse3's wait while the block runs (after ``pyfuse3.init``); yields it, or None
    where pyfuse3's own wait stays."""
    original = getattr(pyfuse3, "_wait_fuse_readable", None)
    fd = _fuse_fd()
    if not inspect.iscoroutinefunction(original) or fd is None:
        log.debug("pyfuse3's own wait for requests stays")
        yield None
        return
    turns = Turns(fd)
    pyfuse3._wait_fuse_readable = turns.wait_readable  # type: ignore[attr-defined]
    try:
        yield turns
    finally:
        pyfuse3._wait_fuse_readable = original  # type: ignore[attr-defined]
