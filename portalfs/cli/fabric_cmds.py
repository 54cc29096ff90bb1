"""portalctl commands for the fabric: hub, edges, devices, sync, sharing, links, portal policy, status."""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from ..conflicts import find as find_conflicts
from ..daemon.control import call_daemon, daemon_socket
from ..daemon.manners import MANNERS_META, Manners
from ..device import Device, Unlocked
from ..edge.client import parse_address
from ..errors import CorruptObject, IntegrityError, PortalError, Refused, Unreachable, UsageError, shown
from ..fabric import sharing
from ..fabric.config import (
    FabricConfig,
    followed_portals,
    forget_published,
    is_paused,
    load_config,
    published_version,
    save_config,
    set_paused,
)
from ..fabric.grants import LinkUrl
from ..fabric.sync import Fabric
from ..gc import DELETE_GRACE_NS
from ..hub.client import DeviceInfo, certificate_fingerprint, fetch_certificate
from ..hub.state import WINDOW
from ..keys import DeviceCertificate, Identity, IdentityKeys
from ..portal import PortalView
from ..sched.limits import Limits
from ..state import VersionRow
from ..worktree import registry
from .common import emit, human, unlock, with_root
from .handoff import sync_failures, sync_line
from .servers import parse_duration, parse_size

__all__ = ["open_fabric"]

SYNC_TIMEOUT = 3600.0  # seconds `portalctl sync` waits for portald's answer
STATUS_TIMEOUT = 10.0


def open_fabric(device: Device, secrets: Unlocked, need_hub: bool = True) -> Fabric:
    config = hub_config(device) if need_hub else load_config(device) or FabricConfig()
    return Fabric(device, secrets, config)


def hub_config(device: Device) -> FabricConfig:
    """The device's fabric configuration, or UsageError where it has no hub to reach."""
    config = load_config(device) or FabricConfig()
    if not config.hub:
        raise UsageError("this device has no hub: run `portalctl hub add URL`, or portald for its embedded one")
    if config.on_embedded and not daemon_socket(device.home.data).exists():
        raise UsageError(f"this device's hub ({config.hub}) is portald's embedded one: start portald first")
    return config


def _portal_keys(device: Device, secrets: Unlocked, name: str) -> tuple[PortalView, Fabric]:
    view = PortalView.open(device, name, secrets)
    return view, open_fabric(device, secrets)


# hub, edges, devices


def hub_url(text: str) -> str:
    url = text.rstrip("/")
    if not re.fullmatch(r"https?://[^/\s]+", url):
        raise UsageError(f"{text!r} is not a hub URL (http://HOST:PORT)")
    return url


def cmd_hub_add(device: Device, args: argparse.Namespace) -> int:
    secrets = unlock(device, args)
    url = hub_url(args.url)
    config = load_config(device) or FabricConfig()
    moved = config.hub is not None and url != config.hub
    if url != config.hub:
        config.leave_embedded()  # a real fabric from now on: portald stops running its own hub and edge
        config.hub_cert = None
    config.hub = url
    _pin_or_warn(config, url)
    fabric = Fabric(device, secrets, config)
    try:
        result = fabric.join()  # fails before anything is saved if the hub refuses or is down
        if moved:
            forget_published(device)
        save_config(device, fabric.config)
    finally:
        fabric.close()
    for name, error in result["failed"].items():  # joined all the same: the next sync tries them again
        print(f"portalctl: {name}: {error}", file=sys.stderr)
    added = ", ".join(result["portals_added"]) or "none"
    emit(args, result, f"Joined hub {url}: {result['edges']} edges; portals added: {added}")
    return 0


