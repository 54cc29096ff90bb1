"""A device's membership in its identity and its hub: enrollment, the identity's keyring (portals, keys and
edges shared by the identity's devices), shares from other identities, and the grants that give portals away
(docs/design.md, sections 13 to 15). What the sync engine and sharing build on; no pulls or pushes here."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..device import Device, Unlocked
from ..errors import BadSignature, Conflict, IntegrityError, NotFound, PortalError
from ..generations import Generation, GenerationRecord, agreement_message, open_seed, seal_seed
from ..hub.client import GenerationAnswer, HubClient, PortalInfo
from ..hub.state import CLOSED_STATES
from ..keys import DOMAIN_DEVICE_BOX, DOMAIN_WRITE_GRANT, DeviceCertificate, verify_signature
from ..root import PortalKeys
from ..state import PortalRow
from .config import FabricConfig, save_config
from .grants import Grant, open_keyring, seal_keyring, unwrap_for_identity, wrap_for_identity

__all__ = ["Membership", "KEYRING_ATTEMPTS"]

log = logging.getLogger("portal.sync")

KEYRING_ATTEMPTS = 5  # compare-and-swap rounds before giving up on a busy keyring
_BOX_PUBLISHED = "box-published"  # meta: the hub this device's box key was published to


class Membership:
    """``require_hub`` gives the device's hub client, or raises UsageError when it has none."""

    def __init__(
        self, device: Device, secrets: Unlocked, config: FabricConfig, require_hub: Callable[[], HubClient]
    ) -> None:
        self.device = device
        self.secrets = secrets
        self.config = config
        self.require_hub = require_hub

    def enroll(self, cert: bytes) -> None:
        """Enroll this device, publish the identity's agreement key, and create this identity's portals there."""
        hub = self.require_hub()
        identity = self.secrets.identity
        hub.enroll(cert)
        # generation 0's, signed while the root was at hand (a hub that holds a newer generation keeps that one's)
        hub.set_agreement(identity.agreement_public, identity.agreement_sig)
        for row in self.device.state.portals():
            if self.owner_of(row) == identity.public:
                hub.create_portal(row.id)

    def refresh(self) -> list[str]:
        """Take the identity's newest key generation, adopt the keyring's portals and the shares accepted since;
        return the names added."""
        self.follow_generation()
        return self.merge_keyring() + self.accept_shares()

    def follow_generation(self) -> None:
        """Publish this device's box key (once per hub), take the identity's newest key generation (sealed to
        this device, to the recovery key a device made from the words holds until here, or handed over by the
        device that approved this one), and seal it to the identity's devices that lack it (section 2)."""
        hub, secrets, state = self.require_hub(), self.secrets, self.device.state
        try:
            if state.get_meta(_BOX_PUBLISHED) != hub.url.encode():
                hub.set_box(secrets.device.box_public, secrets.device.box_sig)
                state.set_meta(_BOX_PUBLISHED, hub.url.encode())
            answer = hub.generation()
        except NotFound:  # a hub from before revision 5: every device of the identity is at generation 0 there
            log.debug("the hub has no key generations")
            return
        if answer is not None:
            record = GenerationRecord.from_bytes(answer.record)
            if record.identity != secrets.identity.public:
                raise IntegrityError("the hub gave another identity's key generation")
            if record.number > secrets.generation_number:
                seed = self._seed(record, answer)
                if seed is None:
                    log.warning("the identity's key generation %d is not sealed to this device yet: another of its "
                                "devices seals it at its next sync", record.number)  # fmt: skip
                else:
                    self.device.adopt_generation(secrets, Generation.open(record, seed))
                    log.info("this device holds the identity's key generation %d", record.number)
            if answer.unsealed and record.number == secrets.generation_number and secrets.generation is not None:
                seals = self.seals(secrets.generation, answer.unsealed)
                if seals:
                    hub.add_seals(record.number, seals)
        self.device.forget_generation_hints()

    def _seed(self, record: GenerationRecord, answer: GenerationAnswer) -> bytes | None:
        secrets = self.secrets
        if answer.sealed is not None:
            return open_seed(record, answer.sealed, secrets.device.box_key)
        recovery = self.device.recovery_key(secrets)
        if recovery is not None:
            return open_seed(record, answer.recovery, recovery)
        return self.device.handed_seed(secrets, record.number)

    def seals(self, generation: Generation, devices: frozenset[bytes] | None = None) -> dict[bytes, bytes]:
        """``generation``'s seed sealed to each active device of the identity (of ``devices``, if given) whose
        box key its own key signed and whose certificate the identity signed; one that does not check is left."""
        identity = self.secrets.identity.public
        seals = {}
        for d in self.require_hub().devices():
            if d.revoked_ns is not None or d.box is None or d.box_sig is None:
                continue
            if devices is not None and d.device not in devices:
                continue
            try:
                fields = DeviceCertificate.from_bytes(d.cert).verify(identity)
                if fields.get("device") != d.device:
                    raise BadSignature("the certificate names another device")
                verify_signature(d.device, d.box_sig, DOMAIN_DEVICE_BOX + d.box, "box key")
            except (BadSignature, KeyError, TypeError, ValueError) as exc:
                log.warning("device %s: not sealing the key generation to it: %s", d.device.hex()[:16], exc)
                continue
            seals[d.device] = seal_seed(generation.record, generation.seed, d.box)
        return seals

    def owner_of(self, row: PortalRow) -> bytes:
        owner = self.device.state.get_meta(f"owner:{row.id.hex()}")
        return owner if owner is not None else self.secrets.identity.public

    def _change_keyring(self, change: Callable[[dict[str, Any]], bool]) -> None:
        """Apply ``change`` to the hub's keyring and write it back (compare-and-swap), retrying on a race.

        ``change`` edits the opened keyring in place and says whether there is anything to write; a keyring
        sealed under an older key generation than this device's newest is written back under the newest.
        """
        hub = self.require_hub()
        for _attempt in range(KEYRING_ATTEMPTS):
            current = hub.keyring()
            ring, newest = open_keyring(self.secrets, current.blob)
            if not change(ring) and newest:
                return
            try:
                hub.put_keyring(current.version + 1, seal_keyring(self.secrets, ring))
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
            mine = {row.id.hex(): row for row in self.device.state.portals() if self.owner_of(row) == identity.public}
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
        return None if wrapped is None else unwrap_for_identity(self.secrets, portal, wrapped)

    def _take_rotated_keys(self, row: PortalRow) -> None:
        """A portal shared with this identity whose owner rotated its read key (an unshare): take the new keys."""
        grant = self._my_grant(row.id)
        if grant is not None and grant.keys != self._keys(row):
            self.device.state.set_portal_key(row.id, self.secrets.wrap_portal_key(row.id, grant.keys))
            log.info("%s: the owner rotated its read key; this device has the new one", row.name)

    def _note_deleted(self, info: PortalInfo) -> None:
        """A portal deleted at the hub is not followed here until it is restored (section 14)."""
        self.device.state.set_deleted(info.id, info.release_ns if info.state == "deleted" else None)

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

    def update_keyring_keys(self, portal: bytes, keys: PortalKeys) -> None:
        """Store a portal's rotated keys in the hub's keyring."""

        def rotate(ring: dict[str, Any]) -> bool:
            for entry in ring.get("portals", []):
                if entry["id"] == portal.hex():
                    entry["keys"] = keys.to_bytes()
            return True

        self._change_keyring(rotate)

    def grant(self, portal: bytes, member: bytes, grant: Grant, write: bool, write_sig: bytes | None = None) -> None:
        """Wrap ``grant`` to ``member``'s agreement key, checked against its identity, and store it at the hub.
        A write grant is signed by the identity (its root: kept, or from the words), unless ``write_sig`` is the
        signature made when the member was first given write (it names the portal and the member, no key)."""
        hub = self.require_hub()
        info = hub.identity(member)
        verify_signature(member, info.sig, agreement_message(info.generation, info.agreement), "agreement key")
        seen_key = f"seen-generation:{member.hex()}"  # the newest key generation seen of the member: never back
        seen = int(self.device.state.get_meta(seen_key) or b"0")
        if info.generation < seen:
            raise IntegrityError(f"the hub gave {member.hex()[:16]}'s key generation {info.generation}, "
                                 f"older than {seen} seen before: not sharing")  # fmt: skip
        self.device.state.set_meta(seen_key, str(info.generation).encode())
        sig = None
        if write:
            sig = write_sig or self.secrets.identity.signing_key.sign(DOMAIN_WRITE_GRANT + portal + member)
        hub.set_member(portal, member, wrap_for_identity(info.agreement, portal, grant), write, sig)
