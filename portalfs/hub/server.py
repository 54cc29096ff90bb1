"""portal-hub serve: the API on hypercorn's trio worker, SQLite state."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from .app import make_app
from .state import HubState

__all__ = ["run_hub"]

log = logging.getLogger("portal.hub")


async def run_hub(
    db: Path, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until SIGTERM or SIGINT; ``task_status.started(port)``."""
    state = HubState(db)
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.graceful_timeout = 5.0
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
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
            stop.set()
    finally:
        state.close()
