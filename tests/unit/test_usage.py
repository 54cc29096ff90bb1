"""An edge's daily byte cap holds for the device's processes together (docs/design.md, section 14, "Limits"):
each process's swarm adds what it moved to the device's shared figures (a real SQLite file) and counts what
the others moved, so that portald, a mount and a command cannot each move a whole cap."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from portalfs.edge.client import EdgeAddress
from portalfs.fabric.swarm import Swarm
from portalfs.fabric.usage import EdgeUsage
from portalfs.keys import DeviceKey
from portalfs.sched.limits import Limits
from portalfs.store.base import Priority

CAP = 1_000_000


def _process(usage: Path, edges: list[EdgeAddress], limits: Limits) -> Swarm:
    """One process's swarm (never connected: what it moved is told to its scheduler)."""
    swarm = Swarm(edges, DeviceKey(os.urandom(32)), b"cert", None, usage=EdgeUsage(usage))
    swarm._configure(limits)
    return swarm


def test_a_daily_cap_counts_what_every_process_of_the_device_moved(tmp_path: Path) -> None:
    capped, free = EdgeAddress("127.0.0.1", 1, os.urandom(32), "tcp"), EdgeAddress("127.0.0.1", 2, os.urandom(32))
    limits = Limits(edges={capped.key: {"daily_cap": CAP}})

    async def main() -> None:
        portald = _process(tmp_path / "usage.db", [capped, free], limits)
        mount = _process(tmp_path / "usage.db", [capped, free], limits)
        now = trio.current_time()
        for swarm, moved in ((portald, 600_000), (mount, 500_000)):
            swarm._scheduler.counted(capped.key, moved, now)
            swarm._scheduler.counted(free.key, moved, now)
            assert swarm._scheduler.allows(capped.key, Priority.PULL, now)  # under the cap, alone
        for swarm in (portald, mount, portald):
            await swarm._count_usage()
        for swarm in (portald, mount):  # 1.1 MB together: past the cap, for background work in both
            assert not swarm._scheduler.allows(capped.key, Priority.PULL, now)
            assert swarm._scheduler.allows(capped.key, Priority.FOREGROUND, now)  # a read that waits still may
            assert swarm._scheduler.allows(free.key, Priority.PULL, now)
        await portald._count_usage()  # counted once, however often shared
        assert EdgeUsage(tmp_path / "usage.db").add(portald._scheduler.day(now), {})[capped.key] == 1_100_000

        later = _process(tmp_path / "usage.db", [capped, free], limits)  # a command started afterwards
        await later._count_usage()
        assert not later._scheduler.allows(capped.key, Priority.PULL, now)

    trio.run(main)
