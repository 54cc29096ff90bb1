"""`put` and `get` handed to this device's portald when it runs (docs/design.md, section 16, "put and get in
portald"), before anything heavy is imported (``cli.front`` is the command's entry point); every other command,
and these where no portald answers, go on to ``portalctl``.

A command that portald runs starts in a few tens of milliseconds, not the few hundred that loading the
engine takes, and its reads and pushes go over the daemon's open connections to the hub and the edges. What
runs in portald: a put of files and folders (not of standard input) and a get, when no progress bar is to
be shown (``--json``, or standard error not a terminal: the bar is drawn by the process doing the work).

This module imports the standard library and the control socket's client alone, and holds what the two
processes say alike: the arguments of put and get, and the words of their answers.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ..daemon.control import call_daemon, daemon_socket
from ..errors import PortalError, SourceError, UsageError
from ..paths import DeviceHome

__all__ = [
    "handed_off",
    "run",
    "add_put_get",
    "check_source",
    "human",
    "edge_shares",
    "put_text",
    "get_text",
    "sync_line",
    "sync_failures",
    "put_answer",
    "emit",
]

HANDOFF_TIMEOUT = 24 * 3600.0  # seconds a put or get waits for portald's answer: as long as it works


def human(n: float) -> str:
    """Bytes for a person: 512 B, 1.5 KiB, 3.2 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def edge_shares(fetched: dict[str, Any] | None, rates: bool = False) -> str:
    """Which edges the bytes came from: each edge's share (or, with ``rates``, its rate now), most first."""
    edges = {name: f for name, f in ((fetched or {}).get("edges") or {}).items() if f.get("bytes")}
    total = sum(f["bytes"] for f in edges.values())
    ranked = sorted(edges.items(), key=lambda item: -item[1]["bytes"])
    if rates:
        return ", ".join(f"{name} {human(f.get('bytes_per_second') or 0)}/s" for name, f in ranked)
    return ", ".join(f"{name} {100 * f['bytes'] / total:.0f}%" for name, f in ranked)


def put_text(result: dict[str, Any]) -> str:
    name, version = result["portal"], result["version"]
    if result["unchanged"]:
        return f"{name} v{version}: unchanged, no new version"
    return (
        f"{name} v{version}: {result['files']} files, {human(result['bytes_read'] + result['bytes_reused'])} "
        f"({human(result['bytes_stored'])} new in store) in {result['seconds']:.1f}s"
    )


def get_text(name: str, dest: str, result: dict[str, Any]) -> str:
    shares = edge_shares(result.get("fetched"))
    return f"Restored {name} v{result['version']}: {result['files']} files, {human(result['bytes'])} into {dest}" + (
        f" (from the edges: {shares})" if shares else ""
    )


def sync_line(r: dict[str, Any]) -> str:
    return (
        f"{r['portal']}: v{r['version']} (pulled {r['pulled']}, published {r['published']}, "
        f"{r['objects']} objects pushed)"
        + _repaired(r.get("repair"))
        + ("; its read-write mount syncs it" if r.get("elsewhere") else "")
        + (f"; {r['underplaced']} objects wait for more edges (see the log)" if r.get("underplaced") else "")
    )


def _repaired(repair: dict[str, Any] | None) -> str:
    if not repair or "error" in repair:
        return ""
    return f"; repair checked {repair['checked']}, copied {repair['copied']}, damaged {repair.get('damaged', 0)}"


