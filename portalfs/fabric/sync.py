"""A device on a fabric: joining a hub, pulling and pushing versions, and the store that fetches.

Write ordering (docs/design.md, "Sync"): every object a version reaches is
held by ``replicas`` edges, and its locations recorded at the hub, before the
version's root record is published; a record is published only on top of the
hub's head (compare-and-swap), so the hub never names a version that cannot be
read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..device import Device, Unlocked
from ..edge.client import EdgeAddress, parse_address
from ..edge.upkeep import HAVE_TRUST_SECONDS
from ..errors import (
    Conflict,
    CorruptObject,
    IntegrityError,
    MissingObject,
    PortalBusy,
    PortalError,
    Unreachable,
    UsageError,
)
from ..hub.client import HubClient, PortalInfo
from ..hub.state import CLOSED_STATES
from ..ingest import tree_totals
from ..keys import DOMAIN_AGREEMENT, DeviceCertificate, verify_signature
from ..merge import conflict_name, merge_trees
from ..pipeline import store_sealed
from ..portal import PortalView
from ..root import PortalKeys, RootPayload, RootRecord, verify_chain
from ..sealing import ChunkRef
from ..state import PortalRow, VersionRow
from .cache import FetchCache, cache_limit
from .config import FabricConfig, load_config, mark_published, published_version, save_config
from .grants import Grant, open_keyring, seal_keyring, unwrap_for_identity, wrap_for_identity
from .store import FabricStore, heal_local
from .swarm import Placement, Swarm

__all__ = ["attach_fabric", "Fabric"]

log = logging.getLogger("portal.sync")

KEYRING_ATTEMPTS = 5  # compare-and-swap rounds before giving up on a busy keyring
PLACE_ATTEMPTS = 3  # pushes in a row whose HAVE answers were too old when their locations were recorded


def attach_fabric(device: Device, secrets: Unlocked, keep: bool = True) -> bool:
    """When this device is on a fabric, let reads fetch missing objects from its edges; say whether it is.

    ``keep``: keep what is fetched in the local store (not for a restore, which reads each object once).
    """
    config = load_config(device)
    if config is not None and (config.hub or config.edges):
        Fabric(device, secrets, config).attach(keep)
        return True
    return False


def _address(row: dict[str, Any]) -> EdgeAddress:
    return EdgeAddress(row["host"], int(row["port"]), bytes.fromhex(row["key"]), row.get("transport", "quic"))


class Fabric:
    """The hub client, the edge list and the swarm of one device, for one command."""

    def __init__(self, device: Device, secrets: Unlocked, config: FabricConfig) -> None:
        self.device = device
        self.secrets = secrets
        self.config = config
        self.hub = HubClient(config.hub, secrets.device) if config.hub else None
        self._swarm: Swarm | None = None

    def close(self) -> None:
        if self._swarm is not None:
            self._swarm.close()
        if self.hub is not None:
            self.hub.close()

    @property
    def cert(self) -> bytes:
        row = self.device.state.device_cert(self.secrets.device.public)
        if row is None:
            raise IntegrityError("this device has no enrollment certificate")
        return row

    def edges(self) -> list[EdgeAddress]:
        found = {row["key"]: _address(row) for row in self.config.edges}
        if self.hub is not None:
            for edge in self.hub.edges():
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
                    found[edge.key.hex()] = EdgeAddress(host, port, edge.key, transport, "quic" if both else None)
        return list(found.values())

    @property
    def swarm(self) -> Swarm:
        if self._swarm is None:
            self._swarm = self._open_swarm()
        return self._swarm

    def _open_swarm(self) -> Swarm:
        locate = self.hub.locations if self.hub is not None else None
        report = self.hub.report_damage if self.hub is not None else None
        return Swarm(self.edges(), self.secrets.device, self.cert, locate, report).start()

    def attach(self, keep: bool = True) -> None:
        """Make the device's store fetch what it lacks from the edges (and, with ``keep``, keep it).

        Nothing is asked of the hub until an object is missing: what the device holds reads offline.
        """
        local = self.device.store_local
        cache = FetchCache(local.root / "fetched.db", cache_limit(self.device), local.delete) if keep else None
        self.device.attach_store(FabricStore(local, self._open_swarm, keep, cache))  # the store owns both

    # joining a hub

    def join(self) -> dict[str, Any]:
        """Enroll this device, publish the agreement key, and merge portals both ways with the keyring.

        What the join saves on this device (the portals it adopts, the hub and
        edges in the configuration) is saved in one transaction, or nothing is.
        Then each added portal is pulled on its own: one that fails (closed at
        the hub, its key gone) is named in ``failed`` and the others go on.
        """
        hub = self.require_hub()
        identity = self.secrets.identity
        hub.enroll(self.cert)
        sig = identity.signing_key.sign(DOMAIN_AGREEMENT + identity.agreement_public)
        hub.set_agreement(identity.agreement_public, sig)
        for row in self.device.state.portals():
            if self._grant_owner(row) == identity.public:
                hub.create_portal(row.id)
        with self.device.state.transaction():
            added = self.merge_keyring()
            added += self.accept_shares()
            save_config(self.device, self.config)
        failed = {}
        for name in added:
            try:
                self.pull(PortalView.open(self.device, name, self.secrets))
            except PortalError as exc:
                log.warning("%s: %s", name, exc)
                failed[name] = str(exc)
        return {"hub": hub.url, "portals_added": added, "edges": len(self.edges()), "failed": failed}

    def refresh(self) -> list[str]:
        """Adopt the keyring's portals and the shares accepted since; return the names added."""
        return self.merge_keyring() + self.accept_shares()

    def _grant_owner(self, row: PortalRow) -> bytes:
        owner = self.device.state.get_meta(f"owner:{row.id.hex()}")
        return owner if owner is not None else self.secrets.identity.public

    def _change_keyring(self, change: Callable[[dict[str, Any]], bool]) -> None:
        """Apply ``change`` to the hub's keyring and write it back (compare-and-swap), retrying on a race.

        ``change`` edits the opened keyring in place and says whether there is anything to write.
        """
        hub = self.require_hub()
        identity = self.secrets.identity
        for _attempt in range(KEYRING_ATTEMPTS):
            current = hub.keyring()
            ring = open_keyring(identity, current.blob)
            if not change(ring):
                return
            try:
                hub.put_keyring(current.version + 1, seal_keyring(identity, ring))
                return
            except Conflict:
                continue
        raise Conflict("the hub's keyring kept changing while this device updated it; try again")

    def merge_keyring(self) -> list[str]:
        """Adopt the keyring's portals and edges, and add this identity's own that it lacks; return added names."""
        identity = self.secrets.identity
        added: list[str] = []

        def merge(ring: dict[str, Any]) -> bool:
            added.extend(self._adopt(ring))
            mine = {
                row.id.hex(): row for row in self.device.state.portals() if self._grant_owner(row) == identity.public
            }
            known = {p["id"] for p in ring.get("portals", [])}
            edges = {e["key"]: e for e in ring.get("edges", [])}
            new_edges = {e["key"]: e for e in self.config.edges if e["key"] not in edges}
            if set(mine) <= known and not new_edges:
                return False
            ring["portals"] = [p for p in ring.get("portals", [])] + [
                {"id": pid, "name": row.name, "keys": keys.to_bytes()}
                for pid, row in mine.items()
                if pid not in known and (keys := self._keys(row)) is not None
            ]
            ring["edges"] = list(edges.values()) + list(new_edges.values())
            return True

        self._change_keyring(merge)
        return added

    def _adopt(self, ring: dict[str, Any]) -> list[str]:
        added = []
        for entry in ring.get("portals", []):
            portal = bytes.fromhex(entry["id"])
            keys = PortalKeys.from_bytes(entry["keys"])
            existing = next((row for row in self.device.state.portals() if row.id == portal), None)
            if existing is not None:
                if self._keys(existing) != keys:  # rotated on another device (or lost here: the keyring's)
                    self.device.state.set_portal_key(portal, self.secrets.wrap_portal_key(portal, keys))
                continue
            name = self._free_name(entry["name"])
            self.device.state.add_portal(PortalRow(portal, name, self.secrets.wrap_portal_key(portal, keys), 0))
            added.append(name)
        known = {e["key"] for e in self.config.edges}
        for edge in ring.get("edges", []):
            if edge["key"] not in known:
                self.config.edges.append(edge)
        save_config(self.device, self.config)
        return added

    def _keys(self, row: PortalRow) -> PortalKeys | None:
        """The portal's keys, or None when they no longer open on this device (its sync says so)."""
        try:
            return self.secrets.unwrap_portal_key(row)
        except IntegrityError as exc:
            log.info("keyring: %s", exc)
            return None

    def accept_shares(self) -> list[str]:
        """Add the portals other identities shared with this one (one that fails is logged and skipped), and
        follow the hub's deletions and restores of the portals this device has."""
        hub = self.require_hub()
        added = []
        local = {row.id: row for row in self.device.state.portals()}
        for info in hub.portals():
            if info.id in local:
                self._note_deleted(info)
            if info.role == "owner" or info.state in CLOSED_STATES:
                continue
            try:
                if info.id in local:
                    self._take_rotated_keys(local[info.id])
                else:
                    added += self._accept_share(info.id)
            except PortalError as exc:  # unshared or closed meanwhile, a grant that does not open
                log.warning("portal %s shared with this identity: %s", info.id.hex()[:16], exc)
        return added

    def _my_grant(self, portal: bytes) -> Grant | None:
        me = self.secrets.identity.public
        wrapped = next((m.wrapped for m in self.require_hub().members(portal) if m.identity == me), None)
        return None if wrapped is None else unwrap_for_identity(self.secrets.identity, portal, wrapped)

    def _take_rotated_keys(self, row: PortalRow) -> None:
        """A portal shared with this identity whose owner rotated its read key (an unshare): take the new keys."""
        grant = self._my_grant(row.id)
        if grant is not None and grant.keys != self._keys(row):
            self.device.state.set_portal_key(row.id, self.secrets.wrap_portal_key(row.id, grant.keys))
            log.info("%s: the owner rotated its read key; this device has the new one", row.name)

    def _note_deleted(self, info: PortalInfo) -> None:
        """A portal deleted at the hub is not followed here until it is restored (section 14)."""
        key = f"deleted:{info.id.hex()}"
        if info.state == "deleted":
            self.device.state.set_meta(key, str(info.release_ns).encode())
        else:
            self.device.state.delete_meta(key)

    def _accept_share(self, portal: bytes) -> list[str]:
        grant = self._my_grant(portal)
        return [] if grant is None else [self.adopt_grant(portal, grant)]

    def adopt_grant(self, portal: bytes, grant: Grant) -> str:
        name = self._free_name(grant.name)
        self.device.state.add_portal(PortalRow(portal, name, self.secrets.wrap_portal_key(portal, grant.keys), 0))
        self.device.state.set_meta(f"owner:{portal.hex()}", grant.owner)
        return name

    def _free_name(self, name: str) -> str:
        taken = {row.name for row in self.device.state.portals()}
        candidate, n = name, 2
        while candidate in taken:
            candidate, n = f"{name}-{n}", n + 1
        return candidate

    def require_hub(self) -> HubClient:
        if self.hub is None:
            raise UsageError("no hub: run `portalctl hub add URL` first")
        return self.hub

    # versions

    def _trust_writers(self, view: PortalView, records: list[RootRecord]) -> None:
        """Add to the device table the enrolled devices of the portal's owner that signed ``records``."""
        known = self.device.state.device_names()
        if all(r.device in known for r in records):
            return
        owner = self._grant_owner(view.row)
        for row in self.require_hub().identity_devices(owner):
            cert = DeviceCertificate.from_bytes(row.cert)
            fields = cert.verify(owner)
            if fields["device"] not in known:
                self.device.state.add_device(
                    fields["device"], str(fields["name"]), cert.to_bytes(), int(fields["time"])
                )
        known = self.device.state.device_names()
        for record in records:
            if record.device not in known:
                raise IntegrityError(f"root record v{record.version}: signed by a device the owner never enrolled")

    def update_keyring_keys(self, portal: bytes, keys: PortalKeys) -> None:
        """Store a portal's rotated keys in the hub's keyring."""

        def rotate(ring: dict[str, Any]) -> bool:
            for entry in ring.get("portals", []):
                if entry["id"] == portal.hex():
                    entry["keys"] = keys.to_bytes()
            return True

        self._change_keyring(rotate)

    def grant(self, portal: bytes, member: bytes, grant: Grant, write: bool) -> None:
        """Wrap ``grant`` to ``member``'s agreement key, checked against its identity, and store it at the hub."""
        hub = self.require_hub()
        info = hub.identity(member)
        verify_signature(member, info.sig, DOMAIN_AGREEMENT + info.agreement, "agreement key")
        hub.set_member(portal, member, wrap_for_identity(info.agreement, portal, grant), write)

    def pull(self, view: PortalView) -> int:
        """Take the versions the hub has beyond this device's; return how many.

        When another device published after this device's last published
        version while this device made versions of its own, the two are merged
        (``merge``) into one new version on top of the hub's.
        """
        hub = self.require_hub()
        head = self.device.state.head(view.row.id)
        local = 0 if head is None else head.version
        published = published_version(self.device, view.row.id)
        records = [RootRecord.from_bytes(r) for r in hub.roots(view.row.id, after=published)]
        while records and records[0].version <= local:  # the hub has this device's own (a crash forgot it did)
            if self.device.state.version(view.row.id, records[0].version).record.record_id != records[0].record_id:
                break
            published = records.pop(0).version
            mark_published(self.device, view.row.id, published)
        if not records:
            return 0
        try:
            # a read-write mount builds its versions on the head it mounted: none may come in beneath it
            if local > published:
                from ..worktree.journal import writing

                with writing(view, self.secrets, "sync"):  # what a crashed mount journaled is merged too
                    self.merge(view, records)
            else:
                with self.device.portal_writer(view.row.id, "sync"):
                    self.take_records(view, [r for r in records if r.version > local])
        except PortalBusy:
            log.info("%s: mounted read-write; v%d and later wait for the unmount", view.row.name, records[0].version)
            return 0
        return len(records)

    def _checked(self, view: PortalView, records: list[RootRecord]) -> list[tuple[RootRecord, RootPayload]]:
        """``records``, each following the one before it (the first, the device's version before it), opened."""
        if not records:
            return []
        self._trust_writers(view, records)
        previous = self.device.state.version(view.row.id, records[0].version - 1) if records[0].version > 1 else None
        verify_chain(records, set(self.device.state.device_names()), None if previous is None else previous.record)
        return [(record, record.open(view.keys)) for record in records]

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
        published = published_version(self.device, portal)
        base_row = self.device.state.version(portal, published) if published else None
        ours_row = self.device.state.head(portal)
        assert ours_row is not None
        theirs = self._checked(view, records)
        base = None if base_row is None else view.root(base_row).entry
        device_name = self.device.state.device_names().get(self.secrets.device.public, "this device")
        now_ns = time.time_ns()
        date = time.strftime("%Y-%m-%d", time.gmtime(now_ns / 1e9))

        def store_node(plaintext: bytes) -> ChunkRef:
            return store_sealed(self.device.store, view.keys.tree_secret, plaintext)[0]

        with self.fetching():  # theirs' directories may be on the edges alone
            result = merge_trees(
                base,
                view.root(ours_row).entry,
                theirs[-1][1].entry,
                view.load_node,
                store_node,
                lambda name, taken: conflict_name(name, device_name, date, taken),
            )
            size, files = tree_totals(result.root, view.load_node)
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
        versions = self.device.state.versions(portal)
        pending = [v for v in versions if v.version > published]
        if not pending:
            return {"published": 0, "objects": 0}
        cids = self._changed_objects(view, {v.version: v for v in versions}, pending)
        self._place(view, cids, self.device.store_local.get)
        for version in pending:
            try:
                hub.publish(portal, version.record.to_bytes())
            except Conflict as exc:
                raise Conflict(
                    f"portal {view.row.name!r}: another device published first; "
                    f"the next sync merges its versions with this device's: {exc}"
                ) from None
            mark_published(self.device, portal, version.version)
        return {"published": len(pending), "objects": len(cids)}

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
        local = self.device.store_local
        healed = 0

        def read(cid: bytes) -> bytes:
            nonlocal healed
            try:
                return local.get(cid)
            except MissingObject:
                return self.swarm.get(cid)  # verified against its id by the edge client
            except CorruptObject as exc:
                log.warning("%s; replacing it with a copy from the edges", exc)
                data = self.swarm.get(cid)
                heal_local(local, cid, data)
                healed += 1
                return data

        placement = self._place(view, cids, read, verify=True)
        if placement.copies:
            log.info("%s: %d copies made to bring %d objects back to %d edges", view.row.name, placement.copies,
                     len(cids), self.config.replicas)  # fmt: skip
        return {"checked": len(cids), "copied": placement.copies, "damaged": placement.damaged, "healed": healed}

    def _changed_objects(
        self, view: PortalView, versions: dict[int, VersionRow], pending: list[VersionRow]
    ) -> list[bytes]:
        objects: set[bytes] = set()
        with self.fetching():  # an older version's directories may be on the edges alone
            for version in pending:
                before = versions.get(version.version - 1)
                base = None if before is None else view.root(before).entry
                view.changed_objects(view.root(version).entry, base, objects)
        return sorted(objects)

    def _objects(self, view: PortalView, versions: list[VersionRow]) -> list[bytes]:
        objects: set[bytes] = set()
        with self.fetching():  # a merged version holds nodes of other devices' versions
            for version in versions:
                view.objects(view.root(version).entry, objects)
        return sorted(objects)

    @contextmanager
    def fetching(self) -> Iterator[None]:
        """While inside, the device's store fetches what it lacks from the edges (and keeps it)."""
        if isinstance(self.device.store, FabricStore):
            yield
            return
        previous = self.device.store
        self.device.attach_store(FabricStore(self.device.store_local, lambda: self.swarm))  # closed with the fabric
        try:
            yield
        finally:
            self.device.attach_store(previous)

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
            for edge, held in placement.held.items():
                hub.add_locations(view.row.id, edge, held)
            copies, damaged = copies + placement.copies, damaged + placement.damaged
            if time.monotonic() - asked < HAVE_TRUST_SECONDS:
                return Placement(placement.held, copies, damaged)
            log.info("%s: placing took over %.0f s; asking the edges again", view.row.name, HAVE_TRUST_SECONDS)
        raise Unreachable(f"portal {view.row.name!r}: the edges are too slow to place its objects; try again")

    def sync(self, view: PortalView) -> dict[str, Any]:
        if self._grant_owner(view.row) == self.secrets.identity.public:
            self.require_hub().create_portal(view.row.id)  # created there, if it was not
        pulled = self.pull(view)
        pushed = self.push(view)
        head = self.device.state.head(view.row.id)
        return {"portal": view.row.name, "pulled": pulled, **pushed, "version": 0 if head is None else head.version}
