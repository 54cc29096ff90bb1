"""A read-write mount syncs its own portal: each version it commits is pushed and published at once.

pyfuse3 serves one filesystem per process, so portald cannot host the mounts;
the mount process runs the sync engine for its one portal instead, on its own
loop, with the fabric's swarm on that loop (docs/design.md, section 16,
"Mounts sync their portal"). ``MountPublisher`` holds the portal's sync claim
(``Device.portal_syncer``) from its start to the unmount, so that portald
leaves the portal to it; each commit wakes it, and it pushes what the new
versions added and publishes them (``Fabric.push``) on a worker thread, one
push at a time (versions committed meanwhile go in the next). A failed push
is tried again after a backoff. After the unmount's last commit it pushes once
more; whatever is left then (the hub was down), portald publishes: the
publisher tells it over its control socket, if one runs.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack

import trio

from ..backoff import Backoff
from ..errors import PortalError
from ..fabric.config import published_version
from ..fabric.sync import Fabric
from ..portal import PortalView
from ..root import RootRecord
from .control import call_daemon, daemon_socket

__all__ = ["MountPublisher"]

log = logging.getLogger("portal.publisher")

RETRY = Backoff(1.0, 60.0)  # a push that failed


class MountPublisher:
    def __init__(self, fabric: Fabric, view: PortalView) -> None:
        self.fabric = fabric
        self.view = view
        self.published = 0  # versions this mount published
        self._due = trio.Event()
        self._claim = ExitStack()
        self._claimed = False
        self._created = False
        self._reported: set[str] = set()

    def committed(self, record: RootRecord) -> None:
        self._due.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()  # the mount serves while the claim is awaited: commits wait for it in _due
        device = self.view.device
        # portald, or a command, may be in the middle of a sync of this portal: the claim waits for its end
        await trio.to_thread.run_sync(self._claim.enter_context, device.portal_syncer(self.view.row.id, wait=True))
        self._claimed = True
        self._due.set()  # what earlier mounts committed and nobody published yet
        failures = 0
        while True:
            await self._due.wait()
            self._due = trio.Event()
            try:
                await trio.to_thread.run_sync(self._push)
                failures = 0
            except PortalError as exc:
                failures += 1
                delay = RETRY.delay(failures)
                if str(exc) not in self._reported:  # the same failure, again and again, is said once
                    self._reported.add(str(exc))
                    log.warning("%s: publishing: %s; trying again in %.0f s", self.view.row.name, exc, delay)
                await trio.sleep(delay)
                self._due.set()

    def _push(self) -> None:
        if self.view.device.state.head(self.view.row.id) is None:
            return
        if not self._created:
            self.fabric.create_if_owner(self.view)
            self._created = True
        result = self.fabric.push(self.view)
        if result["published"]:
            self.published += result["published"]
            log.info("%s: published %d versions (%d objects)", self.view.row.name, result["published"],
                     result["objects"])  # fmt: skip

    def pending(self) -> bool:
        head = self.view.device.state.head(self.view.row.id)
        return head is not None and head.version > published_version(self.view.device, self.view.row.id)

    async def finish(self) -> None:
        """Publish what the last commit made (once: a failure is left to portald); then let go of the claim."""
        try:
            if self._claimed and self.pending():
                try:
                    await trio.to_thread.run_sync(self._push)
                except PortalError as exc:
                    log.warning("%s: publishing at unmount: %s; portald publishes it", self.view.row.name, exc)
        finally:
            self._claim.close()
        if self.pending():  # portald, if one runs, takes it from here
            try:
                socket = daemon_socket(self.view.device.home.data)
                await trio.to_thread.run_sync(call_daemon, socket, {"op": "changed"}, 5.0)
            except PortalError as exc:
                log.info("could not tell portald of the versions left to publish: %s", exc)
