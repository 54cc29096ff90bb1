"""portalfs and mount.portal: mount a portal as a directory.

    portalfs mount [-f] [-o OPT,...] NAME[@VERSION] MOUNTPOINT
    portalfs unmount MOUNTPOINT
    mount.portal NAME[@VERSION] MOUNTPOINT [-o OPT,...]     (for /etc/fstab; -o home=DIR sets PORTAL_HOME)

Without -f the mount runs in the background: the command returns once the
mount is ready (or prints why it failed). Its log is PORTAL_HOME/logs/mount.log.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import select
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..device import Device
from ..errors import MountError, NotFound, PortalError
from ..worktree import registry
from .common import run_command, unlock

__all__ = ["main", "mount_helper_main", "mount", "unmount", "live_mounts"]

UNMOUNT_WAIT_SECONDS = 120


def mount(device: Device, args: argparse.Namespace, options: list[str]) -> int:
    from ..mount.runner import check_mountpoint, parse_target

    name, version = parse_target(args.target)
    mountpoint = check_mountpoint(Path(args.mountpoint))
    secrets = unlock(device, args)
    from ..portal import PortalView

    view = PortalView.open(device, name, secrets)  # an unknown portal or version fails here, in the foreground
    if version is not None:
        try:
            view.version(version)
        except NotFound as exc:  # a bad NAME@VERSION is the mount's error (docs/design.md, "Exit codes")
            raise MountError(str(exc)) from None
    if args.foreground:
        return _run_foreground(device, secrets, name, version, mountpoint, options, args.ready_fd)
    return _spawn_background(args, mountpoint)


def _run_foreground(device, secrets, name, version, mountpoint, options, ready_fd) -> int:  # type: ignore[no-untyped-def]
    import trio

    from ..mount.runner import serve_mount
    from ..net import one_error

    if ready_fd is None:
        logging.basicConfig(level=logging.INFO, format="portalfs: %(message)s")
    else:
        logging.basicConfig(
            filename=device.home.logs / "mount.log",
            level=logging.INFO,
            format="%(asctime)s %(process)d %(levelname)s %(message)s",
        )
    registry.register(device, mountpoint, name, writable=version is None and "ro" not in options)
    served = False
    failure: str | None = None

    def ready() -> None:
        nonlocal served
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
        served = True
        logging.getLogger("portalfs").info("mounted %s at %s", name, mountpoint)

    try:
        from ..daemon.mountsync import MountSync
        from ..fabric.store import fetch_directories
        from ..fabric.sync import device_fabric

        fabric = device_fabric(device, secrets)  # closed with the device
        store = None if fabric is None else fabric.store()
        prepare = None if fabric is None else fetch_directories
        # a read-write mount on a hub publishes what it commits itself (docs/design.md, section 16)
        on_hub = fabric if fabric is not None and fabric.hub is not None else None
        syncer = None if on_hub is None else functools.partial(MountSync, on_hub)
        with one_error():
            trio.run(serve_mount, device, secrets, name, version, mountpoint, options, ready, store, prepare, syncer)
    except PortalError as exc:
        if served:  # it failed at its end (its last checkpoint): `unmount` reports it from the record
            failure = str(exc)
        elif ready_fd is not None:
            os.write(ready_fd, f"error {exc.exit_code} {exc}\n".encode())
        raise
    finally:
        if failure is None:
            registry.unregister(device, mountpoint)
        else:
            registry.failed(device, mountpoint, failure)
    return 0


def _spawn_background(args: argparse.Namespace, mountpoint: Path) -> int:
    read_end, write_end = os.pipe()
    command = [sys.executable, "-m", "portalfs.cli.portalfs"]
    if args.passphrase_file:
        command += ["--passphrase-file", args.passphrase_file]
    command += ["mount", "-f", "--ready-fd", str(write_end), args.target, str(mountpoint)]
    if args.options:
        command += ["-o", args.options]
    child = subprocess.Popen(
        command,
        pass_fds=[write_end],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as ready:
        line = ready.readline().decode().strip()
    if line == "ready":
        print(f"Mounted {args.target} at {mountpoint} (unmount: portalctl unmount {mountpoint})")
        return 0
    child.wait()
    if line.startswith("error "):
        _, code, message = line.split(" ", 2)
        raise MountError(message) if int(code) == MountError.exit_code else _Relayed(message, int(code))
    raise MountError(f"the mount process exited ({child.returncode}) before the mount was ready; see the mount log")


class _Relayed(PortalError):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code


def live_mounts(device: Device) -> list[dict[str, Any]]:
    """This device's mounts that are mounted and whose process still runs."""
    from ..mount.runner import is_mounted

    return [info for info in registry.running(device) if is_mounted(Path(info["mountpoint"]))]


