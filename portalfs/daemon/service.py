"""portald's one nursery: the control socket, the local watcher, the hub's event streams and the sync loop.

What to sync and when is decided by ``SyncPlanner`` (sans-I/O); this module
only feeds it events and carries out its decisions. One ``Fabric`` (hub
client, edges, swarm on the daemon's loop) serves every round for the
daemon's life, and is opened again only when the configuration changes. Every
use of the device (its SQLite state, its store, the fabric's blocking hub
client and swarm) runs on a worker thread, one at a time, so the trio thread
never blocks and two syncs never interleave. A portal that a read-write mount
syncs itself (it holds the portal's sync claim) is left to it. See
docs/design.md, "The daemon".
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import trio

from ..backoff import Backoff
from ..device import Device, Unlocked
from ..errors import CorruptObject, MissingObject, NotFound, PortalError, StorageError, UsageError, os_error_text
from ..fabric import sharing
from ..fabric.config import FabricConfig, followed_portals, hub_client, is_paused, load_config, published_version
from ..fabric.store import FabricStore
from ..fabric.sync import Fabric, edges_seen
from ..net import one_error
from ..portal import PortalView
from ..store.base import Priority
from ..transfer import fetched_since, get_into, get_target, put_sources
from .control import daemon_socket, serve_control
from .embedded import EmbeddedFabric, run_embedded
from .manners import MANNERS_META, MANNERS_SECONDS, SuspendWatch, addresses, held_back
from .planner import EdgeWatch, SyncPlanner

__all__ = ["SyncDaemon", "DEFAULT_INTERVAL"]

log = logging.getLogger("portal.daemon")

DEFAULT_INTERVAL = 60.0  # seconds between syncs of a portal that nothing announced a change of
SCRUB_RATE = 16 << 20  # bytes a second the device's scrub reads (as an edge's)
SCRUB_INTERVAL = 86400.0  # seconds between scrub passes
REFRESH_SECONDS = 30.0  # between looks at the keyring, the shares and the edge list (at most --interval)
EDGE_GRACE = 600.0  # an edge the hub stopped listing this long is down: what it held is copied again
LOCAL_LOOK_SECONDS = 30.0  # between looks at the local heads unasked (commands and mounts say when they change them)
EVENTS_BACKOFF = Backoff(2.0, 60.0)  # an event stream the hub refused or did not answer

T = TypeVar("T")
COMMANDS = 8  # puts and gets portald runs for portalctl at once, each on a worker thread of its own


@contextmanager
def _command_errors() -> Iterator[None]:
    """A put's or get's OSError as portalctl says one (exit code 10), not a fault of portald's."""
    try:
        yield
    except OSError as exc:
        raise StorageError(os_error_text(exc)) from exc


def _stop_if(gone: threading.Event) -> Callable[[int], None]:
    """A progress callback that stops the command once the portalctl that asked for it has gone (Ctrl-C)."""

    def progress(n: int) -> None:
        if gone.is_set():
            raise PortalError("portalctl went away; stopped")

    return progress


def _field(request: dict[str, Any], name: str, kind: type[T]) -> T:
    value = request.get(name)
    if not isinstance(value, kind):
        raise UsageError(f"{request.get('op')}: {name} is missing or not a {kind.__name__}")
    return value


