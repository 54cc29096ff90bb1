"""Sharing a portal and the policy around it: with an identity, by link, taking it back (with key rotation that
resumes after a crash), revoking a device, and a portal's lifecycle at the hub (docs/design.md, section 15).

The CLI parses and prints; what these do, and in which order, lives here.
"""

from __future__ import annotations

import json
import logging
import os

from .. import encoding
from ..errors import NotFound, shown
from ..generations import Generation, GenerationRecord, seal_seed
from ..hub.client import HubRefused, PortalInfo
from ..keys import DOMAIN_REVOKE, x25519_public
from ..portal import PortalView
from ..root import PortalKeys, RootRecord
from ..state import PortalRow
from .grants import Grant, LinkUrl, link_redeem_key, redeem_proof, unwrap_for_link, wrap_for_link
from .sync import Fabric

__all__ = [
    "share",
    "unshare",
    "resume_rotations",
    "make_link",
    "open_link",
    "revoke_device",
    "set_policy",
    "delete_portal",
    "restore_portal",
]

log = logging.getLogger("portal.sharing")

ROTATION = "rotation:"  # meta key prefix: an unshare under way, {"member": hex, "keys": wrapped rotated keys}
GENERATION_PENDING = "generation:pending"  # meta: a key generation made by a revocation, not yet published


def share(fabric: Fabric, view: PortalView, recipient: bytes, write: bool) -> None:
    """Give ``recipient`` the portal's read keys (wrapped to its checked agreement key) and, with ``write``,
    the right to publish."""
    fabric.require_hub().create_portal(view.row.id)
    grant = Grant(view.row.name, view.keys, fabric.secrets.identity.public)
    fabric.membership.grant(view.row.id, recipient, grant, write)


def unshare(fabric: Fabric, view: PortalView, member: bytes) -> None:
    """Remove ``member`` and rotate the read key, so that what comes after is sealed under a key it never had.

    The rotated keys are recorded first (wrapped, meta ``rotation:<portal>``); each step after is idempotent,
    and ``resume_rotations`` (at every sync) finishes what a crash left.
    """
    _record_rotation(fabric, view.row, view.keys, member)
    _finish_rotation(fabric, view.row)


def _record_rotation(fabric: Fabric, row: PortalRow, keys: PortalKeys, member: bytes | None) -> None:
    rotated = keys.rotated(os.urandom(32))
    intent = {"member": member.hex() if member else "", "keys": fabric.secrets.wrap_portal_key(row.id, rotated).hex()}
    fabric.device.state.set_meta(ROTATION + row.id.hex(), json.dumps(intent).encode())


def resume_rotations(fabric: Fabric) -> list[str]:
    """Finish a key generation and every unshare a crash (or a hub that went away) left half-done; return the
    portals' names."""
    _finish_generation(fabric)
    finished = []
    for row in fabric.device.state.portals():
        try:
            if _finish_rotation(fabric, row):
                finished.append(row.name)
        except (NotFound, HubRefused) as exc:  # closed at the hub, or never there: the rest goes on
            log.warning("%s: its read key rotation waits: %s", row.name, exc)
    return finished


def _finish_rotation(fabric: Fabric, row: PortalRow) -> bool:
    """Finish the portal's recorded rotation; False if none is recorded."""
    state, secrets = fabric.device.state, fabric.secrets
    raw = state.get_meta(ROTATION + row.id.hex())
    if raw is None:
        return False
    intent = json.loads(raw)
    member, wrapped = bytes.fromhex(intent["member"]), bytes.fromhex(intent["keys"])  # member b"": a revocation
    keys = secrets.unwrap_portal_key(PortalRow(row.id, row.name, wrapped, row.created_ns))
    # 1. versions from now on are sealed under the new key, before the member is told anything
    state.set_portal_key(row.id, wrapped)
    hub = fabric.require_hub()
    # 2. the member loses access at the hub (already gone: a step done before a crash)
    try:
        if member:
            hub.remove_member(row.id, member)
    except NotFound:
        pass
    # 3. the members left, and this identity's other devices, get the new keys
    grant = Grant(row.name, keys, secrets.identity.public)
    try:
        members = hub.members(row.id)
    except NotFound:  # a portal the hub does not know yet: nobody to give the keys to
        members = []
    for kept in members:
        fabric.membership.grant(row.id, kept.identity, grant, kept.write, kept.write_sig or None)
    fabric.membership.update_keyring_keys(row.id, keys)
    state.delete_meta(ROTATION + row.id.hex())
    log.info("%s: %s, read key rotated", row.name, f"{member.hex()[:16]} removed" if member else "device revoked")
    return True


def make_link(fabric: Fabric, view: PortalView, policy: dict[str, int | str]) -> str:
    """A ``portal://`` URL whose secret (in the fragment) unwraps the read keys the hub releases under ``policy``."""
    link, secret = os.urandom(16), os.urandom(32)
    grant = Grant(view.row.name, view.keys, fabric.secrets.identity.public)
    hub = fabric.require_hub()
    hub.create_portal(view.row.id)
    redeem_key = link_redeem_key(secret).public
    hub.create_link(view.row.id, link, wrap_for_link(secret, link, view.row.id, grant), redeem_key, policy)
    return str(LinkUrl(hub.url, link, secret))


