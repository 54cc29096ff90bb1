"""portald's embedded hub and edge: the zero-configuration fabric of a device that has no hub.

The hub (SQLite in ``embedded/hub.db``) and the edge (``embedded/edge/``) are
the very servers ``portal-hub`` and ``portal-edge`` run, started in portald's
nursery and listening on one address (loopback unless ``portald --listen``
says otherwise). The device joins its own hub the first time; the ports are
kept in the fabric config, so the hub's URL, which other devices may have
joined, stays the same across restarts. See docs/design.md, section 16.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from ..device import Device, Unlocked
from ..edge.server import EdgeConfig, run_edge
from ..errors import PortalBusy, UsageError
from ..fabric.config import FabricConfig, load_config, save_config
from ..fabric.sync import Fabric
from ..hub.server import run_hub
from ..net import one_error

__all__ = ["EmbeddedFabric", "wanted", "run_embedded"]

log = logging.getLogger("portal.daemon")

REPLICAS = 1  # one edge: the device's own store holds the other copy


@dataclass(frozen=True, slots=True)
class EmbeddedFabric:
    """Where the embedded servers listen: ``host``, and the ports of earlier runs (0: any free one)."""

    host: str
    hub_port: int = 0
    edge_port: int = 0

    def hub_url(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"


def check_listen(host: str) -> str:
    """``host`` as an address other devices can be told; wildcards and names are refused."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise UsageError(f"--listen {host!r}: give an IP address of this machine (127.0.0.1: itself alone)") from None
    if address.is_unspecified:
        raise UsageError(f"--listen {host}: give the address other devices reach this one at, not a wildcard")
    return str(address)


def wanted(config: FabricConfig | None, listen: str | None) -> EmbeddedFabric | None:
    """The embedded servers to run for ``config``: none once the device is on another hub."""
    if config is not None and config.hub and not config.on_embedded:
        if listen is not None:
            raise UsageError(f"this device's hub is {config.hub}: --listen is for portald's embedded hub and edge")
        return None
    earlier: dict[str, Any] = (config.embedded or {}) if config is not None else {}
    host = check_listen(listen) if listen is not None else earlier.get("host", "127.0.0.1")
    return EmbeddedFabric(host, int(earlier.get("hub_port", 0)), int(earlier.get("edge_port", 0)))


def _join(device: Device, secrets: Unlocked, url: str) -> None:
    """Enroll the device at its embedded hub the first time, before the edge asks the hub who is enrolled."""
    config = load_config(device) or FabricConfig()
    if config.on_embedded and config.hub == url:
        return
    config.hub, config.replicas = url, REPLICAS
    fabric = Fabric(device, secrets, config)
    try:
        fabric.join()
    finally:
        fabric.close()


def _record(device: Device, where: EmbeddedFabric, url: str, hub_port: int, edge_port: int) -> None:
    config = load_config(device) or FabricConfig()
    config.embedded = {"host": where.host, "hub_port": hub_port, "edge_port": edge_port, "hub": url}
    config.hub, config.replicas = url, REPLICAS
    save_config(device, config)


@contextmanager
def _port_taken(where: EmbeddedFabric, port: int, what: str) -> Iterator[None]:
    """A server that cannot listen: one line that says which address, not the groups of nurseries around it."""
    try:
        with one_error():
            yield
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortalBusy(
                f"the embedded {what}'s address {where.host}:{port} is taken by another program; free it "
                "(other devices know the hub there)"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"--listen {where.host}: not an address of this machine") from None
        raise


async def run_embedded(
    device: Device,
    secrets: Unlocked,
    where: EmbeddedFabric,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the hub, join it, then run the edge (registered at it), until cancelled; ``task_status.started(URL)``."""
    from ..net.tls import EdgeKey

    data = device.home.data / "embedded"
    data.mkdir(mode=0o700, exist_ok=True)
    (data / "edge").mkdir(exist_ok=True)
    own_edge = await trio.to_thread.run_sync(EdgeKey.load_or_create, data / "edge")
    async with trio.open_nursery() as nursery:
        with _port_taken(where, where.hub_port, "hub"):
            hub_port = await nursery.start(
                partial(
                    run_hub, data / "hub.db", where.host, where.hub_port, trio.sleep_forever, admit=[own_edge.public]
                )
            )
        url = where.hub_url(hub_port)
        await trio.to_thread.run_sync(_join, device, secrets, url)
        edge = EdgeConfig(data / "edge", where.host, where.edge_port, hub=url)
        with _port_taken(where, where.edge_port, "edge"):
            _, edge_port = await nursery.start(run_edge, edge, trio.sleep_forever)
        await trio.to_thread.run_sync(_record, device, where, url, hub_port, edge_port)
        log.info("embedded hub %s and edge %s:%d, data in %s", url, where.host, edge_port, data)
        task_status.started(url)
