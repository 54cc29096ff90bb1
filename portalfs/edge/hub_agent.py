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
from ..hub.client import EdgeHubClient, HubRefused, Listed
from ..store.base import ObjectStore

__all__ = ["HubAgent", "HEARTBEAT_SECONDS"]

log = logging.getLogger("portal.edge")

HEARTBEAT_SECONDS = 10.0  # register, refresh the directory and take reported damage this often (the hub: 15 s)
REGISTER_RETRY = Backoff(0.2, 5.0)  # a registration the hub did not take: again soon, not at the next heartbeat
REGISTER_PATIENCE = 30.0  # seconds the edge waits to be registered before it serves anyway, and says so
REFRESH_SECONDS = 1.0  # an unknown device has the directory read at most this often
UNKNOWN_WAITING = 8  # unknown devices that may wait for that read at once (the next are refused)
REVOCATION_SECONDS = 2.0  # the directory is read this often, so that a revoked device is cut off within it


def _on_loop() -> bool:
    """Whether this thread runs a trio loop (a blocking call into it from here would deadlock)."""
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


def _not_admitted(exc: PortalError) -> bool:
    return isinstance(exc, HubRefused) and exc.code == "not-admitted"


class HubAgent:
    def __init__(self, client: EdgeHubClient, heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self.client = client
        self.heartbeat = heartbeat
        self._devices: dict[bytes, Listed] = {}
        self._lock = threading.Lock()
        self._last_read = -REFRESH_SECONDS  # when an unknown device last had the directory read (monotonic)
        self._reading = threading.Lock()  # held while an unknown device has the directory read
        self._waiting = 0  # unknown devices waiting for a read
        self._token: trio.lowlevel.TrioToken | None = None

    def device_status(self, device: bytes) -> Listed | None:
        """The hub's word on ``device`` (None: not listed). Called from worker threads and the loop.

        A device not in the directory as last read has it read again, from a worker thread: at most once a
        second whoever asks, so a device that has just joined may wait up to that second for the read that
        finds it (it was refused, when another new device had just had the directory read). Devices that
        come meanwhile wait for that read and take its answer; past UNKNOWN_WAITING of them waiting, the
        next is refused at once (unknown devices cost the hub one read a second, and the edge a few
        threads, however many come)."""
        with self._lock:
            status = self._devices.get(device)
            if status is not None or self._token is None or _on_loop() or self._waiting >= UNKNOWN_WAITING:
                return status
            self._waiting += 1
        try:
            with self._reading:  # one read at a time; whoever waited here sees what it found
                with self._lock:
                    status = self._devices.get(device)
                    if status is not None:
                        return status
                time.sleep(max(0.0, self._last_read + REFRESH_SECONDS - time.monotonic()))
                self._last_read = time.monotonic()
                try:
                    devices = trio.from_thread.run(self.client.device_directory, trio_token=self._token)
                except (PortalError, trio.RunFinishedError) as exc:
                    log.warning("device directory: %s", exc)
                    return None
                self._remember(devices)
                return devices.get(device)
        finally:
            with self._lock:
                self._waiting -= 1

    async def watch_revocations(self) -> None:
        """Read the directory every REVOCATION_SECONDS: a device revoked at the hub is refused a HELLO, and its
        open connections any request, from then on (``EdgeSession``)."""
        while True:
            await trio.sleep(REVOCATION_SECONDS)
            try:
                self._remember(await self.client.device_directory())
            except PortalError as exc:
                log.info("device directory: %s", exc)
                if _not_admitted(exc):
                    self._remember({})

    def _remember(self, devices: dict[bytes, Listed]) -> None:
        with self._lock:
            self._devices = devices

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
        tried again after REGISTER_RETRY, not at the next heartbeat. An edge the hub has not admitted starts at
        once, says so, and asks again on the same schedule: it serves no device (the hub lets it read no
        directory) until the operator admits it.
        """
        self._token = trio.lowlevel.current_trio_token()
        started = False
        failures = 0
        patience = trio.current_time() + REGISTER_PATIENCE
        admitted = True
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
                if not admitted:
                    log.info("admitted at the hub: serving its devices")
                admitted = True
            except PortalError as exc:
                failures += 1
                if _not_admitted(exc):
                    self._remember({})  # removed by the operator: the devices it knew are served no more
                    if admitted:  # said once, not at every try: the operator may take days
                        log.warning("%s; until then this edge serves no device", exc)
                    admitted = False
                else:
                    log.warning("hub: %s", exc)
                if admitted and not started and trio.current_time() < patience:
                    await trio.sleep(REGISTER_RETRY.delay(failures))
                    continue
            if not started:
                started = True
                if failures and admitted:
                    log.warning(
                        "not registered at the hub after %.0f s: serving anyway, trying again", REGISTER_PATIENCE
                    )
                task_status.started()
            await trio.sleep(REGISTER_RETRY.delay(failures) if failures else self.heartbeat)