def _pin_or_warn(config: FabricConfig, url: str) -> None:
    """An https hub's certificate is pinned at first contact (no other is accepted after); a plain-http hub
    that is not on this machine is said to be one, once (docs/design.md, section 13, "TLS")."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        if config.hub_cert is None:
            config.hub_cert = fetch_certificate(url)
            print(f"portalctl: pinned hub {url}'s certificate, sha256 {certificate_fingerprint(config.hub_cert)}",
                  file=sys.stderr)  # fmt: skip
    elif not _loopback(parts.hostname or ""):
        print(f"portalctl: warning: hub {url} speaks plain HTTP: who and what this device syncs, and link ids, "
              "cross the network in clear, and anyone on the path can act as the hub; use an https:// hub",
              file=sys.stderr)  # fmt: skip


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def cmd_edge_add(device: Device, args: argparse.Namespace) -> int:
    secrets = unlock(device, args)
    try:
        host, port = parse_address(args.address)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    config = load_config(device) or FabricConfig()
    key = args.key
    if key is None and config.hub:
        fabric = Fabric(device, secrets, config)
        try:
            found = next((e.key for e in fabric.require_hub().edges() if e.address == f"{host}:{port}"), None)
            key = None if found is None else found.hex()
        finally:
            fabric.close()
    if key is None:
        raise UsageError(f"the hub does not list an edge at {host}:{port}: give its key with --key")
    if not re.fullmatch(r"[0-9a-f]{64}", key):
        raise UsageError("--key is the edge's key: 64 hex digits, as `portal-edge serve` prints it")
    config.edges = [e for e in config.edges if e["key"] != key]
    config.edges.append({"host": host, "port": port, "key": key, "transport": args.transport})
    save_config(device, config)
    if config.hub:
        fabric = Fabric(device, secrets, config)
        try:
            fabric.membership.merge_keyring()  # so a recovered device finds this edge too
        finally:
            fabric.close()
    emit(args, {"edge": f"{host}:{port}", "key": key}, f"Added edge {host}:{port} ({args.transport})")
    return 0


MAX_REPLICAS = 16


def cmd_edge_replicas(device: Device, args: argparse.Namespace) -> int:
    """Show or set R, the number of edges each object is placed on (docs/design.md, section 14)."""
    config = load_config(device) or FabricConfig()
    if args.count is not None:
        if not 1 <= args.count <= MAX_REPLICAS:
            raise UsageError(f"replicas must be 1 to {MAX_REPLICAS}, not {args.count}")
        config.replicas = args.count
        save_config(device, config)
    emit(args, {"replicas": config.replicas}, f"each object is placed on {config.replicas} edges")
    return 0


def _rate(text: str | None, what: str) -> float | None:
    """``10M`` (bytes per second, units as for sizes) → 10485760.0; ``0`` or ``none`` → no limit."""
    if text is None or text.strip().lower() in ("0", "none"):
        return None
    try:
        return float(parse_size(text.removesuffix("/s")))
    except UsageError:
        raise UsageError(f"{what} {shown(text)} is not a rate (try 10M, for 10 MiB/s, or none)") from None


def _hours(text: str) -> list[int]:
    match = re.fullmatch(r"(\d{1,2})-(\d{1,2})", text.strip())
    if not match or not all(0 <= int(h) <= 24 for h in match.groups()) or match[1] == match[2]:
        raise UsageError(f"--hours {shown(text)} is not START-END in whole hours, local time (try 22-6)")
    return [int(match[1]) % 24, int(match[2]) % 24]


def _limits_text(limits: Limits, names: dict[bytes, str]) -> str:
    def rate(value: float | None) -> str:
        return "no limit" if not value else f"{human(value)}/s"

    lines = [f"download {rate(limits.download)}", f"upload   {rate(limits.upload)}"]
    for key, row in limits.edges.items():
        said = [f"{rate(row.get('rate'))} each way"]
        said += ["metered"] if row.get("metered") else []
        said += [f"at most {human(row['daily_cap'])} a day"] if row.get("daily_cap") else []
        said += [f"background {row['hours'][0]:02d}:00-{row['hours'][1]:02d}:00"] if row.get("hours") else []
        lines.append(f"edge     {names.get(key, key.hex()[:16])}: {', '.join(said)}")
    return "\n".join(lines)


def cmd_limit(device: Device, args: argparse.Namespace) -> int:
    """Show or set the device's download and upload rates (docs/design.md, section 14, "Limits"), and when
    portald holds background sync back (section 16, "Laptop manners")."""
    device.require_initialized()
    config = load_config(device) or FabricConfig()
    limits = Limits.from_json(config.limits)
    if args.download is not None:
        limits.download = _rate(args.download, "--download")
    if args.upload is not None:
        limits.upload = _rate(args.upload, "--upload")
    if args.download is not None or args.upload is not None:
        config.limits = limits.to_json()
        save_config(device, config)
    raw = device.state.get_meta(MANNERS_META)
    manners = Manners.from_json(json.loads(raw) if raw else None)
    if args.battery_below is not None or args.metered is not None:
        if args.battery_below is not None and not 0 <= args.battery_below <= 100:
            raise UsageError(f"--battery-below is a percentage, 0 to 100, not {args.battery_below}")
        battery = manners.battery_below if args.battery_below is None else args.battery_below
        manners = Manners(battery, args.metered or manners.metered)
        device.state.set_meta(MANNERS_META, json.dumps(manners.to_json()).encode())
    waits = [f"on battery below {manners.battery_below}%"] if manners.battery_below else []
    waits += {"auto": ["on a network NetworkManager says is metered"], "yes": ["always (--metered yes)"]}.get(
        manners.metered, []
    )
    text = _limits_text(limits, {}) + "\nportald  background sync waits " + (" or ".join(waits) or "never")
    emit(args, limits.to_json() | {"manners": manners.to_json()}, text)
    return 0


def cmd_edge_limit(device: Device, args: argparse.Namespace) -> int:
    """Set one edge's rate and its constraints for background work (metered, daily cap, hours)."""
    secrets = unlock(device, args)
    config = load_config(device) or FabricConfig()
    fabric = Fabric(device, secrets, config)
    try:
        edges = fabric.edges()
    finally:
        fabric.close()
    wanted = args.edge.lower()
    found = [a for a in edges if str(a) == args.edge or (len(wanted) >= 8 and a.key.hex().startswith(wanted))]
    if len(found) != 1:
        raise UsageError(f"no edge {shown(args.edge)} (give HOST:PORT as `portalctl edge ls` shows it, or its key)")
    key = found[0].key
    limits = Limits.from_json(config.limits)
    row = {} if args.clear else dict(limits.edges.get(key, {}))
    if args.rate is not None:
        row["rate"] = _rate(args.rate, "--rate")
    if args.metered is not None:
        row["metered"] = args.metered
    if args.daily_cap is not None:
        row["daily_cap"] = None if args.daily_cap.lower() in ("0", "none") else parse_size(args.daily_cap)
    if args.hours is not None:
        row["hours"] = None if args.hours.lower() == "any" else _hours(args.hours)
    row = {k: v for k, v in row.items() if v}
    if row:
        limits.edges[key] = row
    else:
        limits.edges.pop(key, None)
    config.limits = limits.to_json()
    save_config(device, config)
    emit(args, limits.to_json(), _limits_text(limits, {a.key: str(a) for a in edges}))
    return 0


