"""portal-edge: a storage edge. Wiring only: store, key, quotas, transports, hub registration."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from ..chunking import CDC_MIN
from ..net import Connections, stop_signal
from ..sealing import OVERHEAD
from ..store import LocalStore
from .hub_agent import HEARTBEAT_SECONDS
from .service import DeviceStatus, EdgeService, EdgeSession, QuotaBook
from .upkeep import GARBAGE_HOLD_SECONDS, GARBAGE_INTERVAL_SECONDS, collect_garbage, scrub

__all__ = ["EdgeConfig", "run_edge"]

log = logging.getLogger("portal.edge")

DRAIN_SECONDS = 5.0  # on shutdown, how long requests in progress may take to finish
EDGE_SMALL_MAX = CDC_MIN + OVERHEAD  # objects kept as rows: up to a small file's one chunk, sealed
SCRUB_RATE = 16 << 20  # bytes a second
SCRUB_INTERVAL_SECONDS = 86400.0  # a scrub pass a day


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    data: Path
    host: str
    port: int
    transports: tuple[str, ...] = ("quic", "tcp")
    quota: int = 0  # bytes per identity; 0: none
    capacity: int = 0  # bytes in all; 0: the disk
    hub: str | None = None
    quic_backend: str | None = None
    gc_interval: float = GARBAGE_INTERVAL_SECONDS  # seconds between garbage passes
    gc_hold: float = GARBAGE_HOLD_SECONDS  # seconds condemned ids wait; at least twice HAVE_TRUST_SECONDS
    scrub_rate: int = SCRUB_RATE  # bytes a second the scrub reads; 0: no scrub
    scrub_interval: float = SCRUB_INTERVAL_SECONDS
    hub_cert: str | None = None  # an https hub's certificate (PEM) to accept, and no other; None: the system's CAs
    heartbeat: float = HEARTBEAT_SECONDS  # seconds between registrations at the hub


async def run_edge(
    config: EdgeConfig,
    until: Callable[[], Awaitable[object]] | None = None,
    *,
    task_status: trio.TaskStatus[tuple[bytes, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``until()`` returns (default: SIGTERM or SIGINT), then drain; started with (key, port)."""
    from ..net.tcp import serve_tcp
    from ..net.tls import EdgeKey

    config.data.mkdir(parents=True, exist_ok=True)
    key = EdgeKey.load_or_create(config.data)
    # A small object a row, a large one a file (docs/design.md, section 12, "GET"): a PUTS of small files'
    # chunks is one transaction, not a file made and renamed for each; a large object in the page cache is
    # served on the event loop without waiting (RWF_NOWAIT), which a row cannot be.
    store = LocalStore(config.data / "store", small_max=EDGE_SMALL_MAX)
    quotas = QuotaBook(config.data / "edge.db", config.quota)
    device_status: DeviceStatus | None = None
    agent = None
    if config.hub:
        from ..hub.client import EdgeHubClient
        from .hub_agent import HubAgent

        agent = HubAgent(EdgeHubClient(config.hub, key.public, key.sign, config.hub_cert), config.heartbeat)
        device_status = agent.device_status
    service = EdgeService(store, key.public, quotas, device_status, config.capacity)

    def new_session(peer: str, channel_device: bytes | None = None) -> EdgeSession:
        return EdgeSession(service, peer, channel_device)

    connections = Connections()  # both transports together: bounded in all and per address
    try:
        async with trio.open_nursery() as nursery:
            port = config.port
            if "tcp" in config.transports:
                listeners = await nursery.start(serve_tcp, key, config.host, port, new_session, connections)
                port = listeners[0].socket.getsockname()[1]
            if "quic" in config.transports:
                from ..net.quic import backend, serve_quic

                _, port = await nursery.start(
                    lambda task_status: serve_quic(
                        key,
                        config.host,
                        port,
                        new_session,
                        connections,
                        quic=backend(config.quic_backend),
                        task_status=task_status,
                    )
                )
            if agent is not None:
                await nursery.start(agent.run, f"{config.host}:{port}", config.transports, store, service.check)
                nursery.start_soon(collect_garbage, agent.client, service, config.gc_interval, config.gc_hold)
                nursery.start_soon(agent.watch_revocations)
            if config.scrub_rate:
                nursery.start_soon(scrub, service, config.scrub_rate, config.scrub_interval)
            log.info("edge %s serving on %s:%d (%s)", key.public.hex(), config.host, port, ", ".join(config.transports))
            task_status.started((key.public, port))
            await (until or stop_signal)()
            log.info("shutting down: no new objects; %.0f s for requests in progress", DRAIN_SECONDS)
            service.accepting = False
            with trio.move_on_after(DRAIN_SECONDS):
                while service.statistics()["in_flight"]:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
        quotas.close()
