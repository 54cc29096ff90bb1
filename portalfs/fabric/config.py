"""A device's fabric configuration and what it records of its portals at the hub (docs/design.md, section 14).

The ``fabric`` meta row holds the hub URL, hand-added edges, the replication
factor and portald's embedded fabric (JSON); per portal, ``published:<id>`` is
the newest version this device knows the hub has, ``link:<id>`` marks a portal
opened from a link, and ``deleted:<id>`` one deleted at the hub (its release time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..device import Device
from ..keys import DeviceKey
from ..state import PortalRow

if TYPE_CHECKING:
    from ..hub.client import HubClient

__all__ = [
    "DEFAULT_REPLICAS",
    "FabricConfig",
    "load_config",
    "save_config",
    "followed_portals",
    "published_version",
    "mark_published",
    "forget_published",
]

META = "fabric"
DEFAULT_REPLICAS = 2


@dataclass
class FabricConfig:
    hub: str | None = None
    edges: list[dict[str, Any]] = field(default_factory=list)  # added by hand: host, port, key, transport
    replicas: int = DEFAULT_REPLICAS
    embedded: dict[str, Any] | None = None  # portald's own hub and edge: host, hub_port, edge_port
    hub_cert: str | None = None  # an https hub's certificate (PEM), pinned at `hub add`
    limits: dict[str, Any] = field(default_factory=dict)  # bandwidth and edge limits (sched.limits.Limits.to_json)

    def to_json(self) -> bytes:
        return json.dumps(
            {"hub": self.hub, "edges": self.edges, "replicas": self.replicas, "embedded": self.embedded,
             "hub_cert": self.hub_cert, "limits": self.limits}
        ).encode()  # fmt: skip

    @property
    def reaches_edges(self) -> bool:
        """Whether the device is on a fabric: a hub, or edges added by hand."""
        return bool(self.hub or self.edges)

    @property
    def on_embedded(self) -> bool:
        """Whether the hub is the one portald runs in-process (section 16, "Embedded hub and edge")."""
        return self.embedded is not None and self.hub == self.embedded.get("hub")

    def leave_embedded(self) -> None:
        """Forget portald's embedded hub and edge, and the replication factor their one edge allowed."""
        if self.embedded is not None:
            self.embedded = None
            self.replicas = DEFAULT_REPLICAS


def hub_client(url: str, device: DeviceKey, config: FabricConfig | None) -> HubClient:
    """A client of hub ``url``, accepting the certificate pinned for it when it is the configuration's hub."""
    from ..hub.client import HubClient  # here: httpx is loaded by what talks to a hub, not by every command

    pin = config.hub_cert if config is not None and config.hub == url else None
    return HubClient(url, device, pin)


def load_config(device: Device) -> FabricConfig | None:
    raw = device.state.get_meta(META)
    if raw is None:
        return None
    value = json.loads(raw)
    return FabricConfig(
        value.get("hub"),
        value.get("edges", []),
        value.get("replicas", DEFAULT_REPLICAS),
        value.get("embedded"),
        value.get("hub_cert"),
        value.get("limits") or {},
    )


def save_config(device: Device, config: FabricConfig) -> None:
    device.state.set_meta(META, config.to_json())


def followed_portals(device: Device) -> list[PortalRow]:
    """The portals sync keeps up to date: all but those opened from a link (read-only, refreshed by `open`)
    and those this device deleted at the hub (until `portal restore`)."""
    return [
        row
        for row in device.state.portals()
        if not device.state.get_meta(f"link:{row.id.hex()}") and device.state.deleted_until(row.id) is None
    ]


PAUSED = "paused:"  # meta: "paused:<portal id hex>", or "paused:*" for every portal


def is_paused(device: Device, portal: bytes) -> bool:
    """Whether syncing ``portal`` is paused (``portalctl pause``): nothing is pushed or pulled in the background;
    reads still fetch what the device lacks."""
    return device.state.get_meta(PAUSED + "*") is not None or device.state.get_meta(PAUSED + portal.hex()) is not None


def set_paused(device: Device, portal: bytes | None, paused: bool) -> None:
    """Pause or resume ``portal`` (None: every portal; resuming all also resumes each)."""
    if portal is None and not paused:
        for row in device.state.portals():
            device.state.delete_meta(PAUSED + row.id.hex())
    key = PAUSED + ("*" if portal is None else portal.hex())
    if paused:
        device.state.set_meta(key, b"1")
    else:
        device.state.delete_meta(key)


def published_version(device: Device, portal: bytes) -> int:
    """The newest version of ``portal`` this device knows to be at the hub (0: none)."""
    raw = device.state.get_meta(f"published:{portal.hex()}")
    return 0 if raw is None else int(raw)


def mark_published(device: Device, portal: bytes, version: int) -> None:
    """Record that the hub has ``portal`` up to ``version``."""
    device.state.set_meta(f"published:{portal.hex()}", str(version).encode())


def forget_published(device: Device) -> None:
    """After a move to another hub, which has none of this device's versions: the next sync publishes each."""
    with device.state.transaction():
        for row in device.state.portals():
            mark_published(device, row.id, 0)
