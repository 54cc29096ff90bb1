"""portalfs.threads: blocking calls from a trio task on the worker pool."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import trio

from portalfs import threads


async def test_a_call_returns_its_result_from_another_thread() -> None:
    here = threading.get_ident()
    result = await threads.run_sync(lambda a, b: (a + b, threading.get_ident()), 2, 3)
    assert result[0] == 5
    assert result[1] != here


async def test_what_a_call_raises_is_raised_in_the_task() -> None:
    def fail() -> None:
        raise KeyError("gone")

    with pytest.raises(KeyError, match="gone"):
        await threads.run_sync(fail)


async def test_calls_made_together_run_together() -> None:
    # Each call waits until all of them have started: they finish only if the pool runs them at once.
    count = 6
    barrier = threading.Barrier(count, timeout=10)
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(threads.run_sync, barrier.wait)
    assert not barrier.broken


async def test_a_cancelled_task_does_not_start_a_call() -> None:
    ran = threading.Event()
    with trio.CancelScope() as scope:
        scope.cancel()
        await threads.run_sync(ran.set)
    assert scope.cancelled_caught
    assert not ran.is_set()


async def test_a_call_once_started_runs_to_its_end_before_the_task_is_cancelled() -> None:
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def work() -> str:
        started.set()
        release.wait(10)
        finished.set()
        return "done"

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def cancel_once_started() -> None:
                await trio.to_thread.run_sync(started.wait, 10)
                scope.cancel()
                release.set()

            nursery.start_soon(cancel_once_started)
            assert await threads.run_sync(work) == "done"
            await trio.sleep(10)  # the next checkpoint takes the cancellation
    assert scope.cancelled_caught
    assert finished.is_set()


def test_a_forked_child_runs_calls_on_threads_of_its_own() -> None:
    # The parent's pool has a thread, idle; the child has none of the parent's threads. A call that waited for
    # one would never run (and cannot be cancelled), so the parent gives the child a bounded time.
    async def call() -> int:
        return await threads.run_sync(lambda: 7)

    assert trio.run(call) == 7
    deadline = time.monotonic() + 10
    while not threads._pool._idle and time.monotonic() < deadline:  # its thread back in the pool, idle
        time.sleep(0.001)
    assert threads._pool._idle
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            code = 0 if trio.run(call) == 7 else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the child's call never ran")
    assert os.waitstatus_to_exitcode(done[1]) == 0
