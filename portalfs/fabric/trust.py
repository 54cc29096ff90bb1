"""Who may write a portal, as a device checks it (docs/design.md, sections 6 and 14): a root record counts
only when its chain holds and its signer is a device the portal's owner enrolled, by a certificate that
verifies against the owner's identity key. The hub only relays the certificates; it cannot add a writer."""

from __future__ import annotations

from ..device import Device
from ..errors import IntegrityError
from ..hub.client import HubClient
from ..keys import DeviceCertificate
from ..portal import PortalView
from ..root import RootPayload, RootRecord, verify_chain

__all__ = ["trust_writers", "checked_records"]


def trust_writers(device: Device, hub: HubClient, owner: bytes, records: list[RootRecord]) -> None:
    """Add to the device table the devices ``owner`` enrolled that signed ``records``; raise IntegrityError if a
    record is signed by any other."""
    known = device.state.device_names()
    if all(r.device in known for r in records):
        return
    for row in hub.identity_devices(owner):
        cert = DeviceCertificate.from_bytes(row.cert)
        fields = cert.verify(owner)  # the hub cannot make one up: the owner's identity key signs it
        if fields["device"] not in known:
            device.state.add_device(fields["device"], str(fields["name"]), cert.to_bytes(), int(fields["time"]))
    known = device.state.device_names()
    for record in records:
        if record.device not in known:
            raise IntegrityError(f"root record v{record.version}: signed by a device the owner never enrolled")


def checked_records(
    view: PortalView, hub: HubClient, owner: bytes, records: list[RootRecord]
) -> list[tuple[RootRecord, RootPayload]]:
    """``records`` from the hub, each following the one before it (the first, this device's version before it)
    and signed by a writer the owner enrolled, opened with the portal's keys."""
    if not records:
        return []
    device = view.device
    trust_writers(device, hub, owner, records)
    previous = device.state.version(view.row.id, records[0].version - 1) if records[0].version > 1 else None
    verify_chain(records, set(device.state.device_names()), None if previous is None else previous.record)
    return [(record, record.open(view.keys)) for record in records]
