"""Who may write a portal, as a device checks it (docs/design.md, sections 6 and 14): a root record counts
only when its chain holds and its signer is a device enrolled by one of the portal's *writers*: its owner, or
a member the owner granted writing to, by a grant the owner's identity key signed. Each device is enrolled by
a certificate that verifies against its identity's key. The hub only relays the certificates and the grants;
it cannot add a writer. The writers are asked for at each check: a member whose grant was withdrawn signs no
later record."""

from __future__ import annotations

from ..device import Device
from ..errors import BadSignature, IntegrityError, PortalError
from ..hub.client import HubClient
from ..keys import DOMAIN_WRITE_GRANT, DeviceCertificate, verify_signature
from ..portal import PortalView
from ..root import RootPayload, RootRecord, verify_chain

__all__ = ["writer_devices", "writers", "checked_records"]


def writers(hub: HubClient, portal: bytes, owner: bytes) -> list[bytes]:
    """The identities that may write ``portal``: its owner, and each member whose write grant the owner signed
    (a grant the hub made up, or altered, does not verify and counts for nothing)."""
    found = [owner]
    try:
        members = hub.members(portal)
    except PortalError:  # a reader that may not list the members (a link's): the owner's devices alone
        return found
    for member in members:
        if member.write and member.write_sig:
            try:
                verify_signature(owner, member.write_sig, DOMAIN_WRITE_GRANT + portal + member.identity, "grant")
            except BadSignature:
                continue
            found.append(member.identity)
    return found


def _enrolled(device: Device) -> dict[bytes, bytes]:
    """Each known device and the identity whose certificate enrolled it."""
    out = {}
    for public, cert in device.state.device_certs().items():
        try:
            out[public] = bytes(DeviceCertificate.from_bytes(cert).fields()["identity"])
        except (KeyError, TypeError, ValueError):
            continue
    return out


def writer_devices(
    device: Device, hub: HubClient, owner: bytes, portal: bytes, records: list[RootRecord]
) -> set[bytes]:
    """The devices that may sign ``portal``'s records: those the portal's writers enrolled. Asks the hub only
    when a record's signer is not yet known to be the owner's; raises IntegrityError if one is nobody's."""
    enrolled = _enrolled(device)
    allowed = {d for d, identity in enrolled.items() if identity == owner}
    if all(r.device in allowed for r in records):
        return allowed
    for identity in writers(hub, portal, owner):
        for row in hub.identity_devices(identity):
            cert = DeviceCertificate.from_bytes(row.cert)
            fields = cert.verify(identity)  # the hub cannot make one up: the writer's identity key signs it
            if fields["device"] not in enrolled:
                device.state.add_device(fields["device"], str(fields.get("name", "")), cert.to_bytes(),
                                        int(fields["time"]))  # fmt: skip
            allowed.add(fields["device"])
    for record in records:
        if record.device not in allowed:
            raise IntegrityError(f"root record v{record.version}: signed by a device no writer of the portal enrolled")
    return allowed


def checked_records(
    view: PortalView, hub: HubClient, owner: bytes, records: list[RootRecord]
) -> list[tuple[RootRecord, RootPayload]]:
    """``records`` from the hub, each following the one before it (the first, this device's version before it)
    and signed by a device one of the portal's writers enrolled, opened with the portal's keys."""
    if not records:
        return []
    device = view.device
    allowed = writer_devices(device, hub, owner, view.row.id, records)
    previous = device.state.version(view.row.id, records[0].version - 1) if records[0].version > 1 else None
    verify_chain(records, allowed, None if previous is None else previous.record)
    return [(record, record.open(view.keys)) for record in records]