def unmount(device: Device, mountpoint_arg: str) -> int:
    from ..mount.runner import is_mounted

    mountpoint = Path(os.path.abspath(mountpoint_arg))
    if not is_mounted(mountpoint):
        raise MountError(f"{mountpoint} is not mounted")
    info = registry.find(device, mountpoint)
    pid = None if info is None else info["pid"]
    waiter = None
    if pid is not None:
        try:
            waiter = os.pidfd_open(pid)
        except ProcessLookupError:
            waiter = None
    tool = shutil.which("fusermount3")
    command = [tool, "-u", "-z", str(mountpoint)] if tool else ["umount", "-l", str(mountpoint)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise MountError(f"cannot unmount {mountpoint}: {result.stderr.strip() or result.returncode}")
    if waiter is not None:
        # The mount process commits what is left, then exits.
        ready, _, _ = select.select([waiter], [], [], UNMOUNT_WAIT_SECONDS)
        os.close(waiter)
        if not ready:
            raise MountError(f"{mountpoint} is unmounted but its process {pid} is still committing; see the mount log")
        after = registry.find(device, mountpoint)
        if after is not None and after.get("pid") == pid and "failed" in after:
            registry.unregister(device, mountpoint)
            raise MountError(
                f"{mountpoint} is unmounted, but its last checkpoint failed: {after['failed']} "
                "(every file closed is in the journal, which the next mount replays)"
            )
    print(f"Unmounted {mountpoint}")
    return 0


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Mount a portal as a directory.")
    p.add_argument("--passphrase-file", metavar="FILE", help="read the key-file passphrase from FILE")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    m = sub.add_parser("mount", help="mount NAME (or NAME@VERSION, read-only) at MOUNTPOINT")
    m.add_argument("target", metavar="NAME[@VERSION]")
    m.add_argument("mountpoint")
    m.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    m.add_argument("-o", dest="options", default="", help="comma-separated mount options (ro, allow_other, ...)")
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    u = sub.add_parser("unmount", aliases=["umount"], help="unmount MOUNTPOINT")
    u.add_argument("mountpoint")
    return p


def _run(args: argparse.Namespace, prog: str) -> int:
    def work(device: Device) -> int:
        if args.command == "mount":
            device.require_initialized()
            return mount(device, args, [o for o in args.options.split(",") if o])
        return unmount(device, args.mountpoint)

    return run_command(prog, work)


def main(argv: Sequence[str] | None = None) -> int:
    return _run(_parser("portalfs").parse_args(argv), "portalfs")


def mount_helper_main(argv: Sequence[str] | None = None) -> int:
    """mount(8) calls ``mount.portal SPEC DIR [-sfnv] [-o OPTIONS]``."""
    p = argparse.ArgumentParser(prog="mount.portal")
    p.add_argument("target")
    p.add_argument("mountpoint")
    p.add_argument("-o", dest="options", default="")
    for flag in ("-s", "-f", "-n", "-v"):
        p.add_argument(flag, action="store_true", dest=f"flag_{flag[1]}")
    args = p.parse_args(argv)
    options = []
    for option in [o for o in args.options.split(",") if o]:
        key, _, value = option.partition("=")
        if key == "home":
            os.environ["PORTAL_HOME"] = value
        elif key == "passphrase_file":
            args.passphrase_file = value
        elif key not in ("defaults", "rw", "auto", "noauto", "user", "nouser", "_netdev", "nofail"):
            options.append(option)
    ns = argparse.Namespace(
        command="mount",
        target=args.target,
        mountpoint=args.mountpoint,
        foreground=False,
        options=",".join(options),
        ready_fd=None,
        passphrase_file=getattr(args, "passphrase_file", None),
    )
    return _run(ns, "mount.portal")


if __name__ == "__main__":
    sys.exit(main())
