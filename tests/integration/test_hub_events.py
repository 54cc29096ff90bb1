"""The hub's event streams: one key holds at most so many at once, and a hub told to stop answers those that
wait on it at once, and stops."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import trio

from portalfs.hub import app, server
from portalfs.hub.auth import sign_request
from portalfs.hub.client import HubClient
from portalfs.hub.server import run_hub
from portalfs.keys import DeviceKey, Identity


async def _enrolled(url: str) -> tuple[DeviceKey, str]:
    """A device enrolled at the hub at ``url`` and the path of the event stream of a portal it created."""
    identity, device = Identity(os.urandom(32)), DeviceKey(os.urandom(32))
    portal = os.urandom(16)

    def enroll() -> None:
        hub = HubClient(url, device)
        try:
            hub.enroll(identity.enroll(device.public, "laptop", time.time_ns()).to_bytes())
            hub.create_portal(portal)
        finally:
            hub.close()

    await trio.to_thread.run_sync(enroll)
    return device, f"/v1/portals/{portal.hex()}/events?after=0"


async def test_one_key_holds_at_most_so_many_event_streams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "MAX_POLLS_PER_KEY", 2)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(run_hub, tmp_path / "hub.db", "127.0.0.1", 0, trio.sleep_forever)
        url = f"http://127.0.0.1:{port}"
        device, path = await _enrolled(url)

        async def poll(client: httpx.AsyncClient, timeout: float) -> int:
            headers = sign_request(device.sign, device.public, "GET", path, b"")
            return (await client.get(url + path, headers=headers, timeout=timeout)).status_code

        async with httpx.AsyncClient() as client:
            for _ in range(2):  # two event streams wait for a version that does not come
                nursery.start_soon(poll, client, 60.0)
            with trio.fail_after(20):
                while True:  # a third is refused at once, once the two are waiting
                    try:
                        status = await poll(client, 1.0)
                    except httpx.TimeoutException:
                        continue  # it came before the two were in: it waited, and was given up
                    assert status == 429
                    break
            nursery.cancel_scope.cancel()


async def test_a_stopping_hub_answers_a_waiting_event_stream_at_once_and_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits = trio.Event()

    class Watched(app.LongPolls):
        @contextmanager
        def waiting(self, seconds: float) -> Iterator[trio.CancelScope]:
            with super().waiting(seconds) as scope:
                waits.set()
                yield scope

    monkeypatch.setattr(server, "LongPolls", Watched)
    stop = trio.Event()
    answered: list[httpx.Response] = []
    async with trio.open_nursery() as outer:
        port = await outer.start(run_hub, tmp_path / "hub.db", "127.0.0.1", 0, stop.wait)
        url = f"http://127.0.0.1:{port}"
        device, path = await _enrolled(url)
        async with httpx.AsyncClient() as client:

            async def poll() -> None:
                headers = sign_request(device.sign, device.public, "GET", path, b"")
                answered.append(await client.get(url + path, headers=headers, timeout=60.0))

            outer.start_soon(poll)  # no version comes: it would wait out LONG_POLL_SECONDS
            with trio.fail_after(20):
                await waits.wait()
            assert not answered
            stopped_at = trio.current_time()
            stop.set()
            with trio.fail_after(3):  # the server's graceful timeout is 5 s
                while not answered:
                    await trio.sleep(0.01)
    assert trio.current_time() - stopped_at < 3  # run_hub has returned: the nursery is closed
    assert answered[0].status_code == 200
    assert answered[0].json() == {"result": []}
