"""Approving a new device from one the identity already has (docs/design.md, section 15, "Approving a device").

Sans-I/O: the code a new device shows, and the identity's keys sealed to it. The new device makes a device
key and a one-time X25519 *box* key, and asks the hub to hold a request for them; the hub names it by a
random id. The code is that id and a check, BLAKE3(device key || box key), so the approving device knows it
certifies the keys the new device showed, whatever the hub says. The approver signs the new device's
certificate (with the identity's root) and seals the identity's keys (never the root) to the box key.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from . import encoding
from .errors import IntegrityError, UsageError, shown
from .keys import IdentityKeys, derive

__all__ = ["REQUEST_ID", "CHECK", "new_box", "box_public", "code", "parse_code", "check_of", "seal_keys", "open_keys"]

REQUEST_ID = 5  # bytes of the hub's request id in a code
CHECK = 10  # bytes of BLAKE3(device || box) in a code: 80 bits, beyond a hub's search for another key pair
CONTEXT_PROVISIONING = "portal 2026-12-04 provisioning box"
_ZERO_NONCE = bytes(12)  # each box is sealed under a key of its own (an ephemeral exchange): one nonce suffices


def new_box() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def box_public(box: X25519PrivateKey) -> bytes:
    return box.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def check_of(device: bytes, box: bytes) -> bytes:
    return blake3.blake3(device + box).digest()[:CHECK]


def code(request: bytes, device: bytes, box: bytes) -> str:
    """What the new device shows: base32 of the request id and the check, in groups of four."""
    text = base64.b32encode(request + check_of(device, box)).decode("ascii").lower()
    return "-".join(text[i : i + 4] for i in range(0, len(text), 4))


def parse_code(text: str) -> tuple[bytes, bytes]:
    """(request id, check) of a code as shown (case, dashes and spaces do not matter)."""
    packed = "".join(c for c in text.upper() if c not in "- ")
    try:
        raw = base64.b32decode(packed)
    except ValueError:
        raw = b""
    if len(raw) != REQUEST_ID + CHECK:
        raise UsageError(f"{shown(text)} is not a device code (24 letters and digits, as `portalctl join` shows)")
    return raw[:REQUEST_ID], raw[REQUEST_ID:]


def seal_keys(keys: IdentityKeys, box: bytes, device: bytes, handed: tuple[int, bytes] | None = None) -> bytes:
    """The identity's keys, without its root, and ``handed``, the newest key generation the approver holds
    (number, seed), sealed to the new device's box key (bound to its device key)."""
    fields: dict[str, Any] = dict(keys.to_fields())
    fields.pop("root", None)
    if handed is not None:
        fields["generation"] = {"number": handed[0], "seed": handed[1]}
    ephemeral = X25519PrivateKey.generate()
    eph_pub = box_public(ephemeral)
    key = derive(CONTEXT_PROVISIONING, ephemeral.exchange(X25519PublicKey.from_public_bytes(box)) + eph_pub + box)
    return eph_pub + AESGCM(key).encrypt(_ZERO_NONCE, encoding.encode(fields), device)


def open_keys(box: X25519PrivateKey, sealed: bytes, device: bytes) -> tuple[IdentityKeys, tuple[int, bytes] | None]:
    """The identity's keys, and the key generation handed over (None: generation 0)."""
    eph_pub = sealed[:32]
    try:
        shared = box.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        key = derive(CONTEXT_PROVISIONING, shared + eph_pub + box_public(box))
        fields = encoding.decode(AESGCM(key).decrypt(_ZERO_NONCE, sealed[32:], device))
        handed = fields.pop("generation", None)
        if handed is not None:
            handed = (int(handed["number"]), bytes(handed["seed"]))
        return IdentityKeys.from_fields(fields), handed
    except (InvalidTag, ValueError, KeyError, TypeError, encoding.DecodeError) as exc:
        raise IntegrityError("the approval's keys do not open for this device") from exc


def new_request_id() -> bytes:
    return os.urandom(REQUEST_ID)
