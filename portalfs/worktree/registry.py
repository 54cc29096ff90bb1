"""Which mounts this device is running: one small JSON record per mount under PORTAL_HOME/mounts.

A mount registers under the device lock before it serves anything, so that
garbage collection (which holds the device lock) either sees it or runs
before it starts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..device import Device

__all__ = ["register", "unregister", "failed", "running", "note_read_only"]


def _record(device: Device, mountpoint: Path) -> Path:
    return device.home.mounts / (str(mountpoint).strip("/").replace("/", "_") or "root")


def register(device: Device, mountpoint: Path, portal: str, writable: bool) -> None:
    with device.exclusive():
        info = {"pid": os.getpid(), "mountpoint": str(mountpoint), "portal": portal, "writable": writable}
        _record(device, mountpoint).write_text(json.dumps(info))


def note_read_only(device: Device, reason: str) -> None:
    """This process's mounts take no more changes, for ``reason`` (``portalctl status`` says so)."""
    for record in device.home.mounts.iterdir():
        try:
            info = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if info.get("pid") == os.getpid():
            record.write_text(json.dumps({**info, "read_only": reason}))


def unregister(device: Device, mountpoint: Path) -> None:
    _record(device, mountpoint).unlink(missing_ok=True)


def failed(device: Device, mountpoint: Path, reason: str) -> None:
    """This process's mount at ``mountpoint`` ended failing, for ``reason``: its record stays, saying so, for
    ``portalfs unmount`` to report (``running`` leaves it out once the process is gone)."""
    path = _record(device, mountpoint)
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    path.write_text(json.dumps({**info, "failed": reason}))


def running(device: Device) -> list[dict[str, Any]]:
    """Records of this device's mounts whose process is alive (mounted, or still starting)."""
    found = []
    for record in device.home.mounts.iterdir():
        try:
            info = json.loads(record.read_text())
            os.kill(info["pid"], 0)
        except (OSError, ValueError, KeyError):
            continue
        found.append(info)
    return found


def find(device: Device, mountpoint: Path) -> dict[str, Any] | None:
    path = _record(device, mountpoint)
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None
