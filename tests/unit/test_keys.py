from __future__ import annotations

import pytest

from portalfs.errors import BadRecoveryPhrase, BadSignature
from portalfs.keys import DeviceCertificate, DeviceKey, Identity, fingerprint, new_entropy_words, root_from_words

WORDS = new_entropy_words(bytes(range(32)))


def test_words_round_trip_to_the_same_identity() -> None:
    a = Identity(root_from_words(WORDS))
    b = Identity(root_from_words("  " + WORDS.upper().replace(" ", "   ") + "\n"))
    assert a.public == b.public and a.fingerprint == b.fingerprint


def test_purpose_keys_are_distinct() -> None:
    identity = Identity(root_from_words(WORDS))
    keys = {identity.convergence_secret, identity.keyring_key, identity.public, identity.agreement_public}
    assert len(keys) == 4


def test_bip39_passphrase_gives_another_identity() -> None:
    assert Identity(root_from_words(WORDS, "extra")).public != Identity(root_from_words(WORDS)).public


@pytest.mark.parametrize(
    "words, message",
    [
        (" ".join(WORDS.split()[:23]), "23 words"),
        (" ".join(WORDS.split()[:23] + ["notaword"]), "not a BIP-39 word"),
        (" ".join(WORDS.split()[1:] + WORDS.split()[:1]), "checksum"),
    ],
)
def test_bad_phrases_are_rejected(words: str, message: str) -> None:
    with pytest.raises(BadRecoveryPhrase, match=message):
        root_from_words(words)


def test_device_enrollment_verifies_and_detects_tampering() -> None:
    identity = Identity(root_from_words(WORDS))
    device = DeviceKey(bytes(32))
    cert = identity.enroll(device.public, "laptop", 1_700_000_000_000_000_000)
    parsed = DeviceCertificate.from_bytes(cert.to_bytes())
    assert parsed.verify(identity.public)["device"] == device.public
    other = Identity(root_from_words(WORDS, "other"))
    with pytest.raises(BadSignature):
        parsed.verify(other.public)
    flipped = parsed.body[:-1] + bytes([parsed.body[-1] ^ 1])  # the time's last byte
    forged = DeviceCertificate(flipped, parsed.signature)
    with pytest.raises(BadSignature):
        forged.verify(identity.public)


def test_fingerprint_format() -> None:
    fp = fingerprint(bytes(32))
    assert len(fp.split("-")) == 8 and all(len(g) == 4 for g in fp.split("-"))


def test_a_device_name_is_sealed_for_its_identity_and_an_older_certificate_keeps_its_clear_name() -> None:
    from portalfs import encoding
    from portalfs.keys import DOMAIN_ENROLLMENT

    identity, other = Identity(bytes(range(64))), Identity(bytes(64))
    device = DeviceKey(bytes(32))
    cert = identity.enroll(device.public, "alices-laptop", 1)
    fields = cert.verify(identity.public)
    assert fields["v"] == 2 and "name" not in fields and b"alices-laptop" not in cert.to_bytes()
    assert identity.device_name(fields) == "alices-laptop"
    assert other.device_name(fields) == ""  # another identity's certificate: the name does not open
    moved = dict(fields, device=DeviceKey(bytes([1]) * 32).public)  # the sealed name bound to its device
    assert identity.device_name(moved) == ""
    body = encoding.encode({"v": 1, "identity": identity.public, "device": device.public, "name": "old", "time": 1})
    old = DeviceCertificate(body, identity.signing_key.sign(DOMAIN_ENROLLMENT + body))
    assert identity.device_name(old.verify(identity.public)) == "old"  # made before names were sealed
