"""The hub bounds what one key can make it hold: event streams (and requests) in progress at once."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
import trio

from portalfs.hub import app
from portalfs.hub.auth import sign_request
from portalfs.hub.client import HubClient
from portalfs.hub.server import run_hub
from portalfs.keys import DeviceKey, Identity


async def test_one_key_holds_at_most_so_many_event_streams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "MAX_POLLS_PER_KEY", 2)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(run_hub, tmp_path / "hub.db", "127.0.0.1", 0, trio.sleep_forever)
        url = f"http://127.0.0.1:{port}"
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
        path = f"/v1/portals/{portal.hex()}/events?after=0"

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