def cmd_edge_ls(device: Device, args: argparse.Namespace) -> int:
    secrets = unlock(device, args)
    fabric = open_fabric(device, secrets, need_hub=False)
    try:
        rows = fabric.swarm.stat()
    finally:
        fabric.close()
    lines = [
        f"{r['edge']}\t{r['transport']}\t" + (f"up\t{r['objects']} objects" if r["up"] else f"down\t{r['error']}")
        for r in rows
    ]
    emit(args, rows, "\n".join(lines) or "no edges")
    return 0


def _device_json(d: DeviceInfo, identity: IdentityKeys) -> dict[str, Any]:
    """A device of this identity, its name opened from its certificate (the hub keeps it sealed)."""
    try:
        name = identity.device_name(DeviceCertificate.from_bytes(d.cert).fields()) or d.name
    except (CorruptObject, KeyError, TypeError, ValueError):
        name = d.name
    return {
        "device": d.device.hex(),
        "name": name,
        "enrolled_ns": d.enrolled_ns,
        "revoked_ns": d.revoked_ns,
        "cert": d.cert.hex(),
    }


def cmd_device_ls(device: Device, args: argparse.Namespace) -> int:
    secrets = unlock(device, args)
    fabric = open_fabric(device, secrets)
    try:
        rows = [_device_json(d, secrets.identity) for d in fabric.require_hub().devices()]
    finally:
        fabric.close()
    me = secrets.device.public.hex()
    lines = [
        f"{r['device'][:16]}\t{r['name']}\t"
        + ("revoked" if r["revoked_ns"] else "active")
        + ("\t(this device)" if r["device"] == me else "")
        for r in rows
    ]
    emit(args, rows, "\n".join(lines))
    return 0


