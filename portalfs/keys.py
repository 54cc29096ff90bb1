"""The key hierarchy: recovery phrase, identity, purpose keys and devices.

Pure: bytes in, bytes out; no files, no clock (times are parameters).

    entropy (32 random bytes) <-> 24 BIP-39 words (English list)
    root    = BIP-39 seed(words, passphrase)  (PBKDF2-HMAC-SHA512, 2048 rounds, 64 bytes)
    purpose = BLAKE3.derive_key(CONTEXT, root)  for each context in CONTEXTS

See docs/design.md, section "Key hierarchy".
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import Any, Protocol

import blake3
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import encoding
from .errors import BadRecoveryPhrase, BadSignature, RootNotKept

__all__ = [
    "CONTEXT_IDENTITY_SIGNING",
    "CONTEXT_IDENTITY_AGREEMENT",
    "CONTEXT_CONVERGENCE",
    "CONTEXT_KEYRING",
    "Identity",
    "IdentityKeys",
    "DeviceKey",
    "DeviceCertificate",
    "new_entropy_words",
    "root_from_words",
    "fingerprint",
    "derive",
    "public_bytes",
    "verify_signature",
    "x25519_public",
]

# BLAKE3 derive_key contexts (docs/design.md "Key hierarchy"). Never change
# one: every key derived from it, and so every identity, would change.
CONTEXT_IDENTITY_SIGNING = "portal 2026-11-21 identity signing key"
CONTEXT_IDENTITY_AGREEMENT = "portal 2026-11-21 identity agreement key"
CONTEXT_CONVERGENCE = "portal 2026-11-21 convergence secret"
CONTEXT_KEYRING = "portal 2026-11-21 keyring key"
CONTEXT_DEVICE_NAMES = "portal 2026-12-04 device names"  # seals a device's name in its certificate
CONTEXT_RECOVERY = "portal 2026-12-05 identity recovery key"  # X25519: the words open every key generation
CONTEXT_DEVICE_BOX = "portal 2026-12-05 device box key"  # X25519, from a device's key: generations sealed to it
CONTEXT_DEVICE_LOCAL = "portal 2026-12-05 device local key"  # from a device's key: what its state keeps sealed

# Signature domains: every signed byte string starts with one of these.
DOMAIN_ENROLLMENT = b"portal device enrollment v1\x00"
DOMAIN_AGREEMENT = b"portal identity agreement key v1\x00"  # identity signs its X25519 key
DOMAIN_REVOKE = b"portal device revocation v1\x00"  # identity signs a device key it revokes
DOMAIN_WRITE_GRANT = b"portal write grant v1\x00"  # an owner signs portal id || member identity: it may write
DOMAIN_DEVICE_NAME = b"portal device name v1\x00"  # AAD of a sealed name: || the device key
DOMAIN_LINK_REDEEM = b"portal link redeem v1\x00"  # a link's redeem key signs link id || redeeming device key
DOMAIN_DEVICE_BOX = b"portal device box key v1\x00"  # a device signs its box public key


@functools.cache
def _words() -> Any:
    """The BIP-39 English word list, loaded when the words are first used (not by every command)."""
    from mnemonic import Mnemonic

    return Mnemonic("english")


def derive(context: str, material: bytes) -> bytes:
    """32 bytes of BLAKE3 derive_key(context, material)."""
    return blake3.blake3(material, derive_key_context=context).digest()


def new_entropy_words(entropy: bytes) -> str:
    """The 24 recovery words for 32 bytes of entropy."""
    if len(entropy) != 32:
        raise ValueError("entropy must be 32 bytes")
    return str(_words().to_mnemonic(entropy))


def normalize_words(words: str) -> str:
    return " ".join(words.lower().split())


def root_from_words(words: str, passphrase: str = "") -> bytes:
    """The 64-byte root key of the BIP-39 phrase ``words``; checks the checksum."""
    phrase = normalize_words(words)
    count = len(phrase.split())
    if count != 24:
        raise BadRecoveryPhrase(f"recovery phrase has {count} words, expected 24")
    unknown = [w for w in phrase.split() if w not in _words().wordlist]
    if unknown:
        raise BadRecoveryPhrase(f"recovery phrase: {unknown[0]!r} is not a BIP-39 word")
    if not _words().check(phrase):
        raise BadRecoveryPhrase("recovery phrase checksum does not match (a word is wrong or out of order)")
    return bytes(_words().to_seed(phrase, passphrase))


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes_raw()


def verify_signature(public: bytes, signature: bytes, message: bytes, what: str) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError) as exc:
        raise BadSignature(f"{what}: signature does not verify") from exc


def x25519_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def fingerprint(identity_public: bytes) -> str:
    """Human-comparable fingerprint: 160 bits of BLAKE3(public key), base32 in groups of 4."""
    digest = blake3.blake3(identity_public).digest()[:20]
    text = base64.b32encode(digest).decode("ascii").lower()
    return "-".join(text[i : i + 4] for i in range(0, len(text), 4))


class _Keyed(Protocol):
    @property
    def public(self) -> bytes: ...
    @property
    def agreement_key(self) -> X25519PrivateKey: ...
    @property
    def names_key(self) -> bytes: ...


class _Shows:
    """What an identity shows of its keys: an ``Identity`` (the root) and the ``IdentityKeys`` a device keeps."""

    __slots__ = ()

    @property
    def agreement_public(self: _Keyed) -> bytes:
        return x25519_public(self.agreement_key)

    @property
    def fingerprint(self: _Keyed) -> str:
        return fingerprint(self.public)

    def device_name(self: _Keyed, fields: dict[str, Any]) -> str:
        return open_device_name(self.names_key, self.public, fields)


@dataclass(frozen=True, slots=True)
class Identity(_Shows):
    """Everything derived from the root key. Holds secrets: never log it."""

    root: bytes

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(derive(CONTEXT_IDENTITY_SIGNING, self.root))

    @property
    def agreement_key(self) -> X25519PrivateKey:
        return X25519PrivateKey.from_private_bytes(derive(CONTEXT_IDENTITY_AGREEMENT, self.root))

    @property
    def convergence_secret(self) -> bytes:
        return derive(CONTEXT_CONVERGENCE, self.root)

    @property
    def keyring_key(self) -> bytes:
        return derive(CONTEXT_KEYRING, self.root)

    @property
    def public(self) -> bytes:
        return public_bytes(self.signing_key)

    def enroll(self, device_public: bytes, name: str, time_ns: int) -> DeviceCertificate:
        """A version-2 certificate: the device's name sealed for the identity's own devices (``device_name``),
        so that the hub and everyone it shows certificates to see a key, not a host name."""
        nonce = os.urandom(12)
        sealed = nonce + AESGCM(self.names_key).encrypt(nonce, name.encode(), DOMAIN_DEVICE_NAME + device_public)
        body = encoding.encode(
            {"v": 2, "identity": self.public, "device": device_public, "name_sealed": sealed, "time": time_ns}
        )
        return DeviceCertificate(body=body, signature=self.signing_key.sign(DOMAIN_ENROLLMENT + body))

    @property
    def names_key(self) -> bytes:
        return derive(CONTEXT_DEVICE_NAMES, self.root)

    @property
    def recovery_key(self) -> X25519PrivateKey:
        """What every key generation is also sealed to (docs/design.md, section 2): the words open them all."""
        return X25519PrivateKey.from_private_bytes(derive(CONTEXT_RECOVERY, self.root))


def open_device_name(names_key: bytes, identity_public: bytes, fields: dict[str, Any]) -> str:
    """The name a certificate of this identity gives its device: in clear in a version-1 certificate, opened
    from ``name_sealed`` in a version 2; "" where it does not open (another identity's)."""
    if "name" in fields:
        return str(fields["name"])
    sealed = fields.get("name_sealed")
    if not isinstance(sealed, bytes) or len(sealed) < 28 or fields.get("identity") != identity_public:
        return ""
    try:
        plain = AESGCM(names_key).decrypt(sealed[:12], sealed[12:], DOMAIN_DEVICE_NAME + fields["device"])
    except (InvalidTag, TypeError, ValueError):
        return ""
    return plain.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class IdentityKeys(_Shows):
    """What a device keeps of its identity: the purpose keys it uses every day, and the root (hence the
    identity's signing key) only where the user chose to keep it. Holds secrets: never log it.

    Without the root a device cannot enroll another device, revoke one or grant write: those take the 24
    words (``with_root``), so that a device revoked cannot certify a new device key of its own."""

    public: bytes  # the identity's signing public key
    agreement: bytes  # X25519 private key
    agreement_sig: bytes  # the identity's signature of its agreement public key, made while the root was at hand
    convergence_secret: bytes
    keyring_key: bytes
    names_key: bytes
    root: bytes | None = None

    @classmethod
    def of(cls, identity: Identity, keep_root: bool) -> IdentityKeys:
        agreement_public = identity.agreement_public
        return cls(
            identity.public,
            derive(CONTEXT_IDENTITY_AGREEMENT, identity.root),
            identity.signing_key.sign(DOMAIN_AGREEMENT + agreement_public),
            identity.convergence_secret,
            identity.keyring_key,
            identity.names_key,
            identity.root if keep_root else None,
        )

    def to_fields(self) -> dict[str, bytes]:
        """As the key file and an approval keep them (the root only where there is one)."""
        fields = {
            "public": self.public,
            "agreement": self.agreement,
            "agreement_sig": self.agreement_sig,
            "convergence": self.convergence_secret,
            "keyring": self.keyring_key,
            "names": self.names_key,
        }
        if self.root is not None:
            fields["root"] = self.root
        return fields

    @classmethod
    def from_fields(cls, f: dict[str, Any]) -> IdentityKeys:
        keys = cls(f["public"], f["agreement"], f["agreement_sig"], f["convergence"], f["keyring"], f["names"],
                   f.get("root"))  # fmt: skip
        if not all(isinstance(v, bytes) for v in keys.to_fields().values()):
            raise TypeError("identity keys are bytes")
        verify_signature(keys.public, keys.agreement_sig, DOMAIN_AGREEMENT + keys.agreement_public, "agreement key")
        return keys

    def without_root(self) -> IdentityKeys:
        return dataclasses.replace(self, root=None)

    def with_root(self, root: bytes) -> IdentityKeys:
        """These keys with the root the 24 words gave (for one command: nothing is written)."""
        if Identity(root).public != self.public:
            raise BadRecoveryPhrase("these words are another identity's, not this device's")
        return dataclasses.replace(self, root=root)

    def rooted(self) -> Identity:
        """The identity the root derives: what signs for it, or RootNotKept where this device has no root."""
        if self.root is None:
            raise RootNotKept(
                "this device does not keep the identity's root: give the 24 recovery words on standard input"
            )
        return Identity(self.root)

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        return self.rooted().signing_key

    @property
    def agreement_key(self) -> X25519PrivateKey:
        return X25519PrivateKey.from_private_bytes(self.agreement)


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """A device's own random Ed25519 key."""

    private: bytes

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.private)

    @property
    def public(self) -> bytes:
        return public_bytes(self.signing_key)

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message)

    @property
    def box_key(self) -> X25519PrivateKey:
        """The device's X25519 key, derived from its own: its identity's key generations are sealed to it."""
        return X25519PrivateKey.from_private_bytes(derive(CONTEXT_DEVICE_BOX, self.private))

    @property
    def box_public(self) -> bytes:
        return x25519_public(self.box_key)

    @property
    def box_sig(self) -> bytes:
        """The device's signature of its box key, which the hub shows its identity's other devices."""
        return self.sign(DOMAIN_DEVICE_BOX + self.box_public)

    def seal_local(self, what: bytes, plain: bytes) -> bytes:
        """``plain`` sealed under a key only this device's key derives (for its state database)."""
        nonce = os.urandom(12)
        return nonce + AESGCM(derive(CONTEXT_DEVICE_LOCAL, self.private)).encrypt(nonce, plain, what)

    def open_local(self, what: bytes, sealed: bytes) -> bytes:
        return AESGCM(derive(CONTEXT_DEVICE_LOCAL, self.private)).decrypt(sealed[:12], sealed[12:], what)


@dataclass(frozen=True, slots=True)
class DeviceCertificate:
    """An identity's signature enrolling one device key."""

    body: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        return encoding.encode({"body": self.body, "sig": self.signature})

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceCertificate:
        outer = encoding.decode(data)
        return cls(body=outer["body"], signature=outer["sig"])

    def fields(self) -> dict[str, Any]:
        return dict(encoding.decode(self.body))

    def verify(self, identity_public: bytes) -> dict[str, Any]:
        """Check the signature by ``identity_public``; return the certificate fields."""
        fields = self.fields()
        if fields.get("identity") != identity_public:
            raise BadSignature("device certificate names another identity")
        verify_signature(identity_public, self.signature, DOMAIN_ENROLLMENT + self.body, "device certificate")
        return fields
