"""portald: keep this device's portals in sync with its hub and edges, in the foreground (a service's main)."""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from ..device import Device
from ..errors import PortalBusy, UsageError
from ..net import one_error
from ..runtime import hosting
from .common import run_command, unlock

__all__ = ["main"]


@contextmanager
def _only_daemon(lock_path: Path) -> Iterator[None]:
    """Hold ``lock_path`` for the daemon's life: one portald per device."""
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip()
            raise PortalBusy(f"portald is already running for this device (pid {owner or '?'})") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def _serve(device: Device, args: argparse.Namespace) -> int:
    from ..daemon.embedded import wanted
    from ..daemon.service import SyncDaemon
    from ..fabric.config import load_config

    if args.interval <= 0:
        raise UsageError("--interval must be a positive number of seconds")
    secrets = unlock(device, args)
    embedded = None if args.no_embedded else wanted(load_config(device), args.listen)
    daemon = SyncDaemon(
        device, secrets, interval=args.interval, embedded=embedded, scrub_rate=args.scrub_rate,
        scrub_interval=args.scrub_interval, edge_grace=args.edge_grace,
    )  # fmt: skip

    async def main() -> None:
        async with hosting(), trio.open_nursery() as nursery:  # the process's one loop (portalfs.runtime)
            await nursery.start(daemon.run)
            where = f", embedded hub {daemon.embedded_hub}" if daemon.embedded_hub else ""
            print(f"portald: ready, control socket {daemon.socket}{where}", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                async for signum in signals:
                    logging.getLogger("portal.daemon").info("%s: stopping", signal.Signals(signum).name)
                    break
            nursery.cancel_scope.cancel()

    with _only_daemon(device.home.data / "portald.lock"), one_error():
        trio.run(main)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="portald",
        description="Keep this device's portals in sync: push new versions to the edges and publish them, "
        "pull the versions the hub announces. Runs in the foreground; stop it with SIGTERM.",
    )
    parser.add_argument("--interval", type=float, default=60.0, metavar="SECONDS",
                        help="sync each portal at least this often (default 60)")  # fmt: skip
    parser.add_argument("--listen", metavar="ADDRESS",
                        help="where the embedded hub and edge listen, for other devices to join "
                        "(default 127.0.0.1: this device alone)")  # fmt: skip
    parser.add_argument("--no-embedded", action="store_true",
                        help="on a device with no hub, wait for `portalctl hub add` instead of running "
                        "an embedded hub and edge")  # fmt: skip
    parser.add_argument("--passphrase-file", metavar="FILE", help="the passphrase protecting this device's keys")
    parser.add_argument("--scrub-rate", default="16M",
                        help="bytes a second the scrub of this device's store reads (default 16M; 0: off)")  # fmt: skip
    parser.add_argument("--scrub-interval", default="1d", help="time between scrub passes (default 1d)")
    parser.add_argument("--edge-grace", default="10m",
                        help="an edge the hub stopped listing this long is down: what it held is copied to the "
                        "others (default 10m)")  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    from .servers import parse_duration, parse_size

    try:
        args.scrub_rate = parse_size(args.scrub_rate)
        args.scrub_interval = max(parse_duration(args.scrub_interval, "--scrub-interval") / 1e9, 1.0)
        args.edge_grace = parse_duration(args.edge_grace, "--edge-grace") / 1e9
    except UsageError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "quic", "portal.net", "hypercorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return run_command("portald", lambda device: _serve(device, args))


if __name__ == "__main__":
    sys.exit(main())
