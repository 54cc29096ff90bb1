"""The swarm's GET gate: a freed slot goes to the most urgent waiter, cancelled waiters give up their place."""

from __future__ import annotations

import trio
import trio.testing

from portalfs.fabric.swarm import PriorityGate
from portalfs.store.base import Priority


async def test_a_waiting_foreground_read_goes_before_earlier_background_fetches() -> None:
    gate = PriorityGate(1)
    order: list[str] = []
    release = trio.Event()

    async def holder() -> None:
        async with gate.slot(Priority.REPAIR):
            await release.wait()

    async def fetch(name: str, priority: Priority) -> None:
        async with gate.slot(priority):
            order.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder)
        await trio.testing.wait_all_tasks_blocked()
        for name, priority in [("repair", Priority.REPAIR), ("pull", Priority.PULL), ("ahead", Priority.READAHEAD),
                               ("read", Priority.FOREGROUND), ("ahead2", Priority.READAHEAD)]:  # fmt: skip
            nursery.start_soon(fetch, name, priority)
            await trio.testing.wait_all_tasks_blocked()
        assert gate.waiting == 5 and order == []
        release.set()
    assert order == ["read", "ahead", "ahead2", "pull", "repair"]
    assert gate.free == 1 and gate.waiting == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_the_slots_add_up() -> None:
    gate = PriorityGate(2)
    release = trio.Event()
    served: list[int] = []

    async def hold() -> None:
        async with gate.slot(Priority.PULL):
            await release.wait()

    async def wait(n: int) -> None:
        async with gate.slot(Priority.FOREGROUND):
            served.append(n)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold)
        nursery.start_soon(hold)
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            nursery.start_soon(wait, 0)  # keeps its place
            async with trio.open_nursery() as inner:
                inner.start_soon(wait, 1)
                await trio.testing.wait_all_tasks_blocked()
                assert gate.waiting == 2
                scope.cancel()
        assert gate.waiting == 1
        release.set()
    assert served == [0]
    assert gate.free == 2 and gate.waiting == 0
