"""Running one mount: checks, pyfuse3 on the process's trio loop, signals, read-ahead, unmount.

``serve_mount`` is the mount process's main coroutine (its entry point, in
``portalfs.cli.portalfs``, runs it with ``trio.run``). A ``Syncer`` given to
it (the sync engine of the mounted portal, on a fabric) runs in the mount's
nursery and hears of each version the mount commits.

SIGTERM, SIGINT and SIGHUP commit what is staged and unmount. If the mount is
unmounted from outside (`portalctl unmount`, `fusermount3 -u`), whatever is
still dirty is committed after the kernel lets go. If the process dies, the
kernel answers ENOTCONN on the mount point; nothing hangs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pyfuse3
import trio

from ..device import Device, Unlocked
from ..errors import MountError, PortalError
from ..portal import PortalView
from ..root import RootPayload, RootRecord
from ..runtime import hosting
from ..store import ObjectStore
from ..tree import Entry, new_root_entry
from ..worktree.journal import writing
from ..worktree.live import LiveTree
from . import fuseloop
from .operations import PortalOperations

__all__ = ["check_mountpoint", "mount_options", "serve_mount", "parse_target", "bdi_of", "is_mounted", "Syncer"]

log = logging.getLogger("portalfs")
READ_AHEAD_KB = 1024


class Syncer(Protocol):
    """What syncs the mounted portal from inside the mount process (docs/design.md, section 16)."""

    async def run(
        self, mount: PortalOperations, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Until cancelled: publish what ``mount`` commits, and land in it what other devices publish."""

    def committed(self, record: RootRecord) -> None:
        """The mount committed ``record`` (called on the loop; must not block)."""

    async def finish(self) -> None:
        """After the unmount's last commit: publish what is left, for a bounded time."""


