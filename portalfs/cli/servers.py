"""portal-hub and portal-edge: argument parsing and logging around the servers."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import trio

from ..errors import PortalError, UsageError

__all__ = ["hub_main", "edge_main", "parse_size"]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``10G``, ``512M``, ``4096`` → bytes."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    number = value[: len(value) - len(unit)]
    if not number.isdigit():
        raise UsageError(f"{text!r} is not a size (try 512M or 10G)")
    return int(number) * _UNITS[unit]


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


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


def hub_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portal-hub", description="Portal's coordination server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the hub API")
    serve.add_argument("--db", required=True, type=Path, help="SQLite file (created if missing)")
    serve.add_argument("--listen", default="127.0.0.1:8470", help="HOST:PORT (default 127.0.0.1:8470)")
    serve.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        host, port = _listen(args.listen)
    except UsageError as exc:
        parser.error(str(exc))
    _logging(args.verbose)
    from ..hub.server import run_hub

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(run_hub, args.db, host, port)
            print(f"portal-hub: serving http://{host}:{bound}/v1/", flush=True)

    return _run("portal-hub", main)


def edge_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portal-edge", description="Portal's storage edge")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the edge protocol over QUIC and TLS/TCP")
    serve.add_argument("--data", required=True, type=Path, help="directory for the key and the object store")
    serve.add_argument("--listen", default="0.0.0.0:8471", help="HOST:PORT, UDP for QUIC and TCP (default :8471)")
    serve.add_argument("--hub", help="hub URL: register, heartbeat, and admit only its enrolled devices")
    serve.add_argument("--quota", default="0", help="bytes each identity may store, e.g. 10G (default: no limit)")
    serve.add_argument("--capacity", default="0", help="bytes this edge may store in all (default: the disk)")
    serve.add_argument("--transport", default="quic,tcp", help="quic, tcp or both (default quic,tcp)")
    serve.add_argument("--quic", choices=["qh3", "aioquic"], help="QUIC library (default: qh3 when installed)")
    serve.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        host, port = _listen(args.listen)
        transports = tuple(t.strip() for t in args.transport.split(",") if t.strip())
        if not transports or set(transports) - {"quic", "tcp"}:
            raise UsageError(f"--transport {args.transport!r}: use quic, tcp or quic,tcp")
        quota, capacity = parse_size(args.quota), parse_size(args.capacity)
    except UsageError as exc:
        parser.error(str(exc))
    _logging(args.verbose)
    from ..edge.server import EdgeConfig, run_edge

    config = EdgeConfig(args.data, host, port, transports, quota, capacity, args.hub, args.quic)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            key, bound = await nursery.start(run_edge, config)
            print(f"portal-edge: serving {host}:{bound} key {key.hex()}", flush=True)

    return _run("portal-edge", main)


def _main() -> int:
    """``python -m portalfs.cli.servers hub|edge ...`` (what the tests run)."""
    program, rest = sys.argv[1], sys.argv[2:]
    return hub_main(rest) if program == "hub" else edge_main(rest)


if __name__ == "__main__":
    sys.exit(_main())
