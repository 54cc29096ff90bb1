"""An edge's word on a device (portalfs/edge/hub_agent.py): a device the edge does not know yet has the hub's
directory read, at most once a second whoever asks; a device that has just joined waits for that read rather
than being refused."""

from __future__ import annotations

import trio

from portalfs.edge.hub_agent import HubAgent
from portalfs.hub.client import Listed

A, B, IDENTITY = b"a" * 32, b"b" * 32, b"i" * 32
ACTIVE = Listed("active", IDENTITY)


class Hub:
    """The directory, slow to answer (a hub across a network)."""

    def __init__(self, *devices: bytes) -> None:
        self.devices = set(devices)
        self.reads = 0

    async def device_directory(self) -> dict[bytes, Listed]:
        self.reads += 1
        await trio.sleep(0.2)
        return {device: ACTIVE for device in self.devices}


def _agent(hub: Hub) -> HubAgent:
    agent = HubAgent(hub)  # type: ignore[arg-type]
    agent._token = trio.lowlevel.current_trio_token()  # as run() sets it
    return agent


async def test_every_hello_of_a_device_that_just_joined_waits_for_the_directory_read_it_caused() -> None:
    hub = Hub(A)
    agent = _agent(hub)
    answers: list[Listed | None] = []

    def hello() -> None:  # on a worker thread, as the edge authenticates a HELLO
        answers.append(agent.device_status(A))

    async with trio.open_nursery() as nursery:
        for _ in range(3):  # three connections opened at once
            nursery.start_soon(trio.to_thread.run_sync, hello)
    assert answers == [ACTIVE] * 3
    assert hub.reads == 1


async def test_a_device_that_joins_just_after_another_waits_for_the_next_read_rather_than_being_refused() -> None:
    hub = Hub(A)
    agent = _agent(hub)
    assert await trio.to_thread.run_sync(agent.device_status, A) == ACTIVE
    hub.devices.add(B)  # B joins within the second after A had the directory read
    started = trio.current_time()
    assert await trio.to_thread.run_sync(agent.device_status, B) == ACTIVE
    assert hub.reads == 2 and trio.current_time() - started >= 0.5  # it waited for the next read
    assert await trio.to_thread.run_sync(agent.device_status, b"x" * 32) is None  # the hub does not list it
    assert hub.reads == 3
