"""An edge's agent at its hub: it registers and heartbeats, keeps the device directory fresh, and checks the
copies readers reported damaged. Its requests go through ``EdgeHubClient`` (docs/design.md, section 13)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import trio

from ..backoff import Backoff
from ..errors import PortalError
from ..hub.client import EdgeHubClient
from ..store.base import ObjectStore

__all__ = ["HubAgent", "HEARTBEAT_SECONDS"]

log = logging.getLogger("portal.edge")

HEARTBEAT_SECONDS = 10.0  # register, refresh the directory and take reported damage this often (the hub: 15 s)
REGISTER_RETRY = Backoff(0.2, 5.0)  # a registration the hub did not take: again soon, not at the next heartbeat
REGISTER_PATIENCE = 30.0  # seconds the edge waits to be registered before it serves anyway, and says so
REFRESH_SECONDS = 1.0  # an unknown device refreshes the directory at most this often


class HubAgent:
    def __init__(self, client: EdgeHubClient) -> None:
        self.client = client
        self._devices: dict[bytes, str] = {}
        self._lock = threading.Lock()
        self._last_refresh = 0.0
        self._token: trio.lowlevel.TrioToken | None = None

    def device_status(self, device: bytes) -> str | None:
        """ "active", "revoked", or None (not listed). Called from worker threads; an unknown device triggers
        one refresh of the directory (at most once a second)."""
        with self._lock:
            status = self._devices.get(device)
            stale = time.monotonic() - self._last_refresh > REFRESH_SECONDS
        if status is None and stale and self._token is not None:
            try:
                devices = trio.from_thread.run(self.client.device_directory, trio_token=self._token)
            except (PortalError, trio.RunFinishedError) as exc:
                log.warning("device directory: %s", exc)
                return None
            self._remember(devices)
            status = devices.get(device)
        return status

    def _remember(self, devices: dict[bytes, str]) -> None:
        with self._lock:
            self._devices, self._last_refresh = devices, time.monotonic()

    async def run(
        self,
        address: str,
        transports: tuple[str, ...],
        store: ObjectStore,
        check: Callable[[list[bytes]], list[bool]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Heartbeat, refresh the directory and ``check`` the copies readers reported damaged, until cancelled.

        ``task_status.started()`` once the hub lists this edge (it serves only then: a device that joins the hub
        at once finds it), or after REGISTER_PATIENCE seconds of trying, said plainly; a failed registration is
        tried again after REGISTER_RETRY, not at the next heartbeat.
        """
        self._token = trio.lowlevel.current_trio_token()
        started = False
        failures = 0
        patience = trio.current_time() + REGISTER_PATIENCE
        while True:
            try:
                stat = await trio.to_thread.run_sync(store.stat)
                await self.client.register(address, transports, stat.bytes, stat.objects)
                self._remember(await self.client.device_directory())
                suspects = await self.client.suspects()
                if suspects:
                    intact = await trio.to_thread.run_sync(check, suspects)
                    log.info("checked %d copies readers reported damaged: %d were (removed)", len(suspects),
                             intact.count(False))  # fmt: skip
                failures = 0
            except PortalError as exc:
                failures += 1
                log.warning("hub: %s", exc)
                if not started and trio.current_time() < patience:
                    await trio.sleep(REGISTER_RETRY.delay(failures))
                    continue
            if not started:
                started = True
                if failures:
                    log.warning(
                        "not registered at the hub after %.0f s: serving anyway, trying again", REGISTER_PATIENCE
                    )
                task_status.started()
            await trio.sleep(REGISTER_RETRY.delay(failures) if failures else HEARTBEAT_SECONDS)