def sync_failures(results: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(portal, what failed) for each sync or repair that failed, each said on standard error."""
    failures = [(r["portal"], what) for r in results for what in (r, r.get("repair", {})) if "error" in what]
    for portal, what in failures:
        print(f"portalctl: {portal}: {what['error']}", file=sys.stderr)
    return failures


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket"}  # fmt: skip


def check_source(source: str) -> None:
    """A source that ``put`` can take: an existing, readable file, directory or symlink."""
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        raise SourceError(f"cannot read {source}: no such file or directory") from None
    except OSError as exc:
        raise SourceError(f"cannot read {source}: {exc.strerror}") from None
    kind = _KINDS.get(stat.S_IFMT(st.st_mode))
    if kind is not None:
        hint = f"; to store what it gives, `portalctl put NAME - --name FILE < {source}`" if kind == "a FIFO" else ""
        raise SourceError(f"cannot put {source}: it is {kind}, not a file, directory or symlink{hint}")
    if not os.access(source, os.R_OK):
        raise SourceError(f"cannot read {source}: permission denied")


def add_put_get(command: Callable[[str, Any, str], argparse.ArgumentParser], put: Any, get: Any) -> None:
    """The put and get subcommands, ``command(name, func, help)`` making each (with --json)."""
    c = command("put", put, "add files or folders to a portal as a new version (DIR/ adds DIR's contents)")
    c.add_argument("name")
    c.add_argument("sources", nargs="+", metavar="SRC", help="files or folders; - reads standard input")
    c.add_argument("--name", dest="name_for_stdin", metavar="FILE", help="the file name for standard input")
    c.add_argument("--sync", action="store_true", help="then sync the portal (as `portalctl sync NAME`)")
    c = command("get", get, "restore a portal, or one path of it, into DEST")
    c.add_argument("name")
    c.add_argument("dest")
    c.add_argument("--path", help="restore only this path of the portal")
    c.add_argument("--version", type=int, help="restore this version (default: the newest)")
    c.add_argument("--overwrite", action="store_true", help="replace existing files in DEST")


class _Declined(Exception):
    """The arguments are not this front's to judge: the full parser says what is wrong with them."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Declined(message)


def _arguments(argv: Sequence[str]) -> argparse.Namespace | None:
    """put's or get's arguments, if ``argv`` is one of them, well formed."""
    rest = list(argv)
    while rest[:1] == ["--passphrase-file"] or rest[:1] and rest[0].startswith("--passphrase-file="):
        rest = rest[1 if "=" in rest[0] else 2 :]  # portalctl's one option before the command
    if not rest or rest[0] not in ("put", "get") or "-h" in rest or "--help" in rest:
        return None
    parser = _Parser(prog="portalctl", add_help=False)
    parser.add_argument("--passphrase-file")  # the daemon holds the device unlocked
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = sub.add_parser(name, add_help=False)
        c.add_argument("--json", action="store_true")
        return c

    add_put_get(command, None, None)
    try:
        return parser.parse_args(argv)
    except _Declined:
        return None


def _request(args: argparse.Namespace) -> dict[str, Any] | None:
    """What portald is asked to do; None when this process does it (standard input, or a progress bar)."""
    if not args.json and sys.stderr.isatty():
        return None
    if args.command == "put":
        if "-" in args.sources:
            return None
        for source in args.sources:
            check_source(source)  # this process's view of them: named as the user wrote them
        here = os.getcwd()  # joined, not normalized: portald reads each as this process would ("dir/", "x/..")
        sources = [os.path.join(here, s) for s in args.sources]
        return {"op": "put", "name": args.name, "sources": sources, "sync": args.sync}
    dest = os.path.join(os.getcwd(), args.dest)
    return {"op": "get", "name": args.name, "dest": dest, "path": args.path, "version": args.version,
            "overwrite": args.overwrite}  # fmt: skip


def handed_off(argv: Sequence[str]) -> int | None:
    """Run put or get in this device's portald: the command's exit status, or None for this process to run it
    (another command, no portald, or a portald too old to take it)."""
    args = _arguments(argv)
    if args is None:
        return None
    try:
        request = _request(args)
        if request is None:
            return None
        result = call_daemon(daemon_socket(DeviceHome.from_environ().data), request, HANDOFF_TIMEOUT)
    except PortalError as exc:
        if isinstance(exc, UsageError) and str(exc).startswith("unknown request"):  # a portald from before put
            return None  # and get were its to run
        print(f"portalctl: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # the connection closes with this process: portald stops the command
        print("portalctl: interrupted", file=sys.stderr)
        return 130
    if result is None:
        return None
    for warning in result.pop("warnings", []):
        print(f"portalctl: warning: {warning}", file=sys.stderr)
    if args.command == "get":
        emit(args, result, get_text(args.name, str(Path(args.dest)), result))
        return 0
    return put_answer(args, result, [result["sync"]] if result.get("sync") else [])


def run(argv: Sequence[str], here: Callable[[Sequence[str]], int]) -> int:
    """portalctl: put and get in portald where it runs; everything else, and those where it does not,
    ``here``."""
    code = handed_off(argv)
    return code if code is not None else here(argv)


def put_answer(args: argparse.Namespace, result: dict[str, Any], synced: list[dict[str, Any]]) -> int:
    """Say what a put did, and its sync (``synced``: the sync's result, if it ran); the exit status."""
    failures = sync_failures(synced)
    emit(args, result, "\n".join([put_text(result), *(sync_line(r) for r in synced if "error" not in r)]))
    return int(failures[0][1]["exit_code"]) if failures else 0


def emit(args: argparse.Namespace, data: object, text: str) -> None:
    """The command's answer: ``data`` as JSON with --json, else ``text``."""
    print(json.dumps(data, sort_keys=True) if getattr(args, "json", False) else text)
