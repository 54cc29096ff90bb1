"""Turns to read FUSE requests (portalfs/mount/fuseloop.py), on a pipe standing in for /dev/fuse: tasks loop
as pyfuse3's workers do (wait for the turn, read one request, handle it)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

import pyfuse3
import pytest
import trio

from portalfs.mount import fuseloop
from portalfs.mount.fuseloop import STREAK, Turns


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


async def _worker(
    turns: Turns, name: str, got: list[tuple[str, bytes]], on_read: Callable[[], object] = lambda: None
) -> None:
    """pyfuse3's loop: a turn, then one request read (a byte), until the turns close."""
    while await turns.wait_readable():
        got.append((name, os.read(turns.fd, 1)))
        on_read()


async def test_workers_take_turns_each_request_is_read_once_and_all_stop_when_it_closes(
    pipe: tuple[int, int],
) -> None:
    read_end, write_end = pipe
    turns, got = Turns(read_end), []
    with trio.fail_after(10):  # a worker left waiting after the close would hang the mount's unmount
        await _take_turns(turns, write_end, got)
    assert b"".join(data for _, data in got) == b"0123456789"
    assert [name for name, _ in got[:3]] == ["a", "b", "c"]  # first come, first served
    assert turns.closed


async def _take_turns(turns: Turns, write_end: int, got: list[tuple[str, bytes]]) -> None:
    async with trio.open_nursery() as nursery:
        for name in "abc":  # they come in this order
            nursery.start_soon(_worker, turns, name, got)
            await trio.testing.wait_all_tasks_blocked()
        for byte in b"0123456789":
            os.write(write_end, bytes([byte]))
            await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.notify_closing(turns.fd)  # pyfuse3.terminate(): the one waiting and the two parked end


async def test_queued_requests_are_read_at_once_and_the_run_loop_has_its_turn_every_streak(
    pipe: tuple[int, int],
) -> None:
    read_end, write_end = pipe
    os.write(write_end, bytes(4 * STREAK))  # a burst, all queued before the first read
    turns, got, steps_at_read = Turns(read_end), [], []
    steps = Steps()
    trio.lowlevel.add_instrument(steps)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_counted_worker, steps, turns, got, lambda: steps_at_read.append(steps.count))
            while len(got) < 4 * STREAK:
                await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(steps)
    in_a_row = [len(list(reads)) for _, reads in itertools.groupby(steps_at_read)]  # reads between two passes
    assert in_a_row == [STREAK] * 4


class Steps(trio.abc.Instrument):
    """How many times trio's run loop has run ``task`` (resumed it after it waited)."""

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.count += task is self.task


async def _counted_worker(
    steps: Steps, turns: Turns, got: list[tuple[str, bytes]], on_read: Callable[[], object]
) -> None:
    steps.task = trio.lowlevel.current_task()
    await _worker(turns, "a", got, on_read)


async def test_a_task_cancelled_while_waiting_for_its_turn_leaves_the_line(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    turns, got = Turns(read_end), []
    with trio.fail_after(10):
        await _cancel_one(turns, write_end, got)
    assert got == [("a", b"x"), ("a", b"y")]


async def _cancel_one(turns: Turns, write_end: int, got: list[tuple[str, bytes]]) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_worker, turns, "a", got)
        await trio.testing.wait_all_tasks_blocked()
        waiting = trio.CancelScope()
        nursery.start_soon(_cancellable, turns, waiting)
        await trio.testing.wait_all_tasks_blocked()
        waiting.cancel()
        await trio.testing.wait_all_tasks_blocked()
        for byte in b"xy":
            os.write(write_end, bytes([byte]))
            await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.notify_closing(turns.fd)


async def _cancellable(turns: Turns, scope: trio.CancelScope) -> None:
    with scope:
        await turns.wait_readable()
    assert scope.cancelled_caught


def test_pyfuse3s_own_wait_stays_where_the_process_serves_no_mount() -> None:
    original = pyfuse3._wait_fuse_readable  # type: ignore[attr-defined]
    with fuseloop.installed() as turns:
        assert turns is None
        assert pyfuse3._wait_fuse_readable is original  # type: ignore[attr-defined]
