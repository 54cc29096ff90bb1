from __future__ import annotations

import stat
from pathlib import Path

import pytest

from portalfs.errors import BadPassphrase
from portalfs.keyfile import KeyFileSecrets, keyfile_is_locked, read_keyfile, write_keyfile

SECRETS = KeyFileSecrets(root=b"r" * 64, device=b"d" * 32)


def test_plain_and_protected_key_files(tmp_path: Path) -> None:
    plain, locked = tmp_path / "plain", tmp_path / "locked"
    write_keyfile(plain, SECRETS, None)
    write_keyfile(locked, SECRETS, "correct horse")
    assert stat.S_IMODE(plain.stat().st_mode) == 0o600 == stat.S_IMODE(locked.stat().st_mode)
    assert not keyfile_is_locked(plain) and keyfile_is_locked(locked)
    assert read_keyfile(plain, None) == SECRETS
    assert read_keyfile(locked, "correct horse") == SECRETS
    assert SECRETS.root not in locked.read_bytes()
    with pytest.raises(BadPassphrase, match="wrong passphrase"):
        read_keyfile(locked, "wrong horse")
    with pytest.raises(BadPassphrase, match="protected"):
        read_keyfile(locked, None)