def cmd_device_approve(device: Device, args: argparse.Namespace) -> int:
    """Approve a new device by the code it shows (``portalctl join``): certify its key, seal it the
    identity's keys (never the root). The identity signs: its root is kept here, or the words are asked."""
    from ..provisioning import check_of, parse_code, seal_keys

    request, check = parse_code(args.code)
    secrets = with_root(unlock(device, args), args)
    assert secrets.identity.root is not None
    fabric = open_fabric(device, secrets)
    try:
        hub = fabric.require_hub()
        new_device, box = hub.provisioning(request)
        if check_of(new_device, box) != check:
            raise IntegrityError("the hub's request does not hold the keys the new device shows: not approved")
        name = args.name or f"approved {time.strftime('%Y-%m-%d')}"
        cert = Identity(secrets.identity.root).enroll(new_device, name, time.time_ns())
        fabric.membership.follow_generation()  # the newest key generation, handed over with the keys
        generation = secrets.generation
        handed = None if generation is None else (generation.number, generation.seed)
        hub.approve_provisioning(request, cert.to_bytes(), seal_keys(secrets.identity, box, new_device, handed))
    finally:
        fabric.close()
    emit(args, {"device": new_device.hex(), "name": name}, f"Approved device {new_device.hex()[:16]} ({name})")
    return 0


def cmd_device_revoke(device: Device, args: argparse.Namespace) -> int:
    secrets = with_root(unlock(device, args), args)
    fabric = open_fabric(device, secrets)
    try:
        revoked = sharing.revoke_device(fabric, args.device).hex()
    finally:
        fabric.close()
    emit(args, {"revoked": revoked}, f"Revoked device {revoked[:16]}")
    return 0


# sync


def cmd_sync(device: Device, args: argparse.Namespace) -> int:
    """Sync each portal on its own: a failure is one line, and the others go on.

    The exit status is non-zero only when a portal the user named failed (or its repair did).
    """
    results = sync_portals(device, args, args.names, args.repair)
    failures = sync_failures(results)
    text = "\n".join(sync_line(r) for r in results if "error" not in r)
    if text or args.json or not failures:
        emit(args, results, text or "nothing to sync")
    named = [what for portal, what in failures if portal in args.names]
    return int(named[0]["exit_code"]) if named else 0


def sync_portals(
    device: Device, args: argparse.Namespace, names: list[str], repair: bool, secrets: Unlocked | None = None
) -> list[dict[str, Any]]:
    """Sync ``names`` (every followed portal when empty): portald does it where it runs, so that two syncs never
    race; else this process, unlocking the device unless ``secrets`` are given."""
    request = {"op": "sync", "names": names, "repair": repair}
    results = call_daemon(daemon_socket(device.home.data), request, SYNC_TIMEOUT)
    if results is None:
        results = _sync_here(device, secrets or unlock(device, args), names, repair)
    return results


