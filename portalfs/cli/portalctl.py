"""portalctl: keys, portals, ingest and restore from the command line.

Output is for people when stdout is a terminal and quiet and parseable
otherwise; `--json` gives machine-readable output where it helps. Every
failure is one line on stderr and a stable exit code (docs/design.md, "Exit codes").
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import __version__
from ..daemon.control import call_daemon, daemon_socket  # no trio: that is the server's
from ..device import Device
from ..errors import NotFound, PortalBusy, PortalError, UsageError
from ..gc import collect_garbage
from ..keys import fingerprint, new_entropy_words
from ..portal import PortalView
from ..restore import Restorer
from ..transfer import get_into, get_target, put_sources
from ..tree import validate_name
from ..worktree.journal import writing
from . import conflict_cmds, fabric_parser
from .common import emit, human, on_fabric, open_view, read_secret_file, run_command, unlock, unlock_passphrase
from .handoff import add_put_get, check_source, edge_shares, get_text, put_answer, run

NUDGE_TIMEOUT = 2.0  # seconds for portald to take "look now"

__all__ = ["main"]


def _new_passphrase(args: argparse.Namespace) -> str | None:
    """The passphrase that will protect a new key file (None: unprotected)."""
    if args.passphrase_file:
        return read_secret_file(args.passphrase_file, "passphrase") or None
    if os.environ.get("PORTAL_PASSPHRASE"):
        return os.environ["PORTAL_PASSPHRASE"]
    if sys.stdin.isatty() and not getattr(args, "no_passphrase", False):
        first = getpass.getpass("Passphrase to protect the keys on this device (empty for none): ")
        if first and getpass.getpass("Again: ") != first:
            raise UsageError("the two passphrases differ")
        return first or None
    return None


def _bip39_passphrase(args: argparse.Namespace) -> str:
    if args.bip39_passphrase_file:
        return read_secret_file(args.bip39_passphrase_file, "BIP-39 passphrase")
    return ""


@contextmanager
def _progress(
    total: int | None, enabled: bool, unit: str = "B", postfix: Callable[[], str] | None = None
) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal (else nothing); ``postfix``, asked at most once a second, is shown beside it."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit=unit, unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=False) as bar:
        said = 0.0

        def update(n: int) -> None:
            nonlocal said
            bar.update(n)
            if postfix is not None and time.monotonic() - said >= 1.0:
                said = time.monotonic()
                bar.set_postfix_str(postfix(), refresh=False)

        yield update


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _source_size(sources: Sequence[Path]) -> int:
    total = 0
    for source in sources:
        if source.is_file():
            total += source.stat().st_size
        for root, _, files in os.walk(source):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except OSError:
                    pass
    return total


# commands


def cmd_init(device: Device, args: argparse.Namespace) -> int:
    device.require_uninitialized()
    words = new_entropy_words(os.urandom(32))
    identity = device.create_identity(
        words, _bip39_passphrase(args), _new_passphrase(args), args.name, time.time_ns(), args.keep_root
    )
    if args.json:
        print(json.dumps({"fingerprint": identity.fingerprint, "words": words.split()}))
        return 0
    print("Your recovery phrase. Write these 24 words down and keep them safe: they are the only")
    print("way to recover this identity, and they will not be shown again.\n")
    for i, word in enumerate(words.split(), 1):
        print(f"{i:2}. {word}")
    print(f"\nIdentity: {identity.fingerprint}")
    return 0


def cmd_recover(device: Device, args: argparse.Namespace) -> int:
    device.require_uninitialized()
    if sys.stdin.isatty():
        words = getpass.getpass("Recovery phrase (24 words): ")
    else:
        words = sys.stdin.read()
    identity = device.create_identity(
        words, _bip39_passphrase(args), _new_passphrase(args), args.name, time.time_ns(), args.keep_root
    )
    emit(args, {"fingerprint": identity.fingerprint}, f"Recovered identity {identity.fingerprint}")
    return 0


JOIN_SECONDS = 600  # how long `join` waits for the approval (the hub keeps a request as long)


def cmd_join(device: Device, args: argparse.Namespace) -> int:
    """Become a device of an identity by an approval from one of its devices: no words on this one."""
    from ..errors import BadSignature, IntegrityError, NotFound
    from ..fabric.config import FabricConfig, save_config
    from ..fabric.sync import Fabric
    from ..hub.client import HubClient
    from ..keys import DeviceCertificate, DeviceKey
    from ..provisioning import box_public, code, new_box, open_keys
    from .fabric_cmds import _identity_arg, _pin_or_warn, hub_url

    device.require_uninitialized()
    url = hub_url(args.url)
    identity = _identity_arg(args.identity)
    config = FabricConfig(hub=url)
    _pin_or_warn(config, url)
    key, box = DeviceKey(os.urandom(32)), new_box()
    hub = HubClient(url, key, config.hub_cert)
    try:
        request = hub.request_provisioning(box_public(box))
        shown = code(request, key.public, box_public(box))
        if args.json:
            print(json.dumps({"code": shown, "identity": identity.hex()}), flush=True)
        else:
            print(f"On a device of identity {fingerprint(identity)}, run:\n\n  portalctl device approve {shown}\n",
                  flush=True)  # fmt: skip
        deadline = time.monotonic() + min(args.wait, JOIN_SECONDS)
        while (answer := hub.provisioning_answer(request)) is None:
            if time.monotonic() > deadline:
                raise NotFound(f"no device approved {shown} within {min(args.wait, JOIN_SECONDS)} s")
            time.sleep(1.0)
    finally:
        hub.close()
    cert, sealed = answer
    try:
        fields = DeviceCertificate.from_bytes(cert).verify(identity)
    except BadSignature:
        raise IntegrityError(f"the approval came from another identity than {fingerprint(identity)}: refused") from None
    keys, handed = open_keys(box, sealed, key.public)
    if fields.get("device") != key.public or keys.public != identity:
        raise IntegrityError("the approval is for another device or identity: refused")
    device.create_approved(keys, key, cert, _new_passphrase(args), time.time_ns(), handed)
    fabric = Fabric(device, unlock(device, args), config)
    try:
        result = fabric.join()
        save_config(device, fabric.config)
    finally:
        fabric.close()
    if not args.json:
        print(f"This device is now one of identity {fingerprint(identity)}; portals: "
              f"{', '.join(result['portals_added']) or 'none'}")  # fmt: skip
    return 0


def cmd_forget_root(device: Device, args: argparse.Namespace) -> int:
    """A device made before the root was left off key files keeps it: drop it (the words stay the way back)."""
    device.require_initialized()
    passphrase = None
    if device.needs_passphrase():
        passphrase = unlock_passphrase(args)
    dropped = device.forget_root(passphrase)
    text = "this device no longer keeps the identity's root" if dropped else "this device keeps no root"
    emit(args, {"root_kept": False, "dropped": dropped}, text)
    return 0


def cmd_whoami(device: Device, args: argparse.Namespace) -> int:
    info = device.whoami()
    emit(
        args,
        info,
        f"identity {info['fingerprint']}\n"
        f"key      {info['identity']}   (what `portalctl share --with` takes)\n"
        f"device   {info['device'][:16]} ({info['device_name']})\n"
        f"home     {info['home']}",
    )
    return 0


def cmd_portal_create(device: Device, args: argparse.Namespace) -> int:
    secrets = unlock(device, args)
    with device.exclusive():
        row = device.create_portal(args.name, secrets, time.time_ns())
    emit(args, {"name": row.name, "id": row.id.hex()}, f"Created portal {row.name}")
    return 0


def cmd_portal_ls(device: Device, args: argparse.Namespace) -> int:
    device.require_initialized()
    rows: list[dict[str, Any]] = []
    for row in device.state.portals():
        head = device.state.head(row.id)
        rows.append(
            {
                "name": row.name,
                "id": row.id.hex(),
                "versions": 0 if head is None else head.version,
                "size": 0 if head is None else head.size,
                "files": 0 if head is None else head.files,
                "created": row.created_ns,
                "deleted_until": device.state.deleted_until(row.id),
            }
        )
    if args.json:
        print(json.dumps(rows, sort_keys=True))
    else:
        for r in rows:
            line = f"{r['name']}\t{r['versions']} versions\t{r['files']} files\t{human(r['size'])}"
            if r["deleted_until"] is not None:
                line += f"\tdeleted (restorable until {_when(r['deleted_until'])})"
            print(line)
    return 0


def cmd_put(device: Device, args: argparse.Namespace) -> int:
    secrets = unlock(device, args)
    stream = None
    if "-" in args.sources:
        if args.sources.count("-") > 1 or not args.name_for_stdin:
            raise UsageError("'-' (standard input) may appear once, with --name FILE to name it")
        try:
            stream = (validate_name(os.fsencode(args.name_for_stdin)), sys.stdin.buffer)
        except ValueError as exc:
            raise UsageError(f"--name {args.name_for_stdin!r}: {exc}") from None
        args.sources = [s for s in args.sources if s != "-"]
    for source in args.sources:
        check_source(source)
    if args.sync:
        from .fabric_cmds import hub_config

        hub_config(device)  # refused before the put, not after it
    show = not args.json
    view = open_view(device, secrets, args.name)  # an unchanged file's chunks may be on the edges alone
    total = _source_size([Path(s) for s in args.sources]) if show and sys.stderr.isatty() else None
    with _progress(total, show) as progress:
        result = put_sources(
            view,
            secrets,
            args.sources,
            stream=stream,
            progress=progress,
            warn=lambda msg: print(f"portalctl: warning: {msg}", file=sys.stderr),
        )
    if not args.sync:
        return put_answer(args, result, [])
    from .fabric_cmds import sync_portals

    synced = sync_portals(device, args, [args.name], False, secrets)  # portald's, or here with these secrets
    result["sync"] = synced[0] if synced else None
    return put_answer(args, result, synced)


def cmd_get(device: Device, args: argparse.Namespace) -> int:
    secrets = unlock(device, args)
    view = open_view(device, secrets, args.name, keep=False)  # what is written out is not kept twice
    dest = Path(args.dest)
    target = get_target(view, dest, args.version, args.path)
    version, entry = target
    store = on_fabric(view)
    per_edge = None if store is None else (lambda: edge_shares(store.fetched(), rates=True))
    with _progress(entry.size if entry.is_file else version.size, not args.json, postfix=per_edge) as progress:
        result = get_into(view, target, dest, overwrite=args.overwrite, progress=progress)
    fetched = None if store is None else store.fetched()
    if fetched is not None:  # what came from the edges, and from which
        result["fetched"] = fetched
    emit(args, result, get_text(args.name, str(dest), result))
    return 0


def cmd_log(device: Device, args: argparse.Namespace) -> int:
    device.require_initialized()
    row = device.state.portal(args.name)
    names = device.state.device_names()
    versions = device.state.versions(row.id)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "version": v.version,
                        "time": v.time_ns,
                        "device": v.device.hex(),
                        "device_name": names.get(v.device, ""),
                        "size": v.size,
                        "files": v.files,
                        "id": v.record.record_id.hex(),
                    }
                    for v in versions
                ],
                sort_keys=True,
            )
        )
        return 0
    if not versions:
        print(f"{args.name}: no versions yet")
    for v in reversed(versions):
        device_name = names.get(v.device, v.device.hex()[:16])
        print(f"v{v.version}\t{_when(v.time_ns)}\t{device_name}\t{v.files} files\t{human(v.size)}")
    return 0


def cmd_check(device: Device, args: argparse.Namespace) -> int:
    """Verify every version, node and chunk; a damaged local object is replaced from the edges.

    With ``--repair``, then bring every object back to R intact copies on the edges (as ``sync --repair``).
    """

    secrets = unlock(device, args)
    view = open_view(device, secrets, args.name, keep=False)  # each object is read once
    fabric_store = on_fabric(view)
    report = view.verify()
    healed = 0 if fabric_store is None else fabric_store.healed
    result: dict[str, Any] = {
        "versions": report.versions,
        "nodes": report.nodes,
        "chunks": report.chunks,
        "bytes": report.bytes,
        "healed": healed,
    }
    text = (
        f"{args.name}: {report.versions} versions, {report.nodes} nodes, {report.chunks} chunks "
        f"({human(report.bytes)}) verified"
        + (f"; {healed} damaged local objects replaced from the edges" if healed else "")
    )
    if args.repair:
        if fabric_store is None:
            raise UsageError("--repair puts copies back on the edges: this device has no hub (`portalctl hub add`)")
        from .fabric_cmds import open_fabric

        fabric = open_fabric(device, secrets)
        try:
            result["repair"] = repair = fabric.repair(view)
        finally:
            fabric.close()
        text += (
            f"\nedges: {repair['checked']} objects checked, {repair['damaged']} damaged copies found, "
            f"{repair['copied']} copies made"
        )
    emit(args, result, text)
    return 0


def cmd_gc(device: Device, args: argparse.Namespace) -> int:
    secrets = unlock(device, args)
    report = collect_garbage(device, secrets, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    forgotten = f"; {verb} the deleted portals {', '.join(report.portals_removed)}" if report.portals_removed else ""
    emit(
        args,
        {"live": report.live, "removed": report.removed, "bytes_freed": report.bytes_freed, "dry_run": args.dry_run,
         "portals_removed": report.portals_removed},
        f"{report.live} live objects; {verb} {report.removed} ({human(report.bytes_freed)}){forgotten}",
    )  # fmt: skip
    return 0


def cmd_cache(device: Device, args: argparse.Namespace) -> int:
    """What this device keeps of the objects it fetched from the edges: show it, set its limit, drop it."""
    from ..fabric.cache import FetchCache, cache_limit, set_cache_limit
    from .servers import parse_size

    device.require_initialized()
    if args.limit is not None:
        set_cache_limit(device, parse_size(args.limit))
    local = device.store_local
    cache = FetchCache(local.root / "fetched.db", cache_limit(device), local.delete)
    try:
        dropped = cache.shrink(0) if args.drop else cache.trim()  # a lower limit takes effect at once
        stats = cache.statistics()
    except sqlite3.OperationalError as exc:  # the store's index is held by a writer: a mount, a put, portald
        raise PortalBusy(f"the local store is in use ({exc}): unmount this device's portals and try again") from None
    finally:
        cache.close()
    limit = human(stats["limit"]) if stats["limit"] else "no limit"
    emit(
        args,
        {**stats, "dropped": dropped},
        f"fetched and kept: {stats['objects']} objects, {human(stats['bytes'])} (limit {limit})"
        + (f"; dropped {dropped}" if dropped else ""),
    )
    return 0


def _demo_mountpoint(device: Device) -> Path:
    if os.environ.get("PORTAL_HOME"):
        return device.home.data / "mnt" / "demo"
    return Path.home() / "Portal" / "demo"


def cmd_demo(device: Device, args: argparse.Namespace) -> int:
    """The main job on the embedded default: identity, portal 'demo' with a folder in it, mounted."""
    from ..mount.runner import is_mounted
    from .portalfs import mount

    if not device.initialized:
        words = new_entropy_words(os.urandom(32))
        identity = device.create_identity(words, "", None, None, time.time_ns())
        print("Created a new identity. Its recovery phrase (write it down; shown once):\n")
        print("  " + " ".join(words.split()[:12]))
        print("  " + " ".join(words.split()[12:]) + "\n")
        print(f"Identity: {identity.fingerprint}")
    secrets = unlock(device, args)
    source = Path(args.source) if args.source else Path(__file__).resolve().parent.parent
    mountpoint = _demo_mountpoint(device)
    if is_mounted(mountpoint):
        print(f"Portal 'demo' is already mounted at {mountpoint}")
    else:
        with device.exclusive():
            try:
                device.state.portal("demo")
            except NotFound:
                device.create_portal("demo", secrets, time.time_ns())
                print("Created portal 'demo'")
        view = PortalView.open(device, "demo", secrets)
        with writing(view, secrets, "demo"):
            with device.exclusive():
                version, stats = view.put(secrets, [str(source)], time.time_ns())
        size = human(stats.bytes_read + stats.bytes_reused)
        change = "unchanged since" if stats.unchanged else "into"
        print(f"Put {source} {change} demo v{version.version}: {stats.files} files, {size}")
        mountpoint.mkdir(parents=True, exist_ok=True)
        mount_args = argparse.Namespace(
            target="demo",
            mountpoint=str(mountpoint),
            foreground=False,
            ready_fd=None,
            options="",
            passphrase_file=args.passphrase_file,
        )
        mount(device, mount_args, [])
    print("\n$ portalctl log demo")
    args.name = "demo"
    args.json = False
    cmd_log(device, args)
    print(f"\nBrowse it: ls {mountpoint}\nUnmount it: portalctl unmount {mountpoint}")
    return 0


def cmd_restore(device: Device, args: argparse.Namespace) -> int:
    """Bring PATH back as it was in version V: through the mount if mounted, else as a new version."""
    from .portalfs import live_mounts

    secrets = unlock(device, args)
    view = open_view(device, secrets, args.name)
    old = view.lookup(view.root(view.version(args.version)).entry, args.path)
    relative = args.path.strip("/")
    mounts = [m for m in live_mounts(device) if m["portal"] == args.name and m["writable"]]
    if mounts:
        dest = Path(mounts[0]["mountpoint"]) / relative
        Restorer(view, overwrite=True).restore(old, dest)
        emit(
            args,
            {"path": relative, "from": args.version, "mount": str(dest)},
            f"Restored {relative} from v{args.version} at {dest}",
        )
        return 0
    with writing(view, secrets, f"restore {args.name}"):
        with device.exclusive():
            new = view.graft(secrets, relative, old, time.time_ns())
    emit(
        args,
        {"path": relative, "from": args.version, "version": new.version},
        f"Restored {relative} from v{args.version} as {args.name} v{new.version}",
    )
    return 0


def cmd_mount(device: Device, args: argparse.Namespace) -> int:
    from .portalfs import mount

    device.require_initialized()
    args.target, args.foreground, args.ready_fd = args.name, False, None
    return mount(device, args, [o for o in args.options.split(",") if o])


def cmd_unmount(device: Device, args: argparse.Namespace) -> int:
    from .portalfs import unmount

    return unmount(device, args.mountpoint)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="portalctl", description="Manage Portal keys, portals and versions.")
    p.add_argument("--version", action="version", version=f"portalctl {__version__}")
    p.add_argument("--passphrase-file", metavar="FILE", help="read the key-file passphrase from FILE")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str,
        func: Callable[[Device, argparse.Namespace], int],
        help: str,
        parent: Any = sub,
        json_flag: bool = True,
    ) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        c.set_defaults(func=func)
        if json_flag:
            c.add_argument("--json", action="store_true", help="machine-readable output")
        return c

    for name, func, help in (
        ("init", cmd_init, "create a new identity on this device and show its recovery phrase"),
        ("recover", cmd_recover, "re-create an identity from its recovery phrase (stdin when not a terminal)"),
    ):
        c = command(name, func, help)
        c.add_argument("--name", help="this device's name (default: the host name)")
        c.add_argument("--no-passphrase", action="store_true", help="do not ask for a passphrase")
        c.add_argument("--bip39-passphrase-file", metavar="FILE", help="the optional BIP-39 passphrase")
        c.add_argument("--keep-root", action="store_true", help="keep the identity's root on this device, under "
                       "the passphrase, to revoke devices and grant write without the words")  # fmt: skip
    c = command("join", cmd_join, "become a device of an identity by an approval from one of its devices "
                "(shows a code for `portalctl device approve`)")  # fmt: skip
    c.add_argument("url", help="the hub, http(s)://HOST:PORT")
    c.add_argument("--identity", required=True, help="the identity's key (`portalctl whoami` on one of its devices)")
    c.add_argument("--no-passphrase", action="store_true", help="do not ask for a passphrase")
    c.add_argument("--wait", type=int, default=JOIN_SECONDS, help="seconds to wait for the approval (at most 600)")
    command("whoami", cmd_whoami, "show the identity fingerprint and this device")
    command("forget-root", cmd_forget_root, "drop the identity's root from this device's key file (the 24 words "
            "are then asked where the identity signs: revoking a device, granting write)")  # fmt: skip

    portal = sub.add_parser("portal", help="create and list portals").add_subparsers(
        dest="portal_command", required=True, metavar="COMMAND"
    )
    c = command("create", cmd_portal_create, "create an empty portal", parent=portal)
    c.add_argument("name")
    command("ls", cmd_portal_ls, "list portals", parent=portal)
    fabric_parser.register_portal_set(portal, command)

    add_put_get(command, cmd_put, cmd_get)
    c = command("log", cmd_log, "list a portal's versions")
    c.add_argument("name")
    c = command("restore", cmd_restore, "bring one file or folder of a portal back as it was in an earlier version")
    c.add_argument("name")
    c.add_argument("path")
    c.add_argument("--version", type=int, required=True, help="the version to bring it back from")
    c = command("check", cmd_check, "verify every version, node and chunk of a portal")
    c.add_argument("name")
    c.add_argument("--repair", action="store_true", help="then put every object back on R intact edge copies")
    c = command("gc", cmd_gc, "remove stored objects no version uses")
    c.add_argument("--dry-run", action="store_true", help="only count what would be removed")
    c = command("cache", cmd_cache, "show, limit or drop what this device keeps of the objects it fetched")
    c.add_argument("--limit", metavar="SIZE", help="keep at most SIZE of them, e.g. 20G (0: no limit; default 10G)")
    c.add_argument("--drop", action="store_true", help="delete them all now (each is fetched again when read)")
    c = command(
        "mount", cmd_mount, "mount a portal (NAME or NAME@VERSION, read-only) at DIR in the background", json_flag=False
    )
    c.add_argument("name", metavar="NAME[@VERSION]")
    c.add_argument("mountpoint", metavar="DIR")
    c.add_argument("-o", dest="options", default="", help="comma-separated mount options")
    c = command("unmount", cmd_unmount, "unmount a portal mounted at DIR", json_flag=False)
    c.add_argument("mountpoint", metavar="DIR")
    fabric_parser.register(sub, command)
    conflict_cmds.register(sub, command)
    c = command("demo", cmd_demo, "create an identity if needed, put a folder into portal 'demo' and show its log")
    c.add_argument("source", nargs="?", help="the folder to put (default: Portal's own package)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # put and get run in portald where it runs (the command's entry point, cli.front, asks before this import)
    return run(sys.argv[1:] if argv is None else argv, run_here)


def run_here(argv: Sequence[str]) -> int:
    """Run the command in this process."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="portalctl: warning: %(message)s", stream=sys.stderr)
    frees_space = args.func is cmd_gc
    return run_command("portalctl", lambda device: _then_tell_portald(device, args.func(device, args)), frees_space)


def _then_tell_portald(device: Device, code: int) -> int:
    """After a command that may have changed the device, tell its portald to look (docs/design.md, section 16):
    it learns of new versions, portals and settings from this, not by polling."""
    if code == 0:
        with contextlib.suppress(PortalError):  # no portald, or one that cannot answer now: it looks on its own
            call_daemon(daemon_socket(device.home.data), {"op": "changed"}, NUDGE_TIMEOUT)
    return code


if __name__ == "__main__":
    sys.exit(main())
