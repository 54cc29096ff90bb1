"""Key material that leaves the device, sealed: grants to identities and links, and the keyring.

A *grant* is what opens a portal: its name and read keys (CBOR). It travels
wrapped, never in the clear (docs/design.md, "Sharing"):

- to an identity: ``eph_pub(32) || AES-256-GCM(k, zero nonce, grant, aad=portal id)`` with
  ``k = BLAKE3.derive_key(CONTEXT_MEMBER_WRAP, X25519(eph, recipient) || eph_pub || recipient_pub)``
  (a fresh ephemeral key per wrap, so the fixed nonce is used once per key);
- to a link: ``nonce(12) || AES-256-GCM(BLAKE3.derive_key(CONTEXT_LINK_WRAP, link secret), nonce, grant,
  aad=link id || portal id)``; the secret lives only in the URL fragment;
- the keyring (every portal of an identity, for recovery): ``nonce(12) || AES-256-GCM(keyring key, nonce,
  CBOR, aad=DOMAIN_KEYRING)``.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .. import encoding
from ..device import Unlocked
from ..errors import IntegrityError, UsageError
from ..keys import DOMAIN_LINK_REDEEM, DeviceKey, derive, x25519_public
from ..root import PortalKeys

__all__ = [
    "Grant",
    "wrap_for_identity",
    "unwrap_for_identity",
    "wrap_for_link",
    "unwrap_for_link",
    "seal_keyring",
    "open_keyring",
    "LinkUrl",
]

CONTEXT_MEMBER_WRAP = "portal 2026-11-21 member key wrap"
CONTEXT_LINK_REDEEM = "portal 2026-12-04 link redeem key"
CONTEXT_LINK_WRAP = "portal 2026-11-21 link key wrap"
DOMAIN_KEYRING = b"portal hub keyring v1\x00"
_ZERO_NONCE = bytes(12)


@dataclass(frozen=True, slots=True)
class Grant:
    name: str
    keys: PortalKeys
    owner: bytes  # the owner identity's public key

    def to_bytes(self) -> bytes:
        return encoding.encode({"name": self.name, "keys": self.keys.to_bytes(), "owner": self.owner})

    @classmethod
    def from_bytes(cls, data: bytes) -> Grant:
        try:
            f = encoding.decode(data)
            return cls(str(f["name"]), PortalKeys.from_bytes(f["keys"]), bytes(f["owner"]))
        except (encoding.DecodeError, KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"malformed portal grant: {exc}") from None


def _raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def wrap_for_identity(recipient: bytes, portal: bytes, grant: Grant) -> bytes:
    ephemeral = X25519PrivateKey.generate()
    eph_pub = _raw(ephemeral.public_key())
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    key = derive(CONTEXT_MEMBER_WRAP, shared + eph_pub + recipient)
    return eph_pub + AESGCM(key).encrypt(_ZERO_NONCE, grant.to_bytes(), portal)


def unwrap_for_identity(secrets: Unlocked, portal: bytes, wrapped: bytes) -> Grant:
    """Opened with whichever of the identity's agreement keys it was wrapped to (one of an older generation's,
    for a grant made before the identity's newest generation)."""
    eph_pub, sealed = wrapped[:32], wrapped[32:]
    for agreement in secrets.agreement_keys:
        try:
            shared = agreement.exchange(X25519PublicKey.from_public_bytes(eph_pub))
            key = derive(CONTEXT_MEMBER_WRAP, shared + eph_pub + x25519_public(agreement))
            plain = AESGCM(key).decrypt(_ZERO_NONCE, sealed, portal)
        except (InvalidTag, ValueError):
            continue
        return Grant.from_bytes(plain)
    raise IntegrityError("the portal's key was not wrapped for this identity")


def wrap_for_link(secret: bytes, link: bytes, portal: bytes, grant: Grant) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(derive(CONTEXT_LINK_WRAP, secret)).encrypt(nonce, grant.to_bytes(), link + portal)


def link_redeem_key(secret: bytes) -> DeviceKey:
    """The Ed25519 key a link's secret derives: the hub keeps its public half, and a redeem must be signed by it,
    so that knowing the link id (it travels in URL paths) is not enough to use a link up."""
    return DeviceKey(derive(CONTEXT_LINK_REDEEM, secret))


def redeem_proof(secret: bytes, link: bytes, device: bytes) -> bytes:
    """Proof, for ``device``'s redeem of ``link``, that it knows the link's secret."""
    return link_redeem_key(secret).sign(DOMAIN_LINK_REDEEM + link + device)


def unwrap_for_link(secret: bytes, link: bytes, portal: bytes, wrapped: bytes) -> Grant:
    try:
        plain = AESGCM(derive(CONTEXT_LINK_WRAP, secret)).decrypt(wrapped[:12], wrapped[12:], link + portal)
    except (InvalidTag, ValueError) as exc:
        raise IntegrityError("the link's secret does not open its key (is the URL complete?)") from exc
    return Grant.from_bytes(plain)


def seal_keyring(secrets: Unlocked, keyring: dict[str, Any]) -> bytes:
    """Sealed under the keyring key of the newest generation the device holds."""
    return secrets.seal(encoding.encode(keyring), DOMAIN_KEYRING)


def open_keyring(secrets: Unlocked, blob: bytes) -> tuple[dict[str, Any], bool]:
    """The keyring, and whether it was sealed under the newest key generation the device holds."""
    if not blob:
        return {"portals": [], "edges": []}, True
    opened = secrets.open(blob, DOMAIN_KEYRING)
    if opened is None:
        raise IntegrityError("the hub's keyring does not open with this identity (a key generation this device lacks?)")
    value = encoding.decode(opened[0])
    if not isinstance(value, dict):
        raise IntegrityError("malformed keyring")
    return value, opened[1]


@dataclass(frozen=True, slots=True)
class LinkUrl:
    """``portal://HOST:PORT/LINK-ID#SECRET`` (``portals://`` for an https hub): the hub's address, the link id,
    and (fragment) the secret."""

    hub: str  # http://HOST:PORT or https://HOST:PORT
    link: bytes
    secret: bytes

    def __str__(self) -> str:
        secret = base64.urlsafe_b64encode(self.secret).decode().rstrip("=")
        hub = urlsplit(self.hub)
        return f"portal{'s' if hub.scheme == 'https' else ''}://{hub.netloc}/{self.link.hex()}#{secret}"

    @classmethod
    def parse(cls, text: str) -> LinkUrl:
        parts = urlsplit(text)
        try:
            if parts.scheme not in ("portal", "portals") or not parts.netloc:
                raise ValueError
            link = bytes.fromhex(parts.path.strip("/"))
            secret = base64.urlsafe_b64decode(parts.fragment + "=" * (-len(parts.fragment) % 4))
            if len(link) != 16 or len(secret) != 32:
                raise ValueError
        except ValueError:
            raise UsageError(f"{text!r} is not a portal:// link (portal://HOST:PORT/ID#SECRET)") from None
        return cls(f"{'https' if parts.scheme == 'portals' else 'http'}://{parts.netloc}", link, secret)