def _sync_here(device: Device, secrets: Unlocked, names: list[str], repair: bool) -> list[dict[str, Any]]:
    fabric = open_fabric(device, secrets)
    try:
        sharing.resume_rotations(fabric)  # an unshare a crash left half-done, before anything is published
        fabric.refresh()
        followed = {row.name for row in followed_portals(device)}
        names = names or sorted(followed)
        for name in names:
            device.state.portal(name)  # an unknown name is an error, before anything is synced
        results: list[dict[str, Any]] = []
        for name in (n for n in names if n in followed):
            try:
                view = fabric.view(name)
                results.append(fabric.sync(view))
            except PortalError as exc:
                results.append({"portal": name, "error": str(exc), "exit_code": exc.exit_code})
                continue
            if repair:
                try:
                    results[-1]["repair"] = fabric.repair(view)
                except PortalError as exc:
                    results[-1]["repair"] = {"error": f"repair: {exc}", "exit_code": exc.exit_code}
    finally:
        fabric.close()
    return results


# sharing


def cmd_share(device: Device, args: argparse.Namespace) -> int:
    secrets = unlock(device, args)
    if args.write:  # the identity signs the grant
        secrets = with_root(secrets, args)
    view, fabric = _portal_keys(device, secrets, args.name)
    try:
        recipient = _identity_arg(args.identity)
        sharing.share(fabric, view, recipient, bool(args.write))
    finally:
        fabric.close()
    role = "read and write" if args.write else "read"
    emit(
        args,
        {"portal": args.name, "identity": recipient.hex(), "write": bool(args.write)},
        f"Shared {args.name} with {recipient.hex()[:16]}… ({role}); they see it after `portalctl sync`",
    )
    return 0


def _identity_arg(text: str) -> bytes:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise UsageError(f"{text!r} is not an identity key (64 hex digits, from `portalctl whoami`)")
    return bytes.fromhex(text)


def cmd_unshare(device: Device, args: argparse.Namespace) -> int:
    secrets = unlock(device, args)
    view, fabric = _portal_keys(device, secrets, args.name)
    try:
        member = _identity_arg(args.identity)
        sharing.unshare(fabric, view, member)
    finally:
        fabric.close()
    emit(
        args,
        {"portal": args.name, "removed": member.hex()},
        f"Removed {member.hex()[:16]}… from {args.name}; new versions use a new read key",
    )
    return 0


def cmd_link(device: Device, args: argparse.Namespace) -> int:
    secrets = unlock(device, args)
    view, fabric = _portal_keys(device, secrets, args.name)
    try:
        policy: dict[str, Any] = {}
        if args.expires:
            policy["expires_ns"] = time.time_ns() + parse_duration(args.expires)
        if args.max_downloads is not None:
            if args.max_downloads < 1:
                raise UsageError("--max-downloads must be at least 1")
            policy["max_downloads"] = args.max_downloads
        if args.window:
            if not WINDOW.fullmatch(args.window):
                raise UsageError(f"--window {args.window!r}: expected HH:MM-HH:MM (UTC)")
            policy["window"] = args.window
        url = sharing.make_link(fabric, view, policy)
    finally:
        fabric.close()
    emit(args, {"url": url, **policy}, url)
    return 0


def cmd_open(device: Device, args: argparse.Namespace) -> int:
    """Redeem a link and mount its portal read-only."""
    url = LinkUrl.parse(args.url)
    secrets = unlock(device, args)
    config = load_config(device) or FabricConfig()
    if config.hub and config.hub != url.hub:
        raise UsageError(f"this device uses hub {config.hub}; the link is for {url.hub}")
    config.hub = url.hub
    _pin_or_warn(config, url.hub)
    fabric = Fabric(device, secrets, config)
    try:
        name = sharing.open_link(fabric, url)
    finally:
        fabric.close()
    from .portalfs import mount

    args.target, args.foreground, args.ready_fd, args.options = name, False, None, "ro"
    return mount(device, args, ["ro"])


