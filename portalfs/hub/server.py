"""portal-hub serve: the API on hypercorn's trio worker, SQLite state."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from ..net import stop_signal
from .app import make_app
from .state import DEFAULT_GRACE_NS, HubState

__all__ = ["run_hub"]

log = logging.getLogger("portal.hub")


async def run_hub(
    db: Path,
    host: str,
    port: int,
    until: Callable[[], Awaitable[object]] | None = None,
    *,
    grace_ns: int = DEFAULT_GRACE_NS,
    tls: tuple[Path, Path] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``until()`` returns (default: SIGTERM or SIGINT); ``task_status.started(port)``.

    ``grace_ns``: how long a deleted or expired portal stays restorable before its objects are released.
    ``tls``: (certificate, key) PEM files: the API is served over HTTPS (devices pin the certificate).
    """
    state = HubState(db, grace_ns)
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through logging alone, not also to stderr
    config.graceful_timeout = 5.0
    if tls is not None:
        config.certfile, config.keyfile = str(tls[0]), str(tls[1])
    stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            app: Any = make_app(state)
            binds = await nursery.start(
                lambda task_status: serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)
            )
            bound = int(binds[0].rsplit(":", 1)[1]) if binds else port
            log.info("hub serving on %s:%d, state in %s", host, bound, db)
            task_status.started(bound)
            await (until or stop_signal)()
            stop.set()
    finally:
        state.close()
