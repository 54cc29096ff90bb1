"""The parsers of portalctl's fabric commands (hub, edges, devices, sync, sharing, status).

The commands themselves are in fabric_cmds, imported only when one of them runs: it loads the fabric
(trio, the hub and edge clients), which `put`, `get` and the other commands of a device's own do not need.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..device import Device

__all__ = ["register", "register_portal_set"]


def _lazy(name: str) -> Callable[[Device, argparse.Namespace], int]:
    """fabric_cmds.<name>, imported when the command runs."""

    def run(device: Device, args: argparse.Namespace) -> int:
        from . import fabric_cmds

        return int(getattr(fabric_cmds, name)(device, args))

    run.__name__ = name
    return run


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    hub = sub.add_parser("hub", help="join a hub").add_subparsers(dest="hub_command", required=True, metavar="COMMAND")
    c = command("add", _lazy("cmd_hub_add"), "enroll this device at a hub and merge portals with it", parent=hub)
    c.add_argument("url", metavar="URL")
    edge = sub.add_parser("edge", help="storage edges").add_subparsers(
        dest="edge_command", required=True, metavar="COMMAND"
    )
    c = command("add", _lazy("cmd_edge_add"), "use a storage edge", parent=edge)
    c.add_argument("address", metavar="HOST:PORT")
    c.add_argument("--key", help="the edge's key (default: from the hub's directory)")
    c.add_argument("--transport", choices=["quic", "tcp"], default="quic")
    command("ls", _lazy("cmd_edge_ls"), "list edges and whether they answer", parent=edge)
    c = command("replicas", _lazy("cmd_edge_replicas"), "show or set how many edges hold each object (R)", parent=edge)
    c.add_argument("count", nargs="?", type=int, metavar="N")
    c = command("limit", _lazy("cmd_edge_limit"), "limit one edge: its rate, and when background work may use it",
                parent=edge)  # fmt: skip
    c.add_argument("edge", metavar="HOST:PORT")
    c.add_argument("--rate", metavar="RATE", help="bytes per second each way, e.g. 5M (none: no limit)")
    metered = c.add_mutually_exclusive_group()
    metered.add_argument("--metered", action="store_true", default=None, help="sync and repairs do not use it")
    metered.add_argument("--unmetered", dest="metered", action="store_false")
    c.add_argument("--daily-cap", metavar="SIZE", help="background bytes a day, e.g. 2G (none: no cap)")
    c.add_argument("--hours", metavar="START-END", help="hours (local) background work may use it, e.g. 22-6")
    c.add_argument("--clear", action="store_true", help="drop this edge's limits first")
    c = command("limit", _lazy("cmd_limit"), "show or set this device's download and upload rates")
    c.add_argument("--download", metavar="RATE", help="bytes per second, e.g. 10M (none: no limit)")
    c.add_argument("--upload", metavar="RATE", help="bytes per second, e.g. 2M (none: no limit)")
    c.add_argument("--battery-below", type=int, metavar="PERCENT", help="portald waits on battery below this")
    c.add_argument("--metered", choices=["auto", "yes", "no"], help="whether portald waits on a metered network")
    dev = sub.add_parser("device", help="this identity's devices").add_subparsers(
        dest="device_command", required=True, metavar="COMMAND"
    )
    command("ls", _lazy("cmd_device_ls"), "list this identity's devices", parent=dev)
    c = command("revoke", _lazy("cmd_device_revoke"), "revoke a device (by a prefix of its key; the identity signs it: "
                "the 24 words on stdin where this device does not keep its root)", parent=dev)  # fmt: skip
    c.add_argument("device")
    c.add_argument("--bip39-passphrase-file", metavar="FILE", help="the identity's BIP-39 passphrase, if it has one")
    approve_help = ("approve a new device by the code `portalctl join` shows there (the identity signs: the 24 "
                    "words on stdin where this device does not keep its root)")  # fmt: skip
    c = command("approve", _lazy("cmd_device_approve"), approve_help, parent=dev)
    c.add_argument("code")
    c.add_argument("--name", help="the new device's name (sealed in its certificate)")
    c.add_argument("--bip39-passphrase-file", metavar="FILE", help="the identity's BIP-39 passphrase, if it has one")
    c = command("sync", _lazy("cmd_sync"), "push what is pending to the edges, publish it, and pull new versions")
    c.add_argument("names", nargs="*", metavar="NAME")
    c.add_argument("--repair", action="store_true", help="then put every published object back on R live edges")
    c = command("pause", _lazy("cmd_pause"), "pause background sync of NAME... (or of every portal); reads still fetch")
    c.add_argument("names", nargs="*", metavar="NAME")
    c = command("resume", _lazy("cmd_resume"), "resume background sync of NAME... (or of every portal)")
    c.add_argument("names", nargs="*", metavar="NAME")
    c = command("share", _lazy("cmd_share"), "share a portal with an identity")
    c.add_argument("name")
    c.add_argument("--with", dest="identity", required=True, metavar="IDENTITY", help="their identity key (hex)")
    c.add_argument("--write", action="store_true", help="let them publish versions too (signed by the identity: "
                   "the 24 words on stdin where this device does not keep its root)")  # fmt: skip
    c.add_argument("--bip39-passphrase-file", metavar="FILE", help="the identity's BIP-39 passphrase, if it has one")
    c = command("unshare", _lazy("cmd_unshare"), "remove an identity from a portal and rotate its read key")
    c.add_argument("name")
    c.add_argument("identity")
    c = command("link", _lazy("cmd_link"), "make a portal:// link that opens the portal read-only")
    c.add_argument("name")
    c.add_argument("--expires", help="e.g. 24h, 7d")
    c.add_argument("--max-downloads", type=int)
    c.add_argument("--window", help="HH:MM-HH:MM (UTC) when the link may be redeemed")
    c = command("open", _lazy("cmd_open"), "redeem a portal:// link and mount it read-only at DIR", json_flag=False)
    c.add_argument("url")
    c.add_argument("mountpoint", metavar="DIR")
    command("status", _lazy("cmd_status"), "show identity, hub, edges and what is left to publish")


def register_portal_set(portal: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    c = command("delete", _lazy("cmd_portal_delete"), "delete a portal at the hub (restorable during the grace period)",
                parent=portal)  # fmt: skip
    c.add_argument("name")
    c.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    restore_help = "bring back a deleted or expired portal within the grace period"
    c = command("restore", _lazy("cmd_portal_restore"), restore_help, parent=portal)
    c.add_argument("name")
    c = command("set", _lazy("cmd_portal_set"), "set a portal's expiry or (de)activate it at the hub", parent=portal)
    c.add_argument("name")
    c.add_argument("--expires", help="e.g. 24h, 30d, or never")
    group = c.add_mutually_exclusive_group()
    group.add_argument("--deactivate", action="store_true")
    group.add_argument("--activate", action="store_true")