def cmd_portal_set(device: Device, args: argparse.Namespace) -> int:
    secrets = unlock(device, args)
    view, fabric = _portal_keys(device, secrets, args.name)
    fields: dict[str, int | bool | None] = {}
    if args.expires:
        fields["expires_ns"] = None if args.expires == "never" else time.time_ns() + parse_duration(args.expires)
    if args.deactivate or args.activate:
        fields["active"] = bool(args.activate)
    if not fields:
        raise UsageError("nothing to set: give --expires, --deactivate or --activate")
    try:
        info = sharing.set_policy(fabric, view, fields)
    finally:
        fabric.close()
    expires = f", expires {_until(info.expires_ns)}" if info.expires_ns else ""
    emit(args, info.to_json(), f"{args.name}: {info.state}{expires}")
    return 0


def _until(ns: int | None) -> str:
    return "never" if ns is None else time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(ns / 1e9))


def _on_hub(device: Device) -> bool:
    config = load_config(device)
    return config is not None and bool(config.hub)


def cmd_portal_delete(device: Device, args: argparse.Namespace) -> int:
    """Delete a portal: at the hub, closed to every device and link at once, its objects kept on the edges
    through the hub's grace period; on a device alone, kept here through the same grace period. Either way
    ``portal restore`` brings it back until then, and ``gc`` removes it from this device after."""
    secrets = unlock(device, args)
    view = PortalView.open(device, args.name, secrets)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"deleting {args.name} needs confirmation: add --yes")
        answer = input(f"Delete portal {args.name} for every device and link? Type its name to confirm: ")
        if answer.strip() != args.name:
            raise UsageError("not confirmed: nothing deleted")
    on_hub = _on_hub(device)
    if on_hub:
        fabric = open_fabric(device, secrets)
        try:
            result = sharing.delete_portal(fabric, view).to_json()
        finally:
            fabric.close()
    else:  # a device alone: the deletion is its own
        until = time.time_ns() + DELETE_GRACE_NS
        device.state.set_deleted(view.row.id, until, here=True)
        result = {"id": view.row.id.hex(), "state": "deleted", "release_ns": until}
    emit(
        args,
        {"portal": args.name, **result},
        f"Deleted {args.name}; `portalctl portal restore {args.name}` brings it back until "
        f"{_until(result['release_ns'])}" + ("" if on_hub else "; after that, `portalctl gc` removes it"),
    )
    return 0


def cmd_portal_restore(device: Device, args: argparse.Namespace) -> int:
    """Bring back a deleted or expired portal within its grace period."""
    secrets = unlock(device, args)
    view = PortalView.open(device, args.name, secrets)
    if _on_hub(device):
        fabric = open_fabric(device, secrets)
        try:
            state = sharing.restore_portal(fabric, view).state
        finally:
            fabric.close()
    else:
        if device.state.deleted_until(view.row.id) is None:
            raise UsageError(f"portal {args.name} is not deleted")
        device.state.set_deleted(view.row.id, None)
        state = "active"
    emit(args, {"portal": args.name, "state": state}, f"Restored {args.name}: {state}")
    return 0


