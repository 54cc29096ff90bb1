"""The process's one trio loop (docs/design.md, section 17, "One loop per process").

An entry point that is async (portald, a mount, the hub and edge servers) runs
``trio.run`` itself and, inside it, ``async with hosting():`` makes its loop
the process's runtime. A blocking program (portalctl, a test) has no loop of
its own: the first component that needs one (the swarm) starts it, on a
thread of its own, once per process (``current``); it lives until the process
ends. Either way, components that live on a loop start in the runtime's
nursery (``Runtime.start``), and code on worker threads reaches them with
``Runtime.call``. Nothing else in the package calls ``trio.run``
(``tests/unit/test_layers.py`` scans for it).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

__all__ = ["Runtime", "current", "hosting"]

T = TypeVar("T")


class Runtime:
    """A trio loop and a nursery on it that lives as long as the loop's entry point."""

    def __init__(self, token: trio.lowlevel.TrioToken, nursery: trio.Nursery) -> None:
        self.token = token
        self.nursery = nursery

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` on the loop and return its result; blocks (never call it on the loop itself)."""
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return trio.from_thread.run_sync(fn, *args, trio_token=self.token)

    def start(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Start ``fn(*args, task_status=...)`` in the runtime's nursery and return what it passes to
        ``task_status.started`` (from a thread that is not the loop's)."""
        return self.call(self.nursery.start, fn, *args)


_lock = threading.Lock()
_hosted: list[Runtime] = []  # the loops of async entry points, innermost last
_background: Runtime | None = None


@asynccontextmanager
async def hosting() -> AsyncIterator[Runtime]:
    """Make the running loop the process's runtime while inside; what started in its nursery is cancelled at the
    end."""
    async with trio.open_nursery() as nursery:
        runtime = Runtime(trio.lowlevel.current_trio_token(), nursery)
        with _lock:
            _hosted.append(runtime)
        try:
            yield runtime
        finally:
            with _lock:
                _hosted.remove(runtime)
            nursery.cancel_scope.cancel()


def current() -> Runtime:
    """The process's runtime: the hosting entry point's loop, or else a loop on a thread, started once."""
    global _background
    with _lock:
        if _hosted:
            return _hosted[-1]
        if _background is None:
            _background = _start_thread()
        return _background


def _start_thread() -> Runtime:
    started: list[Runtime] = []
    ready = threading.Event()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            started.append(Runtime(trio.lowlevel.current_trio_token(), nursery))
            ready.set()
            await trio.sleep_forever()

    threading.Thread(target=trio.run, args=(main,), name="portal-runtime", daemon=True).start()
    ready.wait()
    return started[0]
