"""Garbage collection: remove objects that no recorded version reaches.

Mark and sweep under the device lock. Every recorded version pins its whole
tree, and every journal record what it names, so nothing a live version uses
is ever removed; objects left by an
interrupted put (stored, but never reached by a committed root) are removed.
If any node cannot be loaded during the mark, nothing is swept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .device import Device, Unlocked
from .errors import PortalBusy
from .portal import PortalView
from .sealing import object_id
from .state import PortalRow
from .worktree import registry
from .worktree.journal import decode_record, writing

__all__ = ["GcReport", "collect_garbage", "live_objects", "DELETE_GRACE_NS"]

DELETE_GRACE_NS = 7 * 86400 * 10**9  # a portal deleted on a device alone stays restorable this long
DELETE_BATCH = 10_000  # dead objects whose index rows go in one transaction


@dataclass(frozen=True, slots=True)
class GcReport:
    live: int
    removed: int
    bytes_freed: int
    temp_files: int
    portals_removed: list[str] = field(default_factory=list)  # deleted portals whose grace period was over


def live_objects(device: Device, secrets: Unlocked) -> set[bytes]:
    """Ids of every node and chunk reachable from any recorded version of any portal."""
    live: set[bytes] = set()
    views = {row.id: PortalView(device, row, secrets.unwrap_portal_key(row)) for row in device.state.portals()}
    for portal_id, view in views.items():
        for version in device.state.versions(portal_id):
            view.objects(view.root(version).entry, live)
    for portal_id, _, record in device.state.journal():  # journaled files are pinned too
        chain, inline = decode_record(record)
        live.update(object_id(sealed) for sealed in inline)  # held by the record, maybe not yet stored
        for entry in chain:
            views[portal_id].objects(entry, live)
    return live


def _released(device: Device, now_ns: int) -> list[PortalRow]:
    """Portals deleted on this device alone whose grace period is over: it forgets them."""
    return [
        row
        for row in device.state.portals()
        if (until := device.state.forgotten_after(row.id)) is not None and until <= now_ns
    ]


def collect_garbage(device: Device, secrets: Unlocked, dry_run: bool = False) -> GcReport:
    released = _released(device, time.time_ns())
    if not dry_run:
        for row in released:  # their versions go, and with them what only they reach
            device.state.remove_portal(row.id)
        # A journal left by a stopped mount may hold objects the store lacks: make it a version first.
        for row in device.state.portals():
            if device.state.journal(row.id):
                with writing(PortalView(device, row, secrets.unwrap_portal_key(row)), secrets, "gc"):
                    pass  # the replay on entry is all gc needs
    with device.exclusive():
        writers = [m for m in registry.running(device) if m["writable"]]
        if writers and not dry_run:
            # A read-write mount stores objects before any version or journal names them.
            m = writers[0]
            raise PortalBusy(f"portal {m['portal']!r} is mounted read-write at {m['mountpoint']}: unmount it first")
        live = live_objects(device, secrets)
        store = device.store_local
        before = store.stat().bytes
        dead = [cid for cid in store.ids() if cid not in live]
        if dry_run:
            return GcReport(len(live), len(dead), 0, 0, [row.name for row in released])
        for at in range(0, len(dead), DELETE_BATCH):
            store.delete_many(dead[at : at + DELETE_BATCH])
        store.sync()
        temp = store.remove_temp_files()
    return GcReport(len(live), len(dead), before - store.stat().bytes, temp, [row.name for row in released])