def cmd_status(device: Device, args: argparse.Namespace) -> int:
    secrets = unlock(device, args)
    config = load_config(device) or FabricConfig()
    fabric = Fabric(device, secrets, config)
    try:
        portals: list[dict[str, Any]] = []
        frozen = {m["portal"]: m["read_only"] for m in registry.running(device) if m.get("read_only")}
        for row in device.state.portals():
            head = device.state.head(row.id)
            local = 0 if head is None else head.version
            portals.append({"portal": row.name, "version": local, "published": published_version(device, row.id),
                            "conflicts": _conflicts(device, secrets, row.name, head),
                            "paused": is_paused(device, row.id), "read_only": frozen.get(row.name)})  # fmt: skip
        hub_error = None
        try:
            edges = fabric.swarm.stat() if config.reaches_edges else []
            hub_error = fabric.hub_error  # the hub is down: its last edge list was asked
        except (Unreachable, Refused) as exc:  # the hub is down, or refuses this (revoked) device:
            edges, hub_error = [], str(exc)  # say so, and show what this device knows
    finally:
        fabric.close()
    daemon = call_daemon(daemon_socket(device.home.data), {"op": "status"}, STATUS_TIMEOUT)
    data: dict[str, Any] = {
        "identity": secrets.identity.public.hex(),
        "hub": config.hub,
        "hub_error": hub_error,
        "embedded": config.on_embedded,
        "edges": edges,
        "portals": portals,
        "daemon": daemon,
    }
    hub = config.hub or "(none: this device alone)"
    if config.on_embedded:
        hub += " (portald's embedded hub and edge)" if daemon else " (portald's embedded hub: start portald)"
    elif hub_error:
        hub += f" ({hub_error})"
    lines = [f"identity {secrets.identity.fingerprint}", f"hub      {hub}"]
    idle = "portald  not running" + ("" if config.on_embedded else ": sync is by hand")
    lines.append(f"portald  running (pid {daemon['pid']})" if daemon else idle)
    if daemon and daemon.get("held_back"):
        lines.append(f"portald  background sync waits: {daemon['held_back']}")
    for p in daemon["portals"] if daemon else []:
        if p["last_error"]:
            lines.append(f"portald  {p['portal']}: {p['last_error']} (failed {p['failures']} times, retrying)")
    for down in daemon.get("edges_down") or [] if daemon else []:
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(down["since_ns"] / 1e9))
        lines.append(f"edge     {down['edge']}: down, silent at the hub since {since}; its copies are made again")
    fetching = daemon.get("fetching") if daemon else None
    rates = (fetching or {}).get("edges", {})
    lines += [
        f"edge     {e['edge']}: " + ("up" if e["up"] else "down") + _edge_rate(rates.get(e["edge"])) for e in edges
    ]
    if fetching and fetching["pending_requests"]:
        eta = fetching["eta_seconds"]
        lines.append(
            f"fetching {fetching['pending_requests']} objects, {human(fetching['pending_bytes'])} left"
            + (f" at {fetching['bytes_per_second'] / 1e6:.1f} MB/s, about {eta:.0f} s" if eta is not None else "")
        )
    lines += [
        f"portal   {p['portal']}: v{p['version']}"
        + (f", {p['version'] - p['published']} to publish" if config.hub and p["version"] > p["published"] else "")
        + (f", {p['conflicts']} conflict copies (portalctl conflicts)" if p["conflicts"] else "")
        + (", paused" if p["paused"] else "")
        + (f"; its mount is read-only: {p['read_only']}" if p["read_only"] else "")
        for p in portals
    ]
    emit(args, data, "\n".join(lines))
    return 0


def _edge_rate(figures: dict[str, Any] | None) -> str:
    """``, 12.3 MB/s`` as portald's swarm estimates the edge, when it has fetched from it."""
    rate = (figures or {}).get("bytes_per_second")
    return f", {rate / 1e6:.1f} MB/s" if rate else ""


def cmd_pause(device: Device, args: argparse.Namespace) -> int:
    return _pause(device, args, True)


def cmd_resume(device: Device, args: argparse.Namespace) -> int:
    return _pause(device, args, False)


def _pause(device: Device, args: argparse.Namespace, paused: bool) -> int:
    """Pause or resume background sync (portald's and the mounts'): of NAME..., or of every portal."""
    portals: list[bytes | None] = [device.state.portal(name).id for name in args.names]  # unknown: an error first
    for portal in portals or [None]:
        set_paused(device, portal, paused)
    what = ", ".join(args.names) or "every portal"
    emit(args, {"portals": args.names or None, "paused": paused},
         f"{what}: {'paused (reads still fetch what this device lacks)' if paused else 'resumed'}")  # fmt: skip
    return 0


def _conflicts(device: Device, secrets: Unlocked, name: str, head: VersionRow | None) -> int | None:
    """How many conflict copies the portal's newest version holds, from what this device has (None: it lacks
    some of its directories, or cannot open it)."""
    if head is None:
        return 0
    try:
        view = PortalView.open(device, name, secrets)
        return len(find_conflicts(view, view.root(head).entry))
    except PortalError:
        return None
