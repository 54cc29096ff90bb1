"""portal-hub serve: the API on hypercorn's trio worker, SQLite state."""

from __future__ import annotations

import logging
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from ..net import stop_signal
from .app import LongPolls, make_app
from .state import DEFAULT_GRACE_NS, EDGE_LIVE_NS, HubState

__all__ = ["run_hub"]

log = logging.getLogger("portal.hub")


class _Config(Config):
    """Hypercorn's configuration, keeping the TLS context it serves with so that SIGHUP can load new files."""

    context: ssl.SSLContext | None = None

    def create_ssl_context(self) -> ssl.SSLContext | None:
        self.context = super().create_ssl_context()
        return self.context


async def _reload_on_hangup(config: _Config, tls: tuple[Path, Path]) -> None:
    """On SIGHUP, read the certificate and key files again (a renewal wrote them): connections from then on
    are served with them. Files that do not load, or do not match, leave the certificate in use as it was."""
    cert, key = str(tls[0]), str(tls[1])
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            try:
                await trio.to_thread.run_sync(ssl.create_default_context().load_cert_chain, cert, key)  # a trial
                if config.context is not None:
                    config.context.load_cert_chain(cert, key)
                log.info("SIGHUP: serving with %s from now on", cert)
            except (OSError, ssl.SSLError) as exc:
                log.warning("SIGHUP: %s and %s did not load, the certificate in use stays: %s", cert, key, exc)


async def run_hub(
    db: Path,
    host: str,
    port: int,
    until: Callable[[], Awaitable[object]] | None = None,
    *,
    grace_ns: int = DEFAULT_GRACE_NS,
    edge_live_ns: int = EDGE_LIVE_NS,
    tls: tuple[Path, Path] | None = None,
    admit: Sequence[bytes] = (),
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``until()`` returns (default: SIGTERM or SIGINT); ``task_status.started(port)``.

    ``grace_ns``: how long a deleted or expired portal stays restorable before its objects are released.
    ``edge_live_ns``: how long an edge without a heartbeat stays in the directory.
    ``tls``: (certificate, key) PEM files: the API is served over HTTPS (devices pin the certificate).
    ``admit``: edge keys admitted at start (portald's embedded hub admits its own edge).
    """
    state = HubState(db, grace_ns, edge_live_ns)
    for key in admit:
        state.admit_edge(key, "", time.time_ns())
    config = _Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through logging alone, not also to stderr
    config.graceful_timeout = 5.0
    if tls is not None:
        config.certfile, config.keyfile = str(tls[0]), str(tls[1])
    stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            polls = LongPolls()
            app: Any = make_app(state, polls)
            binds = await nursery.start(
                lambda task_status: serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)
            )
            bound = int(binds[0].rsplit(":", 1)[1]) if binds else port
            if tls is not None:
                nursery.start_soon(_reload_on_hangup, config, tls)
            log.info("hub serving on %s:%d, state in %s", host, bound, db)
            task_status.started(bound)
            await (until or stop_signal)()
            polls.end()  # the event streams answer now: the server need not wait out its graceful timeout
            stop.set()
    finally:
        state.close()
