"""The key file: a device's secrets at rest.

    keyfile = CBOR {"v": 2, "kdf": null | KDF, "box": bytes}
    KDF     = {"alg": "argon2id", "salt": 16 bytes, "t": int, "m": KiB, "p": int}
    box     = inner                                             when kdf is null
            | nonce(12) || AES-256-GCM(Argon2id(pass, KDF), nonce, inner, aad="portal keyfile v1")
    inner   = CBOR {"device": 32 bytes, "identity": {"public", "agreement", "agreement_sig", "convergence",
                    "keyring", "names": bytes, "root": 64 bytes (only where kept, and then under a passphrase)}}

Version 1 (``inner = {"root", "device"}``) reads: such a device keeps its root, as it always did.

Written atomically with mode 0600 (docs/design.md, "Key file").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import encoding
from .errors import BadPassphrase, BadSignature, IntegrityError, UsageError
from .fsutil import write_atomic
from .keys import Identity, IdentityKeys

__all__ = ["KeyFileSecrets", "write_keyfile", "read_keyfile", "keyfile_is_locked"]

_AAD = b"portal keyfile v1"
# Argon2id cost: RFC 9106's second recommended option (64 MiB, t=3, p=4).
ARGON2_TIME = 3
ARGON2_MEMORY_KIB = 64 * 1024
ARGON2_LANES = 4


@dataclass(frozen=True, slots=True)
class KeyFileSecrets:
    identity: IdentityKeys
    device: bytes


def _stretch(passphrase: str, kdf: dict[str, Any]) -> bytes:
    from argon2.low_level import Type, hash_secret_raw  # here: only a passphrase needs it

    return hash_secret_raw(
        passphrase.encode("utf-8"),
        kdf["salt"],
        time_cost=kdf["t"],
        memory_cost=kdf["m"],
        parallelism=kdf["p"],
        hash_len=32,
        type=Type.ID,
    )


def write_keyfile(path: Path, secrets: KeyFileSecrets, passphrase: str | None) -> None:
    keys = secrets.identity
    if keys.root is not None and not passphrase:
        raise UsageError("the identity's root is kept on a device only under a passphrase")
    inner = encoding.encode({"device": secrets.device, "identity": keys.to_fields()})
    if passphrase:
        kdf = {"alg": "argon2id", "salt": os.urandom(16), "t": ARGON2_TIME, "m": ARGON2_MEMORY_KIB, "p": ARGON2_LANES}
        nonce = os.urandom(12)
        box = nonce + AESGCM(_stretch(passphrase, kdf)).encrypt(nonce, inner, _AAD)
    else:
        kdf, box = None, inner
    write_atomic(path, encoding.encode({"v": 2, "kdf": kdf, "box": box}), mode=0o600)


def _load(path: Path) -> dict[str, Any]:
    try:
        outer = encoding.decode(path.read_bytes())
        if outer.get("v") not in (1, 2):
            raise IntegrityError(f"key file {path}: unknown version {outer.get('v')!r}")
        return dict(outer)
    except (encoding.DecodeError, AttributeError) as exc:
        raise IntegrityError(f"key file {path} is damaged") from exc


def keyfile_is_locked(path: Path) -> bool:
    return _load(path)["kdf"] is not None


def read_keyfile(path: Path, passphrase: str | None) -> KeyFileSecrets:
    outer = _load(path)
    kdf, box = outer["kdf"], outer["box"]
    if kdf is not None:
        if not passphrase:
            raise BadPassphrase("the key file is protected: give a passphrase (--passphrase-file or PORTAL_PASSPHRASE)")
        try:
            inner = AESGCM(_stretch(passphrase, kdf)).decrypt(box[:12], box[12:], _AAD)
        except InvalidTag as exc:
            raise BadPassphrase("wrong passphrase for the key file") from exc
    else:
        inner = box
    try:
        fields = encoding.decode(inner)
        if outer["v"] == 1:  # from before the root could be left off: it is kept, as it was
            return KeyFileSecrets(IdentityKeys.of(Identity(fields["root"]), keep_root=True), fields["device"])
        return KeyFileSecrets(IdentityKeys.from_fields(fields["identity"]), fields["device"])
    except (encoding.DecodeError, KeyError, TypeError, ValueError, BadSignature) as exc:
        raise IntegrityError(f"key file {path} is damaged") from exc
