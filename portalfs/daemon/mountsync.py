"""A read-write mount syncs its own portal, both ways, live (docs/design.md, section 16, "Mounts sync their
portal").

pyfuse3 serves one filesystem per process, so portald cannot host the mounts;
the mount process runs the sync engine for its one portal instead, on its own
loop, with the fabric's swarm on that loop. ``MountSync`` holds the portal's
sync claim (``Device.portal_syncer``) from its start to the unmount, so that
portald leaves the portal to it, and:

- *publishes*: each commit wakes it, and it pushes what the new versions
  added and publishes them (``Fabric.push``), one push at a time (versions
  committed meanwhile go in the next); a failed push is tried again after a
  backoff, and one the hub refuses because another device published first
  (409) lands that device's versions first;
- *follows*: it long-polls the hub's event stream for the portal, and when
  another device publishes, the mount commits what is settled, lands the
  hub's versions merged with its own (``Fabric.land``) and moves its live
  tree onto the result in place (``PortalOperations.absorb``); the merged
  version is then published.

Pushes and landings run one at a time, on worker threads. After the
unmount's last commit it publishes once more; what is left then (the hub was
down), portald publishes: it is told over its control socket, if one runs.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack

import trio

from ..backoff import Backoff
from ..errors import Conflict, PortalError
from ..fabric.config import hub_client, is_paused, published_version
from ..fabric.store import fetch_directories
from ..fabric.sync import Fabric, device_label
from ..hub.client import HubRefused
from ..merge import Writer
from ..mount.operations import PortalOperations
from ..portal import PortalView
from ..root import RootPayload, RootRecord
from ..worktree.registry import note_read_only
from .control import call_daemon, daemon_socket
from .manners import MANNERS_META, MANNERS_SECONDS, held_back

__all__ = ["MountSync"]

log = logging.getLogger("portal.mountsync")

RETRY = Backoff(1.0, 60.0)  # a push that failed, an event stream the hub refused
PAUSE_LOOK_SECONDS = 5.0  # while the portal is paused, how often the mount looks whether it still is
# refusals of a publish that no retry undoes: the mount turns read-only
ACCESS_LOST = frozenset({"forbidden", "revoked", "expired", "deactivated", "deleted", "released"})


class MountSync:
    def __init__(self, fabric: Fabric, view: PortalView) -> None:
        self.fabric = fabric
        self.view = view
        self.published = 0  # versions this mount published
        self.landed = 0  # times versions from elsewhere landed in the mount
        self._due = trio.Event()  # something to publish
        self._engine = trio.Lock()  # one push or landing at a time
        self._claim = ExitStack()
        self._claimed = False
        self._created = False
        self._reported: set[str] = set()

    def committed(self, record: RootRecord) -> None:
        self._due.set()

    async def run(
        self, mount: PortalOperations, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()  # the mount serves while the claim is awaited: commits wait for it in _due
        device = self.view.device
        # portald, or a command, may be in the middle of a sync of this portal: the claim waits for its end
        await trio.to_thread.run_sync(self._claim.enter_context, device.portal_syncer(self.view.row.id, wait=True))
        self._claimed = True
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow, mount)
            await self._publish(mount)

    # publishing

    async def _publish(self, mount: PortalOperations) -> None:
        self._due.set()  # what earlier mounts committed and nobody published yet
        failures = 0
        while True:
            await self._due.wait()
            await self._unpaused()
            await self._mannerly()
            self._due = trio.Event()
            try:
                async with self._engine:
                    await trio.to_thread.run_sync(self._push)
                failures = 0
            except Conflict:  # another device published first: land its versions, then publish the merge
                await self._land(mount)
                self._due.set()
            except PortalError as exc:
                if isinstance(exc, HubRefused) and exc.code in ACCESS_LOST:
                    # the portal was deleted or closed, or this device or identity may write it no more: the
                    # mount turns read-only; what it committed stays here (section 16, "Access lost while mounted")
                    mount.freeze(f"the hub refuses to publish it ({exc.code}): {exc}")
                    await trio.to_thread.run_sync(note_read_only, self.view.device, mount.frozen or "")
                    return
                failures += 1
                self._say(f"publishing: {exc}", RETRY.delay(failures))
                await trio.sleep(RETRY.delay(failures))
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

    async def _unpaused(self) -> None:
        """While ``portalctl pause`` holds the portal: nothing is published or taken; looked at again every
        PAUSE_LOOK_SECONDS (the one thing a mount looks at on a timer: it has no control socket)."""
        said = False
        while await trio.to_thread.run_sync(is_paused, self.view.device, self.view.row.id):
            if not said:
                log.info("%s: paused; versions wait here and at the hub until `portalctl resume`", self.view.row.name)
                said = True
            await trio.sleep(PAUSE_LOOK_SECONDS)

    async def _mannerly(self) -> None:
        """While the laptop's manners hold background sync back (on battery below the threshold, on a metered
        network: section 16), what this mount commits waits here, as portald's syncs do; looked at again every
        MANNERS_SECONDS. An explicit `portalctl sync` does not reach a mounted portal: unmount, or plug in."""
        said: str | None = None
        while (reason := await trio.to_thread.run_sync(lambda: held_back(self._manners_row()))) is not None:
            if reason != said:
                log.info("%s: publishing waits: %s", self.view.row.name, reason)
                said = reason
            await trio.sleep(MANNERS_SECONDS)
        if said is not None:
            log.info("%s: publishing goes on", self.view.row.name)

    def _manners_row(self) -> bytes | None:
        return self.view.device.state.get_meta(MANNERS_META)

    def _say(self, what: str, retry: float) -> None:
        if what not in self._reported:  # the same failure, again and again, is said once
            self._reported.add(what)
            log.warning("%s: %s; trying again in %.0f s", self.view.row.name, what, retry)

    # following

    async def _follow(self, mount: PortalOperations) -> None:
        """Long-poll the hub for versions beyond this device's; land each batch in the mount at once."""
        assert self.fabric.config.hub is not None
        hub = hub_client(self.fabric.config.hub, self.fabric.secrets.device, self.fabric.config)
        failures = 0
        try:
            while True:
                after = published_version(self.view.device, self.view.row.id)
                try:
                    records = await trio.to_thread.run_sync(
                        hub.wait_roots, self.view.row.id, after, abandon_on_cancel=True
                    )
                except PortalError as exc:
                    failures += 1
                    self._say(f"event stream: {exc}", RETRY.delay(failures))
                    await trio.sleep(RETRY.delay(failures))
                    continue
                failures = 0
                if records:
                    await self._unpaused()
                if records and not await self._land(mount):
                    await trio.sleep(RETRY.delay(1))  # announced, yet nothing to land (this device's own): settle
        finally:
            hub.close()

    async def _land(self, mount: PortalOperations) -> bool:
        async with self._engine:
            try:
                landed = await mount.absorb(self._take)
            except PortalError as exc:
                self._say(f"taking the versions of other devices: {exc}", RETRY.delay(1))
                return False
        if landed:
            self.landed += 1
            self._due.set()  # a merge made a version of this device's: publish it
        return landed

    def _take(self) -> tuple[RootRecord, RootPayload, Writer] | None:
        """On a worker thread, after the mount committed: land the hub's versions; the new head, its directories
        at hand (the mount reads directories on its loop), and the device whose version came; None when
        nothing came."""
        before = self.view.device.state.head(self.view.row.id)
        landed = self.fabric.land(self.view)
        if not landed:
            return None
        head = self.view.device.state.head(self.view.row.id)
        if head is None or (before is not None and head.record.record_id == before.record.record_id):
            return None
        root = self.view.root(head)
        fetch_directories(self.view, root.entry)
        their = landed[-1].device
        return head.record, root, Writer(device_label(self.view.device.state.device_names(), their), their)

    # the unmount

    def pending(self) -> bool:
        head = self.view.device.state.head(self.view.row.id)
        return head is not None and head.version > published_version(self.view.device, self.view.row.id)

    async def finish(self) -> None:
        """Publish what the last commit made (once: a failure is left to portald); then let go of the claim."""
        try:
            if self._claimed and self.pending() and not is_paused(self.view.device, self.view.row.id):
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
