"""Laptop manners (docs/design.md, section 16, "Laptop manners"): when portald holds its background work back
(on battery below a threshold, on a metered network), and how it notices a suspend.

- Power: /sys/class/power_supply (or $PORTAL_POWER_SUPPLY): on battery when a battery is discharging and
  no mains supply is online; the charge is the batteries' capacity (their mean).
- Metered: NetworkManager's ``Metered`` property over D-Bus (``busctl``, systemd's D-Bus tool), where both
  are present: yes and guess-yes count as metered; the configuration can say yes or no instead of auto.
- Suspend: CLOCK_BOOTTIME runs on through a suspend and CLOCK_MONOTONIC does not; the gap between them
  growing by more than a few seconds between two looks means the machine slept.
- Network: the set of the interfaces' addresses (netlink) changing means another network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Manners", "Power", "power", "metered", "addresses", "SuspendWatch", "hold_back", "MANNERS_META"]

MANNERS_META = "manners"  # device meta row: {"battery_below": PERCENT, "metered": "auto" | "yes" | "no"}
DEFAULT_BATTERY_BELOW = 20
MANNERS_SECONDS = 3.0  # between looks at the power supply, the network's metering and the clocks
SUSPEND_GAP = 5.0  # seconds of sleep that count as a suspend
NM_METERED_YES, NM_METERED_GUESS_YES = 1, 3


@dataclass(frozen=True, slots=True)
class Manners:
    battery_below: int = DEFAULT_BATTERY_BELOW  # percent; 0: never hold back for the battery
    metered: str = "auto"  # auto (ask NetworkManager), yes, no

    @classmethod
    def from_json(cls, value: dict[str, Any] | None) -> Manners:
        value = value or {}
        return cls(int(value.get("battery_below", DEFAULT_BATTERY_BELOW)), str(value.get("metered", "auto")))

    def to_json(self) -> dict[str, Any]:
        return {"battery_below": self.battery_below, "metered": self.metered}


@dataclass(frozen=True, slots=True)
class Power:
    on_battery: bool
    percent: int | None  # None: no battery


def power(root: Path | None = None) -> Power:
    """What the kernel says of the machine's power supplies; a machine with none is on mains."""
    root = root or Path(os.environ.get("PORTAL_POWER_SUPPLY", "/sys/class/power_supply"))
    mains, discharging, charges = False, False, []

    def read(path: Path) -> str:
        try:
            return path.read_text().strip()
        except OSError:
            return ""

    for supply in sorted(root.glob("*")) if root.is_dir() else []:
        kind = read(supply / "type")
        if kind == "Mains" and read(supply / "online") == "1":
            mains = True
        elif kind == "Battery":
            discharging |= read(supply / "status") == "Discharging"
            if read(supply / "capacity").isdigit():
                charges.append(int(read(supply / "capacity")))
    percent = round(sum(charges) / len(charges)) if charges else None
    return Power(discharging and not mains, percent)


def metered() -> bool | None:
    """Whether NetworkManager says the network is metered; None where it cannot be asked."""
    busctl = shutil.which("busctl")
    if busctl is None:
        return None
    try:
        done = subprocess.run(
            [busctl, "--system", "get-property", "org.freedesktop.NetworkManager", "/org/freedesktop/NetworkManager",
             "org.freedesktop.NetworkManager", "Metered"],
            capture_output=True, text=True, timeout=2,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = done.stdout.split()
    if done.returncode or len(parts) != 2 or not parts[1].isdigit():
        return None
    return int(parts[1]) in (NM_METERED_YES, NM_METERED_GUESS_YES)


def hold_back(manners: Manners, supply: Power, network_metered: bool | None) -> str | None:
    """Why background work should wait now, or None."""
    if supply.on_battery and supply.percent is not None and supply.percent < manners.battery_below:
        return f"on battery ({supply.percent}%, below {manners.battery_below}%)"
    if manners.metered == "yes" or (manners.metered == "auto" and network_metered):
        return "on a metered network"
    return None


def held_back(raw: bytes | None) -> str | None:
    """Why background work should wait now, from the device's manners (its MANNERS_META row, ``raw``), the
    power supply and the network (blocking: the network's metering is asked over D-Bus); None: it may go."""
    manners = Manners.from_json(json.loads(raw) if raw else None)
    return hold_back(manners, power(), metered() if manners.metered == "auto" else None)


def addresses() -> frozenset[str] | None:
    """The addresses of this machine's interfaces (in this network namespace), loopback and link-local aside:
    when they change, the network changed (another Wi-Fi, a VPN, a cable). None where netlink will not say."""
    from pyroute2 import IPRoute  # noqa: PLC0415 - netlink, only when portald looks

    try:
        with IPRoute() as ip:
            found = {str(a.get_attr("IFA_ADDRESS")) for a in ip.get_addr()}
    except Exception:  # noqa: BLE001 - a sandbox without netlink: no network watch, nothing else lost
        return None
    return frozenset(a for a in found if a and not a.startswith(("127.", "::1", "fe80:")))


class SuspendWatch:
    """``slept()`` says whether the machine was suspended since the last call (sans-I/O: clocks passed in)."""

    def __init__(self, boottime: float | None = None, monotonic: float | None = None) -> None:
        self._gap = self._gap_of(boottime, monotonic)

    @staticmethod
    def _gap_of(boottime: float | None, monotonic: float | None) -> float:
        boot = time.clock_gettime(time.CLOCK_BOOTTIME) if boottime is None else boottime
        mono = time.monotonic() if monotonic is None else monotonic
        return boot - mono

    def slept(self, boottime: float | None = None, monotonic: float | None = None) -> float:
        """Seconds the machine slept since the last call (0.0 when under SUSPEND_GAP)."""
        gap = self._gap_of(boottime, monotonic)
        slept, self._gap = gap - self._gap, gap
        return slept if slept > SUSPEND_GAP else 0.0
