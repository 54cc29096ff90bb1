from __future__ import annotations

import stat
from pathlib import Path

import pytest

from portalfs import encoding
from portalfs.errors import BadPassphrase, BadRecoveryPhrase, RootNotKept, UsageError
from portalfs.keyfile import KeyFileSecrets, keyfile_is_locked, read_keyfile, write_keyfile
from portalfs.keys import DOMAIN_AGREEMENT, Identity, IdentityKeys, verify_signature

IDENTITY = Identity(b"r" * 64)
SECRETS = KeyFileSecrets(IdentityKeys.of(IDENTITY, keep_root=False), device=b"d" * 32)
KEPT = KeyFileSecrets(IdentityKeys.of(IDENTITY, keep_root=True), device=b"d" * 32)


def test_plain_and_protected_key_files(tmp_path: Path) -> None:
    plain, locked = tmp_path / "plain", tmp_path / "locked"
    write_keyfile(plain, SECRETS, None)
    write_keyfile(locked, KEPT, "correct horse")
    assert stat.S_IMODE(plain.stat().st_mode) == 0o600 == stat.S_IMODE(locked.stat().st_mode)
    assert not keyfile_is_locked(plain) and keyfile_is_locked(locked)
    assert read_keyfile(plain, None) == SECRETS
    assert read_keyfile(locked, "correct horse") == KEPT
    assert IDENTITY.root not in locked.read_bytes()
    with pytest.raises(BadPassphrase, match="wrong passphrase"):
        read_keyfile(locked, "wrong horse")
    with pytest.raises(BadPassphrase, match="protected"):
        read_keyfile(locked, None)


def test_the_root_is_not_at_rest_unless_kept_under_a_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    write_keyfile(path, SECRETS, None)
    assert IDENTITY.root not in path.read_bytes()
    assert IDENTITY.signing_key.private_bytes_raw() not in path.read_bytes()
    keys = read_keyfile(path, None).identity
    assert (keys.public, keys.keyring_key, keys.agreement_public) == (
        IDENTITY.public,
        IDENTITY.keyring_key,
        IDENTITY.agreement_public,
    )
    verify_signature(keys.public, keys.agreement_sig, DOMAIN_AGREEMENT + keys.agreement_public, "agreement key")
    with pytest.raises(RootNotKept):
        keys.signing_key  # noqa: B018 - the property raises
    assert keys.with_root(IDENTITY.root).signing_key.public_key() == IDENTITY.signing_key.public_key()
    with pytest.raises(BadRecoveryPhrase, match="another identity"):
        keys.with_root(b"x" * 64)
    with pytest.raises(UsageError, match="only under a passphrase"):
        write_keyfile(tmp_path / "bare", KEPT, None)


def test_a_version_1_key_file_reads_and_keeps_its_root(tmp_path: Path) -> None:
    path = tmp_path / "old"
    inner = encoding.encode({"root": IDENTITY.root, "device": b"d" * 32})
    path.write_bytes(encoding.encode({"v": 1, "kdf": None, "box": inner}))
    assert read_keyfile(path, None).identity.root == IDENTITY.root
    assert read_keyfile(path, None).identity.signing_key.public_key() == IDENTITY.signing_key.public_key()