def parse_target(target: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@VERSION``."""
    name, sep, version = target.partition("@")
    if not sep:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise MountError(f"{target!r}: the version after '@' must be a positive number")
    return name, int(version)


def check_mountpoint(path: Path) -> Path:
    if is_mounted(path):
        raise MountError(f"mount point {path} is already a mount point")
    if not path.exists():
        raise MountError(f"mount point {path} does not exist")
    if not path.is_dir():
        raise MountError(f"mount point {path} is not a directory")
    if os.path.ismount(path):
        raise MountError(f"mount point {path} is already a mount point")
    if any(path.iterdir()):
        raise MountError(f"mount point {path} is not empty")
    return path.resolve()


def _allow_other() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        with open("/etc/fuse.conf") as conf:
            return any(line.strip() == "user_allow_other" for line in conf)
    except OSError:
        return False


def mount_options(name: str, read_only: bool, extra: list[str]) -> set[str]:
    options = {"default_permissions", f"fsname=portal:{name}", "subtype=portal"}
    if _allow_other():
        options.add("allow_other")
    if read_only:
        options.add("ro")
    options.update(o for o in extra if o and o not in ("rw", "defaults"))
    return options


def _mountinfo_device(mountpoint: Path) -> str | None:
    """The "major:minor" of the mount at ``mountpoint``, from /proc/self/mountinfo.

    Unlike os.path.ismount, this sends no request to the mount, so it works on
    a mount whose process died (where every request fails with ENOTCONN).
    """
    target = os.path.abspath(mountpoint).replace(" ", "\\040")
    with open("/proc/self/mountinfo") as info:
        for line in info:
            fields = line.split()
            if len(fields) > 4 and fields[4] == target:
                return fields[2]
    return None


def is_mounted(mountpoint: Path) -> bool:
    return _mountinfo_device(mountpoint) is not None


def bdi_of(mountpoint: Path) -> Path | None:
    """The sysfs backing-device directory of a mount."""
    device = _mountinfo_device(mountpoint)
    return None if device is None else Path("/sys/class/bdi") / device


def _raise_read_ahead(mountpoint: Path) -> None:
    bdi = bdi_of(mountpoint)
    if bdi is None:
        return
    try:
        (bdi / "read_ahead_kb").write_text(str(READ_AHEAD_KB))
    except OSError as exc:
        log.info("could not raise read-ahead of %s: %s", mountpoint, exc.strerror)


async def _watch_signals(ops: PortalOperations) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: committing and unmounting", signum)
            try:
                await ops.commit()
            finally:
                pyfuse3.terminate()
            return


async def _when_answering(mountpoint: Path, ready: Callable[[], None]) -> None:
    """Once the kernel has finished INIT (a stat of the mount point is answered), tune and report ready.

    The kernel sets the mount's read-ahead while it handles INIT, so it can
    only be raised after that.
    """
    await trio.to_thread.run_sync(os.stat, mountpoint)
    _raise_read_ahead(mountpoint)
    ready()


async def _serve(
    ops: PortalOperations, mountpoint: Path, options: set[str], ready: Callable[[], None], syncer: Syncer | None
) -> None:
    pyfuse3.init(ops, str(mountpoint), options)
    try:
        async with trio.open_nursery() as nursery:
            if syncer is not None:
                await nursery.start(syncer.run, ops)
                ops.tree.on_commit = syncer.committed
            await nursery.start(ops.run_background)
            nursery.start_soon(_watch_signals, ops)
            nursery.start_soon(_when_answering, mountpoint, ready)
            with fuseloop.installed():
                await pyfuse3.main()
            nursery.cancel_scope.cancel()
    finally:
        ops.abandon_streams()
        pyfuse3.close(unmount=True)
    try:
        await ops.commit()
    except PortalError as exc:  # what was closed is in the journal (the next mount or put replays it)
        log.error("the last checkpoint failed: %s", exc)
        raise
    log.info("unmounted %s (%d versions committed)", mountpoint, ops.versions_committed)
    if syncer is not None:
        await syncer.finish()


async def serve_mount(
    device: Device,
    secrets: Unlocked,
    name: str,
    version: int | None,
    mountpoint: Path,
    extra_options: list[str],
    ready: Callable[[], None],
    store: ObjectStore | None = None,
    prepare: Callable[[PortalView, Entry], object] | None = None,
    syncer: Callable[[PortalView], Syncer] | None = None,
) -> None:
    """Mount portal ``name`` (or its ``version``, read-only) at ``mountpoint`` until unmounted.

    ``store`` is where the portal's objects are read and written (the device's
    fabric's, which fetches what the device lacks; the local store if None).
    ``prepare`` is called with the version's root before the mount serves (a
    device on a fabric fetches the directories it lacks there), on a worker
    thread; ``syncer``, for a read-write mount on a fabric, makes the sync
    engine of the portal. The loop is the process's runtime (``portalfs.runtime``).
    """
    async with hosting():
        view = PortalView.open(device, name, secrets, store)
        read_only = version is not None or "ro" in extra_options
        staging = device.home.staging / view.row.id.hex()
        with contextlib.ExitStack() as held:
            if not read_only:
                # One lock from the replay to the unmount: no other writer between them.
                replayed = writing(view, secrets, f"mount {name}", keep_too_large=True)
                await trio.to_thread.run_sync(held.enter_context, replayed)
                # Staging files a killed mount left behind hold uncommitted writes: the
                # journal says what was committed, and that is what this mount shows.
                shutil.rmtree(staging, ignore_errors=True)
            tree = await trio.to_thread.run_sync(_live_tree, view, secrets, version, read_only, staging, prepare)
            await trio.to_thread.run_sync(tree.take_journal)  # what the replay left (a directory too large)
            newer = _follower(view, prepare) if read_only and version is None else None
            # A read-only mount of the portal follows it; one of a past version shows that version.
            ops = PortalOperations(tree, newer)
            options = mount_options(name, read_only, extra_options)
            await _serve(ops, mountpoint, options, ready, None if read_only or syncer is None else syncer(view))


def _live_tree(
    view: PortalView,
    secrets: Unlocked,
    version: int | None,
    read_only: bool,
    staging: Path,
    prepare: Callable[[PortalView, Entry], object] | None,
) -> LiveTree:
    """The working tree the mount shows: the head (or ``version``), its directories at hand (a worker thread)."""
    device = view.device
    if version is None:
        head = device.state.head(view.row.id)
        root = view.root(head) if head is not None else None
    else:
        head = view.version(version)
        root = view.root(head)
    if root is None:  # a new portal: an empty root directory
        root = RootPayload(new_root_entry(time.time_ns(), os.getuid(), os.getgid()), 0, 0)
    if prepare is not None:
        prepare(view, root.entry)
    return LiveTree(
        view, None if read_only else secrets, None if head is None else head.record, root, staging, read_only
    )


def _follower(
    view: PortalView, prepare: Callable[[PortalView, Entry], object] | None
) -> Callable[[int], tuple[RootRecord, RootPayload] | None]:
    def newer(shown: int) -> tuple[RootRecord, RootPayload] | None:
        """The newest version past ``shown`` (a sync pulled it, a ``put`` made it), ready to show."""
        latest = view.device.state.head(view.row.id)
        if latest is None or latest.version <= shown:
            return None
        payload = view.root(latest)
        if prepare is not None:
            prepare(view, payload.entry)
        return latest.record, payload

    return newer
