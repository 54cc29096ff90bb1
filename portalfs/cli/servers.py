"""portal-hub and portal-edge: argument parsing and logging around the servers."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio

from ..errors import NotFound, PortalError, UsageError, shown

__all__ = ["hub_main", "edge_main", "parse_size", "parse_duration"]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DURATION = re.compile(r"(\d{1,9})([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_SIZE = 2**63 - 1  # what SQLite and the protocols hold


def parse_duration(text: str, what: str = "") -> int:
    """``24h``, ``7d``, ``90m``, ``0s`` → nanoseconds; ``what`` names the option in the error."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise UsageError(f"{what + ' ' if what else ''}{shown(text)} is not a duration (try 30m, 24h or 7d)")
    return int(match[1]) * _UNIT_SECONDS[match[2]] * 10**9


def parse_size(text: str) -> int:
    """``10G``, ``512M``, ``4096`` → bytes."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    number = value[: len(value) - len(unit)]
    if not number.isdigit() or len(number) > 20:
        raise UsageError(f"{shown(text)} is not a size (try 512M or 10G)")
    size = int(number) * _UNITS[unit]
    if size > MAX_SIZE:
        raise UsageError(f"{shown(text)} is too large (at most 8E bytes, 2^63-1)")
    return size


def _listen(text: str) -> tuple[str, int]:
    from ..edge.client import parse_address

    try:
        return parse_address(text, any_port=True)
    except ValueError:
        raise UsageError(f"--listen {shown(text)}: expected HOST:PORT") from None


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("quic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)


def _run(prog: str, main: object) -> int:
    from ..memory import keep_freed_memory
    from ..net import one_error

    keep_freed_memory()  # objects pass through by the megabyte: reuse their buffers warm
    try:
        with one_error():  # a port in use is the OSError itself, not a group of nurseries around it
            trio.run(main)  # type: ignore[arg-type]
    except PortalError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"{prog}: {exc.strerror or exc}", file=sys.stderr)
        return 10 if exc.errno not in (98, 99, 13) else 2
    except KeyboardInterrupt:
        return 130
    return 0


def _run_sync(prog: str, command: Callable[[], int]) -> int:
    """An administrative command: its error in one line with its exit code."""
    try:
        return command()
    except PortalError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code


def _edge_key(text: str) -> bytes:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()):
        raise UsageError(f"{shown(text)} is not an edge key (64 hex digits, as `portal-edge key` prints it)")
    return bytes.fromhex(text.strip())


def _hub_edge(args: argparse.Namespace) -> int:
    """portal-hub edge approve|remove|ls: the operator's word on edges, written to the hub's database (a
    running hub reads it at each request)."""
    import time

    from ..hub.state import HubState

    key = _edge_key(args.key) if args.action in ("approve", "remove") else b""
    if not args.db.is_file():
        raise NotFound(f"{args.db}: no hub database there")
    state = HubState(args.db)
    try:
        now = time.time_ns()
        if args.action == "approve":
            state.admit_edge(key, args.operator, now)
            print(f"admitted edge {key.hex()}" + (f" run by {args.operator}" if args.operator else ""))
        elif args.action == "remove":
            if not state.remove_edge(key, now):
                raise NotFound(f"edge {key.hex()} is not admitted at this hub")
            print(f"removed edge {key.hex()}: it serves this hub's devices no more")
        else:
            rows = state.admissions(now)
            if args.json:
                print(json.dumps(rows, indent=2))
            for row in [] if args.json else rows:
                seen = "live" if row["live"] else ("never seen" if row["last_seen_ns"] is None else "not seen lately")
                print(f"{row['key']}  {row['state']:<8}  {row['operator'] or '-':<16}  {row['address'] or '-'}  "
                      f"{seen}")  # fmt: skip
    finally:
        state.close()
    return 0


def _tls(cert: Path | None, key: Path | None) -> tuple[Path, Path] | None:
    if (cert is None) != (key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if cert is None or key is None:
        return None
    for path in (cert, key):
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
    return cert, key


def _read_pem(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--hub-cert {path}: {getattr(exc, 'strerror', None) or exc}") from None


def hub_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portal-hub", description="Portal's coordination server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the hub API")
    serve.add_argument("--db", required=True, type=Path, help="SQLite file (created if missing)")
    serve.add_argument("--listen", default="127.0.0.1:8470", help="HOST:PORT (default 127.0.0.1:8470)")
    serve.add_argument(
        "--grace",
        default="7d",
        help="how long a deleted or expired portal can be restored before its objects are released (default 7d)",
    )
    serve.add_argument("--edge-timeout", default="60s",
                       help="an edge silent this long leaves the directory devices get (default 60s)")  # fmt: skip
    serve.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve over HTTPS with this certificate")
    serve.add_argument("--tls-key", type=Path, metavar="PEM", help="... and this private key")
    serve.add_argument("-v", "--verbose", action="store_true")
    edge = sub.add_parser("edge", help="admit, list and remove the storage edges that serve this hub's devices")
    edge_sub = edge.add_subparsers(dest="action", required=True)
    approve = edge_sub.add_parser("approve", help="admit an edge by its key (`portal-edge key` prints it)")
    approve.add_argument("key", help="the edge's key, 64 hex digits")
    approve.add_argument("--operator", default="", help="who runs it: copies are spread across operators")
    remove = edge_sub.add_parser("remove", help="take an edge's admission back")
    remove.add_argument("key", help="the edge's key, 64 hex digits")
    listing = edge_sub.add_parser("ls", help="admitted edges, removed ones, and those waiting to be admitted")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    for command in (approve, remove, listing):
        command.add_argument("--db", required=True, type=Path, help="the hub's SQLite file")
    args = parser.parse_args(argv)
    if args.command == "edge":
        return _run_sync("portal-hub", lambda: _hub_edge(args))
    try:
        host, port = _listen(args.listen)
        grace_ns = parse_duration(args.grace, "--grace")
        edge_live_ns = parse_duration(args.edge_timeout, "--edge-timeout")
        tls = _tls(args.tls_cert, args.tls_key)
    except UsageError as exc:
        parser.error(str(exc))
    _logging(args.verbose)
    from ..hub.server import run_hub

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            serve = partial(run_hub, args.db, host, port, grace_ns=grace_ns, edge_live_ns=edge_live_ns, tls=tls)
            bound = await nursery.start(serve)
            print(f"portal-hub: serving {'https' if tls else 'http'}://{host}:{bound}/v1/", flush=True)

    return _run("portal-hub", main)


def edge_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portal-edge", description="Portal's storage edge")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the edge protocol over QUIC and TLS/TCP")
    serve.add_argument("--data", required=True, type=Path, help="directory for the key and the object store")
    serve.add_argument("--listen", default="0.0.0.0:8471", help="HOST:PORT, UDP for QUIC and TCP (default :8471)")
    serve.add_argument("--hub", help="hub URL: register, heartbeat, and admit only its enrolled devices")
    serve.add_argument("--hub-cert", type=Path, metavar="PEM",
                       help="an https hub's certificate: accept only it (default: the system's CAs)")  # fmt: skip
    serve.add_argument("--quota", default="0", help="bytes each identity may store, e.g. 10G (default: no limit)")
    serve.add_argument("--capacity", default="0", help="bytes this edge may store in all (default: the disk)")
    serve.add_argument("--transport", default="quic,tcp", help="quic, tcp or both (default quic,tcp)")
    serve.add_argument("--quic", choices=["qh3", "aioquic"], help="QUIC library (default: qh3 when installed)")
    serve.add_argument("--scrub-rate", default="16M", help="bytes a second the scrub reads (default 16M; 0: off)")
    serve.add_argument("--scrub-interval", default="1d", help="time between scrub passes (default 1d)")
    serve.add_argument("--gc-interval", default="60s", help="time between garbage passes (default 60s)")
    serve.add_argument("--heartbeat", default="10s",
                       help="time between registrations at the hub (default 10s; the hub's --edge-timeout must be "
                            "longer)")  # fmt: skip
    serve.add_argument("--gc-hold", default="120s", help="how long condemned objects wait (default 120s; "
                       "less than twice a device's 60 s trust in a HAVE answer can lose objects)")  # fmt: skip
    serve.add_argument("-v", "--verbose", action="store_true")
    key = sub.add_parser("key", help="print this edge's key (made if new), for the hub's operator to admit")
    key.add_argument("--data", required=True, type=Path, help="the edge's data directory")
    args = parser.parse_args(argv)
    if args.command == "key":
        return _run_sync("portal-edge", lambda: _print_edge_key(args.data))
    try:
        host, port = _listen(args.listen)
        transports = tuple(t.strip() for t in args.transport.split(",") if t.strip())
        if not transports or set(transports) - {"quic", "tcp"}:
            raise UsageError(f"--transport {args.transport!r}: use quic, tcp or quic,tcp")
        quota, capacity = parse_size(args.quota), parse_size(args.capacity)
        hub_cert = _read_pem(args.hub_cert)
        scrub_rate = parse_size(args.scrub_rate)
        scrub_interval, gc_interval, gc_hold, heartbeat = (
            parse_duration(text, what) / 1e9
            for text, what in (
                (args.scrub_interval, "--scrub-interval"),
                (args.gc_interval, "--gc-interval"),
                (args.gc_hold, "--gc-hold"),
                (args.heartbeat, "--heartbeat"),
            )
        )
    except UsageError as exc:
        parser.error(str(exc))
    _logging(args.verbose)
    from ..edge.server import EdgeConfig, run_edge

    config = EdgeConfig(
        args.data, host, port, transports, quota, capacity, args.hub, args.quic,
        gc_interval=max(gc_interval, 1.0), gc_hold=gc_hold, scrub_rate=scrub_rate,
        scrub_interval=max(scrub_interval, 1.0), hub_cert=hub_cert, heartbeat=max(heartbeat, 0.5),
    )  # fmt: skip

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            key, bound = await nursery.start(run_edge, config)
            print(f"portal-edge: serving {host}:{bound} key {key.hex()}", flush=True)

    return _run("portal-edge", main)


def _print_edge_key(data: Path) -> int:
    from ..net.tls import EdgeKey

    try:
        data.mkdir(parents=True, exist_ok=True)
        print(EdgeKey.load_or_create(data).public.hex())
    except OSError as exc:
        raise UsageError(f"--data {data}: {exc.strerror or exc}") from None
    return 0


def _main() -> int:
    """``python -m portalfs.cli.servers hub|edge ...`` (what the tests run)."""
    program, rest = sys.argv[1], sys.argv[2:]
    return hub_main(rest) if program == "hub" else edge_main(rest)


if __name__ == "__main__":
    sys.exit(_main())
