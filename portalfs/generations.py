"""An identity's key generations (docs/design.md, section 2, "Key generations"), after Keybase's per-user keys.

Sans-I/O. Generation 0 is the keyring and agreement keys the root derives. Revoking a device makes
generation g + 1: a random *seed* from which the new keyring and agreement keys derive, so that what is
sealed from then on opens for no key the revoked device holds. The hub keeps the newest generation's
*record* (public: the identity's signature of its number and agreement key, and the older generations'
keys sealed under the seed, so the newest opens every one) and the seed sealed to each device the identity
keeps (to its box key) and to the identity's recovery key (so the words open it on a new device).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import encoding
from .errors import BadSignature, IntegrityError
from .keys import DOMAIN_AGREEMENT, Identity, derive, verify_signature, x25519_public

__all__ = ["PurposeKeys", "GenerationRecord", "Generation", "agreement_message", "seal_seed", "open_seed"]

CONTEXT_KEYRING = "portal 2026-12-05 generation keyring key"
CONTEXT_AGREEMENT = "portal 2026-12-05 generation agreement key"
CONTEXT_OLDER = "portal 2026-12-05 generation older keys"
CONTEXT_SEAL = "portal 2026-12-05 generation seal"
DOMAIN_GENERATION = b"portal identity generation v1\x00"
_ZERO_NONCE = bytes(12)  # a seal's key is its own (an ephemeral exchange): one nonce suffices


def _number(n: int) -> bytes:
    return n.to_bytes(8, "big")


def agreement_message(number: int, agreement: bytes) -> bytes:
    """What the identity signs of generation ``number``'s agreement key (generation 0: as it always did)."""
    return DOMAIN_AGREEMENT + agreement if number == 0 else DOMAIN_GENERATION + _number(number) + agreement


@dataclass(frozen=True, slots=True)
class PurposeKeys:
    """The keys a generation changes: the keyring key and the agreement (X25519) private key."""

    keyring: bytes
    agreement: bytes

    @classmethod
    def of_seed(cls, seed: bytes) -> PurposeKeys:
        return cls(derive(CONTEXT_KEYRING, seed), derive(CONTEXT_AGREEMENT, seed))

    @property
    def agreement_key(self) -> X25519PrivateKey:
        return X25519PrivateKey.from_private_bytes(self.agreement)


@dataclass(frozen=True, slots=True)
class GenerationRecord:
    """What the hub keeps of a generation: nothing in it opens without the seed."""

    identity: bytes
    number: int
    agreement: bytes  # the generation's agreement public key
    sig: bytes  # the identity's, over agreement_message(number, agreement)
    older: bytes  # nonce || AES-256-GCM(older key, nonce, CBOR [[keyring, agreement], ...] newest first)

    def to_bytes(self) -> bytes:
        return encoding.encode({"v": 1, "identity": self.identity, "g": self.number, "agreement": self.agreement,
                                "sig": self.sig, "older": self.older})  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes) -> GenerationRecord:
        """Parsed and its signature checked (by the identity it names), or IntegrityError."""
        try:
            f = encoding.decode(data)
            if f["v"] != 1 or not isinstance(f["g"], int) or f["g"] < 1:
                raise ValueError("not a generation record of version 1")
            record = cls(bytes(f["identity"]), f["g"], bytes(f["agreement"]), bytes(f["sig"]), bytes(f["older"]))
            verify_signature(record.identity, record.sig, agreement_message(record.number, record.agreement),
                             "key generation")  # fmt: skip
        except (BadSignature, encoding.DecodeError, KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"malformed key generation record: {exc}") from None
        return record

    def aad(self) -> bytes:
        return self.identity + _number(self.number)


@dataclass(frozen=True, slots=True)
class Generation:
    """A generation this device holds: its record, its seed, and every older generation's keys."""

    record: GenerationRecord
    seed: bytes
    older: tuple[PurposeKeys, ...]  # newest first, down to generation 0

    @property
    def number(self) -> int:
        return self.record.number

    @property
    def keys(self) -> PurposeKeys:
        return PurposeKeys.of_seed(self.seed)

    @classmethod
    def make(cls, identity: Identity, number: int, current: tuple[PurposeKeys, ...]) -> Generation:
        """Generation ``number`` (signed with the root), after ``current``: the keys held now, newest first."""
        seed = os.urandom(32)
        agreement = x25519_public(PurposeKeys.of_seed(seed).agreement_key)
        sig = identity.signing_key.sign(agreement_message(number, agreement))
        head = GenerationRecord(identity.public, number, agreement, sig, b"")
        nonce = os.urandom(12)
        plain = encoding.encode([[k.keyring, k.agreement] for k in current])
        older = nonce + AESGCM(derive(CONTEXT_OLDER, seed)).encrypt(nonce, plain, head.aad())
        return cls(GenerationRecord(identity.public, number, agreement, sig, older), seed, current)

    @classmethod
    def open(cls, record: GenerationRecord, seed: bytes) -> Generation:
        """The generation ``seed`` opens, checked against its record (a seed the hub swapped does not open)."""
        if x25519_public(PurposeKeys.of_seed(seed).agreement_key) != record.agreement:
            raise IntegrityError(f"key generation {record.number}: the seed is not the identity's")
        try:
            plain = AESGCM(derive(CONTEXT_OLDER, seed)).decrypt(record.older[:12], record.older[12:], record.aad())
            older = tuple(PurposeKeys(bytes(k), bytes(a)) for k, a in encoding.decode(plain))
        except (InvalidTag, encoding.DecodeError, TypeError, ValueError) as exc:
            raise IntegrityError(f"key generation {record.number}: its older keys do not open") from exc
        if len(older) != record.number:
            raise IntegrityError(f"key generation {record.number} holds {len(older)} older generations")
        return cls(record, seed, older)


def seal_seed(record: GenerationRecord, seed: bytes, holder: bytes) -> bytes:
    """``seed`` sealed to the X25519 public key ``holder`` (a device's box key, or the recovery key)."""
    ephemeral = X25519PrivateKey.generate()
    eph_pub = x25519_public(ephemeral)
    key = derive(CONTEXT_SEAL, ephemeral.exchange(X25519PublicKey.from_public_bytes(holder)) + eph_pub + holder)
    return eph_pub + AESGCM(key).encrypt(_ZERO_NONCE, seed, record.aad() + holder)


def open_seed(record: GenerationRecord, sealed: bytes, holder: X25519PrivateKey) -> bytes:
    mine = x25519_public(holder)
    try:
        eph_pub = sealed[:32]
        key = derive(CONTEXT_SEAL, holder.exchange(X25519PublicKey.from_public_bytes(eph_pub)) + eph_pub + mine)
        return AESGCM(key).decrypt(_ZERO_NONCE, sealed[32:], record.aad() + mine)
    except (InvalidTag, ValueError) as exc:
        raise IntegrityError(f"key generation {record.number} is not sealed to this key") from exc