class SyncDaemon:
    def __init__(
        self,
        device: Device,
        secrets: Unlocked,
        interval: float = DEFAULT_INTERVAL,
        embedded: EmbeddedFabric | None = None,
        scrub_rate: int = SCRUB_RATE,
        scrub_interval: float = SCRUB_INTERVAL,
        edge_grace: float = EDGE_GRACE,
    ) -> None:
        self.device = device
        self.edges = EdgeWatch(edge_grace)  # edges the hub stopped listing: past the grace, down
        self.scrub_rate = scrub_rate  # bytes a second the scrub reads; 0: no scrub
        self.scrub_interval = scrub_interval
        self.scrubbed: dict[str, Any] | None = None  # the last scrub pass's figures
        self.secrets = secrets
        self.embedded = embedded
        self.embedded_hub: str | None = None  # the embedded hub's URL while it runs
        self._embedded_scope = trio.CancelScope()
        self.planner = SyncPlanner(interval, min(REFRESH_SECONDS, interval))
        self.hub: str | None = None
        self.socket = daemon_socket(device.home.data)
        self._limiter = trio.CapacityLimiter(1)  # device work: one piece at a time, on a worker thread
        self._waiting = trio.CapacityLimiter(math.inf)  # long-polls: a thread each, however many portals
        self._commands = trio.CapacityLimiter(COMMANDS)  # portalctl's puts and gets: beside the device's work
        self._wakeup = trio.Event()
        self._look_now = trio.Event()  # a command or a mount changed something on the device
        self._fabric: Fabric | None = None  # for the daemon's life; opened again when the configuration changes
        self._progress = trio.Event()  # set, then replaced, whenever a sync finishes
        self._names: dict[bytes, str] = {}
        self._results: dict[bytes, dict[str, Any]] = {}
        self._streams: dict[bytes, trio.CancelScope] = {}
        self._started_ns = time.time_ns()
        self.held_back: str | None = None  # why background sync waits (laptop manners), or None
        self._asked: set[bytes] = set()  # portals a person asked to sync now (portalctl sync): they go regardless
        self._suspend = SuspendWatch()
        self._addresses: frozenset[str] | None = None  # the interfaces' addresses at the last look (None: unknown)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self.embedded is not None:
                self.embedded_hub = await nursery.start(self._run_embedded, self.embedded)
            await self._scan(nursery)
            await nursery.start(serve_control, self.socket, self.handle)
            nursery.start_soon(self._watch_local, nursery)
            await self._check_manners(nursery)  # before the first sync: one on battery waits from the start
            nursery.start_soon(self._watch_manners, nursery)
            nursery.start_soon(self._sync_loop)
            if self.scrub_rate:
                nursery.start_soon(self._scrub_loop)
            log.info("portald: %d portals followed, hub %s", len(self._names), self.hub or "(none yet)")
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await self._close_fabric()

    async def _run_embedded(self, where: EmbeddedFabric, *, task_status: trio.TaskStatus[str]) -> None:
        with self._embedded_scope:
            await run_embedded(self.device, self.secrets, where, task_status=task_status)
        self.embedded_hub = None

    async def _on_device(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _wake(self) -> None:
        self._wakeup.set()

    # watching

    def _look(self) -> tuple[str | None, dict[bytes, str], list[bytes]]:
        """The hub, the followed portals, and those with local versions the hub has not got (worker thread)."""
        config = load_config(self.device)
        if config is None or not config.hub:
            return None, {}, []
        rows = followed_portals(self.device)
        pending = []
        for row in rows:
            head = self.device.state.head(row.id)
            if head is not None and head.version > published_version(self.device, row.id):
                if is_paused(self.device, row.id):
                    continue  # `portalctl resume` says when (it tells the daemon to look)
                with self.device.portal_syncer(row.id, wait=False) as ours:
                    if ours:  # else its read-write mount publishes it
                        pending.append(row.id)
        return config.hub, {row.id: row.name for row in rows}, pending

    async def _scan(self, nursery: trio.Nursery) -> None:
        hub, names, pending = await self._on_device(self._look)
        moved = hub != self.hub
        if moved:  # joined a hub, or moved to another: every event stream starts again
            for scope in self._streams.values():
                scope.cancel()
            self._streams.clear()
            self.hub = hub
            if self.embedded_hub is not None and hub != self.embedded_hub:
                log.info("this device moved to hub %s: the embedded hub and edge stop", hub)
                self._embedded_scope.cancel()
        self._names = names
        first = not self.planner.portals
        new = self.planner.track(names)
        if new and not first:
            self.planner.refresh_soon()  # a portal made here goes into the keyring, for the identity's other devices
        for portal in pending:
            self.planner.changed(portal)
        for portal in set(self._streams) - set(names):
            self._streams.pop(portal).cancel()
        for portal in names:
            if portal not in self._streams and hub is not None:
                self._streams[portal] = await nursery.start(self._follow_events, hub, portal)
        if moved or new or pending:
            self._wake()

    async def _watch_local(self, nursery: trio.Nursery) -> None:
        """Look at the device when a command or a mount says it changed it, and every LOCAL_LOOK_SECONDS."""
        while True:
            with trio.move_on_after(LOCAL_LOOK_SECONDS):
                await self._look_now.wait()
            self._look_now = trio.Event()
            await self._scan(nursery)

    async def _watch_manners(self, nursery: trio.Nursery) -> None:
        """Every MANNERS_SECONDS: hold background sync back on battery below the threshold or on a metered
        network (and let it go when that ends), and catch up at once after a suspend."""
        while True:
            await trio.sleep(MANNERS_SECONDS)
            await self._check_manners(nursery)

    async def _check_manners(self, nursery: trio.Nursery) -> None:
        raw = await self._on_device(lambda: self.device.state.get_meta(MANNERS_META))
        reason = await trio.to_thread.run_sync(held_back, raw)
        if reason != self.held_back:
            log.info("background sync %s", f"waits: {reason}" if reason else "goes on")
            self.held_back = reason
            if reason is None:
                self._catch_up()
        slept = self._suspend.slept()
        found = await trio.to_thread.run_sync(addresses)
        moved = None not in (found, self._addresses) and found != self._addresses
        self._addresses = found if found is not None else self._addresses
        if slept or moved:
            log.info("%s: catching up", f"the machine slept {slept:.0f} s" if slept else "the network changed")
            for scope in self._streams.values():  # their connections may have died with the old network
                scope.cancel()
            self._streams.clear()
            await self._scan(nursery)
            self._catch_up()

    def _catch_up(self) -> None:
        """Sync every followed portal soon, and look at the keyring."""
        for portal in self._names:
            self.planner.changed(portal)
        self.planner.refresh_soon()
        self._wake()

    async def _follow_events(
        self, hub_url: str, portal: bytes, *, task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Long-poll the hub for versions of ``portal`` beyond this device's head; each one triggers a sync."""
        with trio.CancelScope() as scope:
            task_status.started(scope)
            hub = hub_client(hub_url, self.secrets.device, await self._on_device(load_config, self.device))
            failures = 0
            announced = 0  # versions the hub announced that this device could not take (its mount holds them)
            try:
                while True:
                    head = await self._on_device(self.device.state.head, portal)
                    after = max(announced, 0 if head is None else head.version)
                    try:
                        records = await trio.to_thread.run_sync(
                            hub.wait_roots, portal, after, abandon_on_cancel=True, limiter=self._waiting
                        )
                    except PortalError as exc:
                        failures += 1
                        retry = EVENTS_BACKOFF.delay(failures)
                        log.info("event stream of %s: %s; again in %.0f s", self._names.get(portal, "?"), exc, retry)
                        await trio.sleep(retry)
                        continue
                    failures = 0
                    if records:
                        if portal not in self.planner.portals:
                            return
                        announced = after + len(records)
                        log.info("%s: v%d announced by the hub", self._names.get(portal, "?"), announced)
                        target = self.planner.completion_after_now(portal)
                        self.planner.changed(portal)
                        self._wake()
                        await self._wait_completed({portal: target})
            finally:
                hub.close()

    # syncing

    async def _sync_loop(self) -> None:
        while True:
            wake_at = self.planner.wake_at(refreshing=self.hub is not None)
            if self.held_back is not None and not self._asked:  # what is due stays due: look again later
                wake_at = trio.current_time() + MANNERS_SECONDS
            with trio.move_on_at(float("inf") if wake_at is None else wake_at):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            now = trio.current_time()
            due = self.planner.due(now)
            if self.held_back is not None:  # only what a person asked for (portalctl sync); the rest stays due
                due = [p for p in due if p in self._asked]
            self._asked -= set(due)
            refresh = self.hub is not None and self.planner.refresh_due(now)
            if due or refresh:
                await self._sync_round(due, refresh)

    async def _current_fabric(self) -> Fabric:
        """The daemon's fabric, opened again when the configuration changed (a hub added, an edge, R)."""
        config = await self._on_device(load_config, self.device)
        if self._fabric is not None and self._fabric.config == (config or FabricConfig()):
            return self._fabric
        await self._close_fabric()
        self._fabric = await self._on_device(Fabric, self.device, self.secrets, config or FabricConfig())
        return self._fabric

    # the device's scrub (section 16, "Scrub")

    async def _scrub_loop(self) -> None:
        while True:
            await trio.sleep(self.scrub_interval)
            await self._scrub_pass()

    async def _scrub_pass(self) -> None:
        """Read every object this device stores, at ``scrub_rate`` bytes a second, and check it against its id;
        a damaged one is replaced from the edges (``FabricStore.get``), or, where no intact copy is left,
        said to be lost. What it found shows in ``status`` (``scrub``) and the log."""
        fabric = await self._current_fabric()
        store = fabric.store(Priority.REPAIR) if fabric.config.hub else None
        local = self.device.store_local
        ids = await trio.to_thread.run_sync(lambda: list(local.ids()))
        healed_before = 0 if store is None else store.healed
        checked = size = lost = 0
        for cid in ids:
            started = trio.current_time()
            try:
                data = await trio.to_thread.run_sync((store or local).get, cid)
            except MissingObject:  # deleted since the pass listed it
                continue
            except CorruptObject as exc:
                lost += 1
                log.error("scrub: %s, and no intact copy could be fetched", exc)
                continue
            except PortalError as exc:
                log.warning("scrub: object %s: %s", cid.hex()[:16], exc)
                continue
            checked += 1
            size += len(data)
            await trio.sleep(max(0.0, len(data) / self.scrub_rate - (trio.current_time() - started)))
        healed = 0 if store is None else store.healed - healed_before
        self.scrubbed = {"finished_ns": time.time_ns(), "objects": checked, "bytes": size, "healed": healed,
                         "lost": lost}  # fmt: skip
        log.info("scrub: %d objects (%d bytes) checked; %d damaged replaced from the edges; %d lost", checked, size,
                 healed, lost)  # fmt: skip

    async def _close_fabric(self) -> None:
        fabric, self._fabric = self._fabric, None
        if fabric is not None:
            await self._on_device(fabric.close)

    async def _sync_round(self, due: list[bytes], refresh: bool) -> None:
        try:
            await self._sync_with(await self._current_fabric(), due, refresh)
        finally:
            self._progress.set()
            self._progress = trio.Event()

    async def _sync_with(self, fabric: Fabric, due: list[bytes], refresh: bool) -> None:
        if refresh:
            try:
                added = await self._on_device(self._refresh, fabric)
                if added:
                    log.info("portals added from the keyring and shares: %s", ", ".join(added))
                    self._wake()  # the local watcher follows them from its next look
            except PortalError as exc:
                log.warning("keyring and shares: %s", exc)
            self.planner.refreshed(trio.current_time())
            self._watch_edges()
        for portal in due:
            if portal not in self.planner.portals:
                continue
            self.planner.started(portal)
            name = self._names.get(portal, portal.hex()[:16])
            error = None
            try:
                result = await self._on_device(self._sync_one, fabric, portal)
                if result["pulled"] or result["published"]:
                    log.info("%s: v%d (pulled %d, published %d)", name, result["version"], result["pulled"],
                             result["published"])  # fmt: skip
            except PortalError as exc:
                error = str(exc)
                result = {"portal": name, "error": error, "exit_code": exc.exit_code}
                log.warning("%s: %s", name, exc)
            if error is None and self.planner.repair_due(portal, trio.current_time()):
                try:  # the sync stands whatever the repair does; a failed repair is tried after the next sync
                    result["repair"] = await self._on_device(self._repair_one, fabric, portal)
                    self.planner.repaired(portal, trio.current_time())
                except PortalError as exc:
                    result["repair"] = {"error": str(exc), "exit_code": exc.exit_code}
                    log.warning("%s: repair: %s", name, exc)
            self._results[portal] = result
            self.planner.finished(portal, trio.current_time(), error)

    def _watch_edges(self) -> None:
        """An edge the hub stopped listing (it stopped heartbeating) is down once the grace has passed: every
        portal is repaired at once, so that what it held is copied to the edges that answer (section 16)."""
        listed = [(edge.key.hex(), edge.address) for edge in edges_seen(self.device)]
        down, back = self.edges.listed(listed, trio.current_time(), time.time_ns())
        for key in down:
            log.warning("edge %s (%s) is down: silent at the hub for %.0f s; what it held is copied to the others",
                        self.edges.down[key]["edge"], key[:16], self.edges.grace)  # fmt: skip
        for key in back:
            log.info("edge %s is listed again", key[:16])
        if down:
            for portal in self.planner.portals:
                self.planner.repair_soon(portal)
            self._wake()

    async def _refresh_now(self) -> None:
        """``_refresh``, as a command's sync starts with it."""
        try:
            await self._on_device(self._refresh, await self._current_fabric())
        except PortalError as exc:  # the keyring or the hub's portal list: the sync goes on without them
            log.warning("keyring and shares: %s", exc)
        self.planner.refreshed(trio.current_time())

    @staticmethod
    def _refresh(fabric: Fabric) -> list[str]:
        """Finish an unshare a crash left half-done, adopt the keyring's portals and the shares, give the
        swarm the edges the hub lists now, and connect it to them: what a command hands portald starts with
        no handshake (section 16)."""
        sharing.resume_rotations(fabric)
        added = fabric.refresh()
        fabric.refresh_edges()
        if fabric.config.reaches_edges:
            fabric.swarm.connect()
        return added

    def _view(self, fabric: Fabric, portal: bytes) -> PortalView:
        row = next((r for r in self.device.state.portals() if r.id == portal), None)
        if row is None:
            raise NotFound("the portal is gone from this device")
        return fabric.view(row.name)

    def _sync_one(self, fabric: Fabric, portal: bytes) -> dict[str, Any]:
        return fabric.sync(self._view(fabric, portal))

    def _repair_one(self, fabric: Fabric, portal: bytes) -> dict[str, int]:
        return fabric.repair(self._view(fabric, portal))

    async def _wait_completed(self, targets: dict[bytes, int]) -> None:
        """Until each portal has finished ``targets[portal]`` syncs (or is no longer followed)."""
        while True:
            left = [
                p for p, n in targets.items() if p in self.planner.portals and self.planner.portals[p].completed < n
            ]
            if not left:
                return
            await self._progress.wait()

    # control

    async def handle(self, request: dict[str, Any], gone: threading.Event | None = None) -> Any:
        """Answer a control request; ``gone`` is set if its caller goes away (a put or get then stops)."""
        gone = gone or threading.Event()
        op = request.get("op")
        if op == "status":
            return self.status()
        if op == "changed":  # a command or a mount changed the device: look now, answer at once
            self._look_now.set()
            return None
        if op == "sync":
            names = request.get("names") or []
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise UsageError("sync: names is a list of portal names")
            return await self.sync_now(names, repair=bool(request.get("repair")))
        if op in ("put", "get"):
            try:
                return await (self.put if op == "put" else self.get)(request, gone)
            except PortalError as exc:
                if gone.is_set():
                    log.info("portalctl %s %s: stopped, as portalctl went away (%s)", op, request.get("name"), exc)
                raise
        raise UsageError(f"unknown request {op!r} (status, sync, changed, put, get)")

    async def _store(self, keep: bool) -> FabricStore | None:
        """The store a command reads through: the daemon's fabric's, when the device is on one."""
        config = await self._on_device(load_config, self.device)
        if config is None or not config.reaches_edges:
            return None
        return (await self._current_fabric()).store(keep=keep)

    async def put(self, request: dict[str, Any], gone: threading.Event) -> dict[str, Any]:
        """`portalctl put` of files and folders, then (with ``sync``) `portalctl sync` of the portal."""
        name = _field(request, "name", str)
        sources = _field(request, "sources", list)
        if not sources or not all(isinstance(s, str) and os.path.isabs(s) for s in sources):
            raise UsageError("put: sources is a list of absolute paths")
        if request.get("sync") and self.hub is None:  # refused before the put, not after it
            raise UsageError("this device has no hub: run `portalctl hub add URL` first")
        store = await self._store(keep=True)  # an unchanged file's chunks may be on the edges alone
        warnings: list[str] = []

        def work() -> dict[str, Any]:
            with _command_errors():
                view = PortalView.open(self.device, name, self.secrets, store)
                return put_sources(view, self.secrets, sources, progress=_stop_if(gone), warn=warnings.append)

        with one_error():  # what the put raised, itself
            async with trio.open_nursery() as nursery:
                if request.get("sync"):  # the refresh its sync starts with runs beside the put (hub requests)
                    nursery.start_soon(self._refresh_now)
                result = await trio.to_thread.run_sync(work, limiter=self._commands)
        log.info("portalctl put %s: v%d, %d files", name, result["version"], result["files"])
        result["warnings"] = warnings
        if request.get("sync"):  # this sync pushes and publishes the new version, and says so
            synced = await self.sync_now([name], refreshed=True)
            result["sync"] = synced[0] if synced else None
        else:
            self._look_now.set()  # the next round publishes it
        return result

    async def get(self, request: dict[str, Any], gone: threading.Event) -> dict[str, Any]:
        """`portalctl get`: restore a portal, or one path of it, into ``dest``."""
        name = _field(request, "name", str)
        dest = _field(request, "dest", str)
        version, path = request.get("version"), request.get("path")
        if not os.path.isabs(dest):
            raise UsageError("get: dest is an absolute path")
        if not (version is None or type(version) is int) or not (path is None or isinstance(path, str)):
            raise UsageError("get: version is a number and path a string")
        store = await self._store(keep=False)  # what is written out is not kept twice

        def work() -> dict[str, Any]:
            with _command_errors():
                view = PortalView.open(self.device, name, self.secrets, store)
                target = get_target(view, Path(dest), version, path)
                before = None if store is None else store.fetched()
                overwrite = bool(request.get("overwrite"))
                result = get_into(view, target, Path(dest), overwrite=overwrite, progress=_stop_if(gone))
                after = None if store is None else store.fetched()
            if after is not None:  # what came from the edges while it ran, and from which
                result["fetched"] = fetched_since(before, after)
            return result

        result = await trio.to_thread.run_sync(work, limiter=self._commands)
        log.info("portalctl get %s: v%d, %d files into %s", name, result["version"], result["files"], dest)
        return result

    async def sync_now(self, names: list[str], repair: bool = False, refreshed: bool = False) -> list[dict[str, Any]]:
        """Sync ``names`` (every followed portal when empty) now, and ``repair`` them; return once each finished.
        ``refreshed``: the caller has just refreshed the keyring, the shares and the edges (``_refresh_now``)."""
        if self.hub is None:
            raise UsageError("this device has no hub: run `portalctl hub add URL` first")
        if not refreshed:
            await self._refresh_now()
        _, self._names, _ = await self._on_device(self._look)
        self.planner.track(self._names)
        for name in names:
            await self._on_device(self.device.state.portal, name)  # NotFound names the unknown one
        by_name = {name: portal for portal, name in self._names.items()}
        portals = (
            [by_name[n] for n in names if n in by_name] if names else sorted(self._names, key=self._names.__getitem__)
        )
        targets = {}
        for portal in portals:
            self._asked.add(portal)  # asked for: it goes even while background sync waits
            targets[portal] = self.planner.completion_after_now(portal)
            self.planner.changed(portal, urgent=True)
            if repair:
                self.planner.repair_soon(portal)
        self._wake()
        await self._wait_completed(targets)
        return [self._results[p] for p in portals if p in self._results]

    def status(self) -> dict[str, Any]:
        now = trio.current_time()
        portals = []
        for portal, schedule in sorted(self.planner.portals.items(), key=lambda kv: self._names.get(kv[0], "")):
            portals.append(
                {
                    "portal": self._names.get(portal, portal.hex()),
                    "syncs": schedule.completed,
                    "running": schedule.running,
                    "pending": schedule.dirty,
                    "failures": schedule.failures,
                    "last_error": schedule.last_error,
                    "seconds_since_sync": None if schedule.last_finished is None else now - schedule.last_finished,
                }
            )
        swarm = self._fabric.opened_swarm if self._fabric is not None else None
        return {
            "pid": os.getpid(),
            "since_ns": self._started_ns,
            "hub": self.hub,
            "embedded": self.embedded_hub is not None,
            "portals": portals,
            "fetching": swarm.fetching() if swarm is not None else None,  # its fetches: left, rate, ETA, per edge
            "held_back": self.held_back,
            "scrub": self.scrubbed,  # the last pass: objects and bytes checked, damaged ones healed, lost
            "edges_down": list(self.edges.down.values()),  # edges silent at the hub past the grace
        }
