"""Laptop manners: power supplies read from a sysfs-shaped directory, the rule, and suspend detection."""

from __future__ import annotations

from pathlib import Path

from portalfs.daemon.manners import Manners, Power, SuspendWatch, hold_back, power


def supply(root: Path, name: str, **files: str) -> None:
    (root / name).mkdir(parents=True)
    for key, value in files.items():
        (root / name / key).write_text(value + "\n")


def test_power_reads_batteries_and_mains(tmp_path: Path) -> None:
    assert power(tmp_path / "none") == Power(False, None)  # a desktop: no supplies listed, mains
    supply(tmp_path, "BAT0", type="Battery", status="Discharging", capacity="14")
    supply(tmp_path, "BAT1", type="Battery", status="Discharging", capacity="30")
    supply(tmp_path, "AC", type="Mains", online="0")
    assert power(tmp_path) == Power(True, 22)
    (tmp_path / "AC" / "online").write_text("1\n")
    assert power(tmp_path) == Power(False, 22)


def test_what_holds_background_sync_back() -> None:
    manners = Manners()
    assert hold_back(manners, Power(True, 10), None) == "on battery (10%, below 20%)"
    assert hold_back(manners, Power(True, 50), None) is None
    assert hold_back(manners, Power(False, 10), None) is None  # charging
    assert hold_back(manners, Power(False, None), True) == "on a metered network"
    assert hold_back(Manners(metered="no"), Power(False, None), True) is None
    assert hold_back(Manners(metered="yes"), Power(False, None), None) == "on a metered network"
    assert hold_back(Manners(battery_below=0), Power(True, 1), False) is None
    assert Manners.from_json(Manners(35, "no").to_json()) == Manners(35, "no")


def test_a_suspend_shows_as_boottime_running_ahead_of_the_monotonic_clock() -> None:
    watch = SuspendWatch(boottime=1000.0, monotonic=900.0)
    assert watch.slept(boottime=1003.0, monotonic=903.0) == 0.0  # both ran: awake
    assert watch.slept(boottime=1600.0, monotonic=904.0) == 596.0  # boottime ran on alone: asleep
    assert watch.slept(boottime=1601.0, monotonic=905.0) == 0.0
