"""Where a device keeps its state.

``PORTAL_HOME`` overrides everything: data and configuration both live under
it, so two different ``PORTAL_HOME`` values on one machine are two independent
devices. Without it, data lives in ``$XDG_DATA_HOME/portal`` (default
``~/.local/share/portal``) and configuration in ``$XDG_CONFIG_HOME/portal``
(default ``~/.config/portal``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DeviceHome"]


@dataclass(frozen=True, slots=True)
class DeviceHome:
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

    def ensure(self) -> None:
        for path in (self.data, self.keys, self.config, self.locks, self.mounts, self.logs):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.keys, 0o700)