def open_link(fabric: Fabric, url: LinkUrl) -> str:
    """Join the link's hub, redeem the link (one download) and take the portal's versions; return its name here."""
    fabric.join()
    device = fabric.device
    proof = redeem_proof(url.secret, url.link, fabric.secrets.device.public)  # a wrong secret counts nothing
    answer = fabric.require_hub().redeem(url.link, proof)
    grant = unwrap_for_link(url.secret, url.link, answer.portal, answer.wrapped)
    existing = next((row for row in device.state.portals() if row.id == answer.portal), None)
    name = existing.name if existing else fabric.membership.adopt_grant(answer.portal, grant)
    device.state.set_meta(f"link:{answer.portal.hex()}", b"1")
    view = PortalView.open(device, name, fabric.secrets)
    fabric.take_records(view, [RootRecord.from_bytes(r) for r in answer.roots])
    return name


def revoke_device(fabric: Fabric, prefix: str) -> bytes:
    """Revoke the one device of this identity whose key starts with ``prefix`` (hex), then rotate what it could
    read: the identity's next key generation, and the read keys of the portals the identity owns; return its key.
    Takes the identity's root (kept, or from the words)."""
    hub = fabric.require_hub()
    match = [d.device for d in hub.devices() if d.device.hex().startswith(prefix.lower())]
    if len(match) != 1:
        raise NotFound(f"{shown(prefix)} names {len(match)} devices of this identity; give more digits")
    hub.revoke_device(match[0], fabric.secrets.identity.signing_key.sign(DOMAIN_REVOKE + match[0]))
    _record_generation(fabric)
    resume_rotations(fabric)
    return match[0]


def _record_generation(fabric: Fabric) -> None:
    """Make the identity's next key generation, sealed to the devices it keeps and to its recovery key, and
    record it (meta ``generation:pending``) before anything is sent: ``_finish_generation`` publishes it."""
    secrets = fabric.secrets
    fabric.membership.follow_generation()  # after the newest the hub has
    identity = secrets.identity.rooted()
    generation = Generation.make(identity, secrets.generation_number + 1, secrets.purpose_keys)
    recovery = seal_seed(generation.record, generation.seed, x25519_public(identity.recovery_key))
    seals = fabric.membership.seals(generation)
    intent = {"record": generation.record.to_bytes(), "recovery": recovery, "seals": seals,
              "seed": secrets.device.seal_local(GENERATION_PENDING.encode(), generation.seed)}  # fmt: skip
    fabric.device.state.set_meta(GENERATION_PENDING, encoding.encode(intent))


def _finish_generation(fabric: Fabric) -> bool:
    """Publish the recorded key generation, hold it, and record the rotation of every portal the identity owns
    (their read keys, which the revoked device held); False if none is recorded."""
    state, secrets = fabric.device.state, fabric.secrets
    raw = state.get_meta(GENERATION_PENDING)
    if raw is None:
        return False
    intent = encoding.decode(raw)
    record = GenerationRecord.from_bytes(intent["record"])
    try:
        fabric.require_hub().put_generation(intent["record"], intent["recovery"], intent["seals"])
    except NotFound:  # kept, and tried again at each sync
        log.warning("the hub predates key generations (hub API revision 5): the revocation rotated nothing yet")
        return False
    if record.number > secrets.generation_number:
        seed = secrets.device.open_local(GENERATION_PENDING.encode(), intent["seed"])
        fabric.device.adopt_generation(secrets, Generation.open(record, seed))
    fabric.membership.merge_keyring()  # written back under the new keyring key
    for row in state.portals():
        if fabric.membership.owner_of(row) == secrets.identity.public and state.deleted_until(row.id) is None:
            _record_rotation(fabric, row, secrets.unwrap_portal_key(row), None)
    state.delete_meta(GENERATION_PENDING)
    log.info("the identity's key generation %d is published; its portals' read keys rotate", record.number)
    return True


def set_policy(fabric: Fabric, view: PortalView, policy: dict[str, int | bool | None]) -> PortalInfo:
    hub = fabric.require_hub()
    hub.create_portal(view.row.id)
    return hub.set_policy(view.row.id, policy)


def delete_portal(fabric: Fabric, view: PortalView) -> PortalInfo:
    """Delete at the hub (restorable until ``release_ns``); this device follows it no more until restored."""
    info = fabric.require_hub().delete_portal(view.row.id)
    fabric.device.state.set_deleted(view.row.id, info.release_ns)
    return info


def restore_portal(fabric: Fabric, view: PortalView) -> PortalInfo:
    info = fabric.require_hub().restore_portal(view.row.id)
    fabric.device.state.set_deleted(view.row.id, None)
    return info
