"""The sync engine of a device on a fabric: pull (and merge), push, publish, repair; and ``Fabric``, which holds
the device's hub client, edges and swarm for them. Membership (enrollment, keyring, shares) is in
membership.py, who may write a portal in trust.py, sharing in sharing.py, the configuration in config.py.

Write ordering (docs/design.md, "Sync"): every object a version reaches is
held by ``replicas`` edges (or, while edges are down, by one at least, the
rest queued for the next push), and its locations recorded at the hub, before
the version's root record is published; a record is published only on top of the
hub's head (compare-and-swap), so the hub never names a version that cannot be
read.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..device import Device, Unlocked
from ..edge.client import EdgeAddress, parse_address
from ..errors import (
    Conflict,
    IntegrityError,
    PortalBusy,
    PortalError,
    Unreachable,
    UsageError,
)
from ..hub.client import EdgeInfo, HubClient
from ..ingest import moved_totals
from ..merge import Writer, conflict_copy, merge_trees
from ..pipeline import store_sealed
from ..portal import PortalView
from ..protocol.edge import HAVE_TRUST_SECONDS
from ..root import RootPayload, RootRecord
from ..sched.limits import Limits
from ..sealing import ChunkRef
from ..state import VersionRow
from ..store.base import Priority
from .cache import FetchCache, cache_limit
from .config import (
    FabricConfig,
    hub_client,
    is_paused,
    load_config,
    mark_published,
    published_version,
    save_config,
)
from .membership import Membership
from .store import FabricStore
from .swarm import Placement, Swarm, edges_down
from .trust import checked_records
from .usage import EdgeUsage

__all__ = ["device_fabric", "open_view", "device_label", "Fabric"]


def device_label(names: dict[bytes, str], device: bytes) -> str:
    """A device's name, if it is one of this identity's; else the start of its key."""
    return names.get(device) or f"device {device.hex()[:12]}"


log = logging.getLogger("portal.sync")

PLACE_ATTEMPTS = 3  # pushes in a row whose HAVE answers were too old when their locations were recorded


def device_fabric(device: Device, secrets: Unlocked) -> Fabric | None:
    """The fabric of this device when it is on one (a hub, or edges added by hand), closed with ``device``; None
    when it is not."""
    config = load_config(device)
    if config is None or not config.reaches_edges:
        return None
    fabric = Fabric(device, secrets, config)
    device.hold(fabric)
    return fabric


def open_view(device: Device, secrets: Unlocked, name: str, keep: bool = True) -> PortalView:
    """Portal ``name``, reading through the device's fabric when it is on one: what the device lacks is fetched
    from the edges and, with ``keep``, kept (not for `get` and `check`, which read each object once)."""
    fabric = device_fabric(device, secrets)
    return PortalView.open(device, name, secrets, None if fabric is None else fabric.store(keep=keep))


EDGES_SEEN = "edges-seen"  # meta: the hub's edge list as it last gave it (JSON)


def _remember_edges(device: Device, edges: list[EdgeInfo]) -> None:
    rows = [
        {"key": e.key.hex(), "address": e.address, "transports": list(e.transports), "operator": e.operator}
        for e in edges
    ]
    value = json.dumps(rows, sort_keys=True).encode()
    if device.state.get_meta(EDGES_SEEN) != value:
        device.state.set_meta(EDGES_SEEN, value)


def edges_seen(device: Device) -> list[EdgeInfo]:
    """The hub's edge list as it last gave it."""
    raw = device.state.get_meta(EDGES_SEEN)
    rows = json.loads(raw) if raw else []
    return [
        EdgeInfo(bytes.fromhex(r["key"]), r["address"], list(r["transports"]), 0, 0, 0, r.get("operator", ""))
        for r in rows
    ]


def _address(row: dict[str, Any]) -> EdgeAddress:
    return EdgeAddress(row["host"], int(row["port"]), bytes.fromhex(row["key"]), row.get("transport", "quic"))


