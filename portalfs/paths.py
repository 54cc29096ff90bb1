"""Where a device keeps its state.

``PORTAL_HOME`` overrides everything: data and configuration both live under
it, so two different ``PORTAL_HOME`` values on one machine are two independent
devices. Without it, data lives in ``$XDG_DATA_HOME/portal`` (default
``~/.local/share/portal``) and configuration in ``$XDG_CONFIG_HOME/portal``
(default ``~/.config/portal``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

__all__ = ["DeviceHome", "RESERVE_BYTES"]

RESERVE_BYTES = 256 * 1024  # kept for when the data's file system fills (DeviceHome.mind_reserve)


class DeviceHome(NamedTuple):  # not a dataclass: portalctl's front imports this module, and little else
    data: Path
    config: Path

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> DeviceHome:
        env = os.environ if environ is None else environ
        home = env.get("PORTAL_HOME")
        if home:
            root = Path(home).expanduser().absolute()
            return cls(data=root, config=root / "config")
        user_home = Path(env.get("HOME") or Path.home())
        data_base = Path(env.get("XDG_DATA_HOME") or user_home / ".local" / "share")
        config_base = Path(env.get("XDG_CONFIG_HOME") or user_home / ".config")
        return cls(data=data_base / "portal", config=config_base / "portal")

    @property
    def keys(self) -> Path:
        return self.data / "keys"

    @property
    def secrets_file(self) -> Path:
        return self.keys / "secrets"

    @property
    def state_db(self) -> Path:
        return self.data / "state.db"

    @property
    def store(self) -> Path:
        return self.data / "store"

    @property
    def lock_file(self) -> Path:
        return self.data / "lock"

    @property
    def locks(self) -> Path:
        return self.data / "locks"

    @property
    def staging(self) -> Path:
        return self.data / "staging"

    @property
    def mounts(self) -> Path:
        return self.data / "mounts"

    @property
    def logs(self) -> Path:
        return self.data / "logs"

    @property
    def reserve(self) -> Path:
        return self.data / "reserve"

    def mind_reserve(self, give_back: bool = False) -> None:
        """Keep RESERVE_BYTES of the data's file system for when it fills: given back to a command that frees
        space (``give_back``: gc) when less than that is free, so that it can open its databases and record
        what it deletes; taken again by any command once four times that is free. Best effort: a file
        system that cannot hold it goes without."""
        from .errors import StorageError
        from .fsutil import write_atomic  # not at the top: portalctl's front imports this module, and little else

        try:
            stat = os.statvfs(self.data)
            free = stat.f_bavail * stat.f_frsize
            if give_back and free < RESERVE_BYTES:
                self.reserve.unlink(missing_ok=True)
            elif free > 4 * RESERVE_BYTES and not self.reserve.exists():
                write_atomic(self.reserve, bytes(RESERVE_BYTES), mode=0o600, fsync=False)
        except (OSError, StorageError):
            pass

    def ensure(self) -> None:
        for path in (self.data, self.keys, self.config, self.locks, self.mounts, self.logs):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.keys, 0o700)