class Fabric:
    """The hub client, the edge list and the swarm of one device, for one command or one daemon round; its
    methods are the sync engine."""

    def __init__(self, device: Device, secrets: Unlocked, config: FabricConfig) -> None:
        self.device = device
        self.secrets = secrets
        self.config = config
        self.hub = hub_client(config.hub, secrets.device, config) if config.hub else None
        self._swarm: Swarm | None = None
        self._swarm_lock = threading.Lock()
        self._stores: dict[tuple[Priority, bool], FabricStore] = {}
        self.hub_error: str | None = None  # why the hub did not answer, when the edges it listed last were used
        self._cache: FetchCache | None = None
        self.membership = Membership(device, secrets, config, self.require_hub)

    def close(self) -> None:
        if self._swarm is not None:
            self._swarm.close()
        if self._cache is not None:
            self._cache.close()
        if self.hub is not None:
            self.hub.close()

    @property
    def cert(self) -> bytes:
        row = self.device.state.device_cert(self.secrets.device.public)
        if row is None:
            raise IntegrityError("this device has no enrollment certificate")
        return row

    def edges(self) -> list[EdgeAddress]:
        """The edges added by hand, and those the hub lists (or, while the hub does not answer, the ones it
        listed last: a device reads what it lacks from the edges with its hub down)."""
        found = {row["key"]: _address(row) for row in self.config.edges}
        if self.hub is not None:
            try:
                listed = self.hub.edges()
            except Unreachable as exc:
                listed = edges_seen(self.device)
                self.hub_error = str(exc)
                log.info("hub: %s; using the %d edges it listed last", exc, len(listed))
            else:
                _remember_edges(self.device, listed)
            for edge in listed:
                if edge.key.hex() not in found:
                    try:
                        host, port = parse_address(edge.address)
                    except ValueError as exc:  # the hub's word: a malformed one leaves that edge out
                        log.warning("edge %s in the hub's directory: %s", edge.key.hex()[:16], exc)
                        continue
                    # TLS over TCP first where an edge offers both: bulk moves several times faster on it
                    # (bench/transfer); QUIC when TCP is refused or reset, e.g. by a firewall that lets only UDP through
                    both = {"tcp", "quic"} <= set(edge.transports)
                    transport = "tcp" if "tcp" in edge.transports else "quic"
                    found[edge.key.hex()] = EdgeAddress(
                        host, port, edge.key, transport, "quic" if both else None, edge.operator
                    )
        return list(found.values())

    @property
    def opened_swarm(self) -> Swarm | None:
        """The swarm if it was opened (``swarm`` opens it)."""
        return self._swarm

    @property
    def swarm(self) -> Swarm:
        """The device's swarm, on the process's runtime: opened at first use, kept until ``close``."""
        with self._swarm_lock:
            if self._swarm is None:
                locate = self.hub.locations if self.hub is not None else None
                report = self.hub.report_damage if self.hub is not None else None
                usage = EdgeUsage(self.device.home.data / "usage.db")  # the daily caps, shared by the processes
                self._swarm = Swarm(self.edges(), self.secrets.device, self.cert, locate, report, usage=usage).start()
                self._swarm.configure(Limits.from_json(self.config.limits))
            return self._swarm

    def refresh_edges(self) -> None:
        """Ask the hub which edges it lists now (remembered: ``edges_seen``), and give them to the swarm if it is
        open (edges come and go while it runs)."""
        edges = self.edges()
        if self._swarm is not None:
            self._swarm.set_edges(edges)

    def store(self, priority: Priority = Priority.FOREGROUND, keep: bool = True) -> FabricStore:
        """The device's store with the edges behind it: what the device lacks is fetched, at ``priority``, and
        with ``keep`` kept (within the fetch cache's limit). The one place such a store is built; views that
        read through it are given it (``PortalView.open(..., store)``).

        Nothing is asked of the hub until an object is missing: what the device holds reads offline.
        """
        local = self.device.store_local
        with self._swarm_lock:
            store = self._stores.get((priority, keep))
            if store is None:
                if keep and self._cache is None:
                    self._cache = FetchCache(local.root / "fetched.db", cache_limit(self.device), local.delete)
                cache = self._cache if keep else None
                store = self._stores[(priority, keep)] = FabricStore(local, lambda: self.swarm, keep, cache, priority)
            return store

    def view(self, name: str) -> PortalView:
        """Portal ``name`` as the sync engine reads it: what the device lacks is fetched (a sync's priority)."""
        return PortalView.open(self.device, name, self.secrets, self.store(Priority.PULL))

    def _reading(self, view: PortalView) -> PortalView:
        """``view``, reading through this fabric if it does not already (a merged or an older version's nodes
        may be on the edges alone)."""
        if isinstance(view.store, FabricStore):
            return view
        return PortalView(view.device, view.row, view.keys, self.store(Priority.PULL))

    # joining a hub

    def join(self) -> dict[str, Any]:
        """Enroll this device, publish the agreement key, and merge portals both ways with the keyring.

        What the join saves on this device (the portals it adopts, the hub and
        edges in the configuration) is saved in one transaction, or nothing is.
        Then each added portal is pulled on its own: one that fails (closed at
        the hub, its key gone) is named in ``failed`` and the others go on.
        """
        hub = self.require_hub()
        self.membership.enroll(self.cert)
        with self.device.state.transaction():
            added = self.membership.refresh()
            save_config(self.device, self.config)
        failed = {}
        for name in added:
            try:
                self.pull(self.view(name))
            except PortalError as exc:
                log.warning("%s: %s", name, exc)
                failed[name] = str(exc)
        return {"hub": hub.url, "portals_added": added, "edges": len(self.edges()), "failed": failed}

    def refresh(self) -> list[str]:
        """Adopt the keyring's portals and the shares accepted since; return the names added."""
        return self.membership.refresh()

    def require_hub(self) -> HubClient:
        if self.hub is None:
            raise UsageError("no hub: run `portalctl hub add URL` first")
        return self.hub

    # versions

    def pull(self, view: PortalView) -> int:
        """Take the versions the hub has beyond this device's; return how many.

        When another device published after this device's last published
        version while this device made versions of its own, the two are merged
        (``merge``) into one new version on top of the hub's.
        """
        view = self._reading(view)
        records = self._incoming(view)
        if not records:
            return 0
        from ..worktree.journal import writing

        local, published = self._local_and_published(view)
        # a read-write mount builds its versions on the head it mounted: none may come in beneath it; to merge,
        # what a crashed mount journaled is replayed into a version first, and merged too
        lock = (
            writing(view, self.secrets, "sync") if local > published else self.device.portal_writer(view.row.id, "sync")
        )
        try:
            with lock:
                self._take_in(view, records)
        except PortalBusy:
            log.info("%s: mounted read-write; v%d and later wait for the unmount", view.row.name, records[0].version)
            return 0
        return len(records)

    def land(self, view: PortalView) -> list[RootRecord]:
        """``pull``, for the process that holds the portal's writer lock (its read-write mount, which then moves
        its tree onto the new head): the hub's versions, merged with this device's when it has its own; returns
        them."""
        view = self._reading(view)
        records = self._incoming(view)
        if records:
            self._take_in(view, records)
        return records

    def _take_in(self, view: PortalView, records: list[RootRecord]) -> None:
        """Record the hub's ``records``: merged with this device's unpublished versions when it has some, else
        taken as they are. The caller holds the portal's writer lock."""
        local, published = self._local_and_published(view)
        if local > published:
            self.merge(view, records)
        else:
            self.take_records(view, records)

    def _local_and_published(self, view: PortalView) -> tuple[int, int]:
        head = self.device.state.head(view.row.id)
        return 0 if head is None else head.version, published_version(self.device, view.row.id)

    def _incoming(self, view: PortalView) -> list[RootRecord]:
        """The hub's records after this device's newest published version that are not this device's own."""
        local, published = self._local_and_published(view)
        records = [RootRecord.from_bytes(r) for r in self.require_hub().roots(view.row.id, after=published)]
        while records and records[0].version <= local:  # the hub has this device's own (a crash forgot it did)
            if self.device.state.version(view.row.id, records[0].version).record.record_id != records[0].record_id:
                break
            published = records.pop(0).version
            mark_published(self.device, view.row.id, published)
        return records

    def _checked(self, view: PortalView, records: list[RootRecord]) -> list[tuple[RootRecord, RootPayload]]:
        """``records``, each following the one before it (the first, the device's version before it), opened."""
        return checked_records(view, self.require_hub(), self.membership.owner_of(view.row), records)

    def take_records(self, view: PortalView, records: list[RootRecord]) -> None:
        """Record versions that follow this device's head, each checked and signed by an enrolled device."""
        head = self.device.state.head(view.row.id)
        local = 0 if head is None else head.version
        for record, payload in self._checked(view, [r for r in records if r.version > local]):
            with self.device.state.transaction():
                self._record_published(record, payload)

    def _record_published(self, record: RootRecord, payload: RootPayload) -> None:
        self.device.state.add_version(record, payload.size, payload.files)
        mark_published(self.device, record.portal, record.version)

    def merge(self, view: PortalView, records: list[RootRecord]) -> list[str]:
        """Replace this device's unpublished versions by the hub's ``records`` and one version merging them.

        The merged tree (section 14, "Merging") is sealed and stored first;
        then, in one transaction, the unpublished versions are dropped, the
        hub's recorded, and the merged version added on top: a crash leaves
        either the device's versions or the merge, never neither. Returns the
        paths where this device's file was kept beside theirs.
        """
        portal = view.row.id
        view = self._reading(view)  # theirs' directories may be on the edges alone
        published = published_version(self.device, portal)
        base_row = self.device.state.version(portal, published) if published else None
        ours_row = self.device.state.head(portal)
        assert ours_row is not None
        theirs = self._checked(view, records)
        base = None if base_row is None else view.root(base_row).entry
        names = self.device.state.device_names()
        me = Writer(names.get(self.secrets.device.public, "this device"), self.secrets.device.public)
        them = Writer(device_label(names, theirs[-1][0].device), theirs[-1][0].device)
        now_ns = time.time_ns()
        date = time.strftime("%Y-%m-%d", time.gmtime(now_ns / 1e9))

        def store_node(plaintext: bytes) -> ChunkRef:
            return store_sealed(view.store, view.keys.tree_secret, plaintext)[0]

        ours = view.root(ours_row).entry
        result = merge_trees(
            base,
            ours,
            theirs[-1][1].entry,
            view.load_node,
            store_node,
            lambda entry, taken: conflict_copy(entry, taken, me, them, date),
        )
        size, files = moved_totals(result.root, ours, (ours_row.size, ours_row.files), view.load_node)
        payload = RootPayload(entry=result.root, size=size, files=files)
        record = view.sign(self.secrets, theirs[-1][0], payload, now_ns)

        def replace_ours() -> None:  # in the same transaction as the merge: a crash leaves one or the other
            self.device.state.drop_versions_after(portal, published)
            for their_record, their_payload in theirs:
                self._record_published(their_record, their_payload)

        view.record_version(record, payload, replace_ours)  # the merged tree's new nodes are synced first
        log.info("%s: v%d..v%d merged with v%d..v%d from the hub into v%d%s", view.row.name, published + 1,
                 ours_row.version, theirs[0][0].version, theirs[-1][0].version, record.version,
                 f"; kept beside theirs: {', '.join(result.conflicts)}" if result.conflicts else "")  # fmt: skip
        return result.conflicts

    def push(self, view: PortalView) -> dict[str, int]:
        """Put what the unpublished versions added on ``replicas`` edges, then publish them in order.

        Each version is compared with the one before it (section 14, "Publishing costs what changed"): only
        what it does not share with that version is asked of the edges; the rest is there already.
        """
        hub = self.require_hub()
        portal = view.row.id
        published = published_version(self.device, portal)
        versions = self.device.state.versions(portal, after=max(published - 1, 0))  # the published one: a base
        pending = [v for v in versions if v.version > published]
        queued = self.device.state.underplaced(portal)  # short of R copies at an earlier push
        if not pending and not queued:
            return {"published": 0, "objects": 0}
        cids = self._objects(view, pending, {v.version: v for v in versions}) if pending else []
        placement = self._place(view, sorted(set(cids) | set(queued)), self.device.store_local.get)
        self.device.state.set_underplaced(portal, placement.short)
        if placement.short:
            down = edges_down(placement.down)
            log.warning("%s: %d objects are on fewer than %d edges, which is enough to publish; the missing copies "
                        "are made at the next sync that reaches more edges. Down: %s", view.row.name,
                        len(placement.short), self.config.replicas, down or "none")  # fmt: skip
        elif queued:
            log.info("%s: %d objects that were short of copies have %d now", view.row.name, len(queued),
                     self.config.replicas)  # fmt: skip
        for version in pending:
            try:
                hub.publish(portal, version.record.to_bytes())
            except Conflict as exc:
                raise Conflict(
                    f"portal {view.row.name!r}: another device published first; "
                    f"the next sync merges its versions with this device's: {exc}"
                ) from None
            mark_published(self.device, portal, version.version)
        return {"published": len(pending), "objects": len(cids), "underplaced": len(placement.short)}

    def repair(self, view: PortalView) -> dict[str, int]:
        """Bring every object of the published versions back to ``replicas`` intact copies on edges that answer.

        Each edge reads back and hashes what it counts (VERIFY) and removes a
        damaged copy; what a lost edge held, or a damaged copy, is copied from
        the local store, or fetched from a replica that is intact (a damaged
        local copy is replaced by it); the hub learns the new locations.
        """
        published = published_version(self.device, view.row.id)
        versions = [v for v in self.device.state.versions(view.row.id) if v.version <= published]
        cids = self._objects(view, versions)
        # the local store, or a replica: what it lacks is fetched (not kept), a damaged copy of its own replaced
        store = self.store(Priority.REPAIR, keep=False)
        healed = store.healed
        placement = self._place(view, cids, store.get, verify=True)
        if placement.short:  # a repair is for R copies: short of them, it failed (the next one tries again)
            down = edges_down(placement.down) or "too few edges"
            raise Unreachable(f"{len(placement.short)} objects could not reach {self.config.replicas} edges ({down})")
        if placement.copies:
            log.info("%s: %d copies made to bring %d objects back to %d edges", view.row.name, placement.copies,
                     len(cids), self.config.replicas)  # fmt: skip
        healed = store.healed - healed
        return {"checked": len(cids), "copied": placement.copies, "damaged": placement.damaged, "healed": healed}

    def _objects(
        self, view: PortalView, versions: list[VersionRow], by_number: dict[int, VersionRow] | None = None
    ) -> list[bytes]:
        """Every object ``versions`` reach; with ``by_number`` (the portal's versions), only what each of them
        does not share with the version before it (a publish: section 14)."""
        objects: set[bytes] = set()
        view = self._reading(view)  # a merged or an older version's nodes may be on the edges alone
        for version in versions:
            before = None if by_number is None else by_number.get(version.version - 1)
            base = None if before is None else view.root(before).entry
            view.changed_objects(view.root(version).entry, base, objects)
        return sorted(objects)

    def _place(
        self, view: PortalView, cids: list[bytes], read: Callable[[bytes], bytes], verify: bool = False
    ) -> Placement:
        """Put ``cids`` on ``replicas`` edges and record where they are at the hub.

        The locations of what a HAVE (or VERIFY) found are recorded within
        HAVE_TRUST_SECONDS of it, or the edges are asked again: an edge deletes
        garbage only after holding it condemned longer (section 13, "Garbage"),
        so a copy this device counted on cannot be deleted before the hub knows.
        """
        hub = self.require_hub()
        copies = damaged = 0
        for _attempt in range(PLACE_ATTEMPTS):
            asked = time.monotonic()
            placement = self.swarm.push(read, cids, self.config.replicas, verify)
            if placement.held:  # one request per edge, all at once
                with ThreadPoolExecutor(len(placement.held), thread_name_prefix="locations") as pool:
                    for done in [pool.submit(hub.add_locations, view.row.id, e, h) for e, h in placement.held.items()]:
                        done.result()
            copies, damaged = copies + placement.copies, damaged + placement.damaged
            if time.monotonic() - asked < HAVE_TRUST_SECONDS:
                return Placement(placement.held, copies, damaged, placement.short, placement.down)
            log.info("%s: placing took over %.0f s; asking the edges again", view.row.name, HAVE_TRUST_SECONDS)
        raise Unreachable(f"portal {view.row.name!r}: the edges are too slow to place its objects; try again")

    def create_if_owner(self, view: PortalView) -> None:
        """Create the portal at the hub, if this identity owns it and it was not."""
        if self.membership.owner_of(view.row) == self.secrets.identity.public:
            self.require_hub().create_portal(view.row.id)

    def sync(self, view: PortalView) -> dict[str, Any]:
        """Pull, then push and publish; a portal whose read-write mount syncs it (section 16) is left to it, and
        a paused one (``portalctl pause``) is left alone."""
        if is_paused(self.device, view.row.id):
            head = self.device.state.head(view.row.id)
            version = 0 if head is None else head.version
            return {"portal": view.row.name, "pulled": 0, "published": 0, "objects": 0, "paused": True,
                    "version": version}  # fmt: skip
        with self.device.portal_syncer(view.row.id, wait=False) as ours:
            if ours:
                self.create_if_owner(view)
                pulled, pushed = self.pull(view), self.push(view)
            else:
                pulled, pushed = 0, {"published": 0, "objects": 0, "elsewhere": True}
        head = self.device.state.head(view.row.id)
        return {"portal": view.row.name, "pulled": pulled, **pushed, "version": 0 if head is None else head.version}
