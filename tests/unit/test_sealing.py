from __future__ import annotations

import copy
import os
import pickle

import blake3
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from portalfs.errors import CorruptObject
from portalfs.sealing import (
    MAX_PLAINTEXT,
    STREAM_SEAL_FROM,
    ChunkRef,
    _compressor,
    object_id,
    seal,
    unseal,
    worth_compressing,
)

SECRET = bytes(range(32))


@given(st.binary(max_size=4096))
def test_seal_round_trips(plaintext: bytes) -> None:
    ref, sealed = seal(SECRET, plaintext)
    assert unseal(ref, sealed) == plaintext
    assert ref.cid == object_id(sealed)
    assert ref.length == len(plaintext)


@given(st.binary(min_size=1, max_size=2048))
def test_sealing_is_convergent_within_a_secret_only(plaintext: bytes) -> None:
    assert seal(SECRET, plaintext) == seal(SECRET, plaintext)
    other, _ = seal(bytes(32), plaintext)
    assert other.cid != seal(SECRET, plaintext)[0].cid


@given(st.binary(min_size=0, max_size=512), st.data())
def test_any_single_bit_flip_is_rejected(plaintext: bytes, data: st.DataObject) -> None:
    ref, sealed = seal(SECRET, plaintext)
    bit = data.draw(st.integers(0, len(sealed) * 8 - 1))
    damaged = bytearray(sealed)
    damaged[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(CorruptObject):
        unseal(ref, bytes(damaged))


def test_a_flip_is_caught_by_the_tag_even_when_the_id_is_trusted() -> None:
    """A reader that is handed a forged id for damaged bytes still rejects them."""
    ref, sealed = seal(SECRET, b"hello world" * 100)
    damaged = bytearray(sealed)
    damaged[-1] ^= 0x80
    forged = ChunkRef(object_id(bytes(damaged)), ref.key, ref.pid, ref.length)
    with pytest.raises(CorruptObject, match="tag"):
        unseal(forged, bytes(damaged))


def test_compressible_data_is_compressed_and_random_data_is_not() -> None:
    text = b"the quick brown fox jumps over the lazy dog\n" * 20000
    _, sealed = seal(SECRET, text)
    assert len(sealed) < len(text) // 10
    noise = os.urandom(100_000)
    _, sealed = seal(SECRET, noise)
    assert len(sealed) == len(noise) + 1 + 12 + 1 + 16  # version, nonce, flags, tag


def test_a_reference_with_the_wrong_length_or_key_is_rejected() -> None:
    """The plaintext is not hashed on a read (the id or the tag fixes it); the length and the key still count."""
    ref, sealed = seal(SECRET, b"payload")
    with pytest.raises(CorruptObject, match="length"):
        unseal(ChunkRef(ref.cid, ref.key, ref.pid, ref.length + 1), sealed)
    with pytest.raises(CorruptObject, match="tag"):
        unseal(ChunkRef(ref.cid, bytes(32), ref.pid, ref.length), sealed, id_checked=True)


def test_oversized_plaintext_is_refused() -> None:
    with pytest.raises(ValueError):
        seal(SECRET, bytes(MAX_PLAINTEXT + 1))


def test_zstd_is_tried_only_where_a_sample_compresses_and_the_choice_is_the_plaintexts_alone() -> None:
    from portalfs.sealing import HEADER_LEN, worth_compressing

    secret = os.urandom(32)
    noise = os.urandom(1 << 20)
    text = b"".join(b"line %d of a log that repeats itself a little\n" % i for i in range(25_000))[: 1 << 20]
    assert not worth_compressing(noise) and worth_compressing(text)
    assert worth_compressing(os.urandom(1000))  # small: simply tried
    for plaintext, compressed in ((noise, False), (text, True)):
        ref, sealed = seal(secret, plaintext)
        assert bytes(seal(secret, plaintext)[1]) == bytes(sealed)  # convergent: the same choice every time
        assert bytes(unseal(ref, sealed)) == plaintext
        assert (len(sealed) < len(plaintext)) is compressed
    # a compressible middle between random pieces where the sample falls: stored as it is, and still opens
    mixed = bytearray(os.urandom(1 << 20))
    mixed[600_000:760_000] = bytes(160_000)  # between the pieces sampled at 512 KiB and 768 KiB
    assert not worth_compressing(mixed)
    ref, sealed = seal(secret, bytes(mixed))
    assert bytes(unseal(ref, sealed)) == bytes(mixed) and len(sealed) > len(mixed) > HEADER_LEN


@pytest.mark.parametrize("size", [STREAM_SEAL_FROM - 2, STREAM_SEAL_FROM - 1, STREAM_SEAL_FROM, 1 << 20])
@pytest.mark.parametrize("kind", ["random", "text"])
def test_a_large_payload_seals_to_the_bytes_of_the_format(size: int, kind: str) -> None:
    """Past STREAM_SEAL_FROM, flags and payload are encrypted in two steps: the bytes are exactly those of
    AES-GCM over flags || payload in one (docs/design.md, section 4), compressed or stored."""
    # hex text compresses to about 0.55 of its size: at 1 MiB, a compressed payload past STREAM_SEAL_FROM
    plaintext = os.urandom(size) if kind == "random" else os.urandom(size).hex().encode()[:size]
    ref, sealed = seal(SECRET, plaintext)
    pid = blake3.blake3(plaintext).digest()
    key = blake3.blake3(pid, key=SECRET).digest()
    frame = _compressor().compress(plaintext) if worth_compressing(plaintext) else None
    body = b"\x01" + frame if frame is not None and len(frame) < size else b"\x00" + plaintext
    assert (body[0] == 1) == (kind == "text")
    assert len(body) - 1 >= STREAM_SEAL_FROM or size < 1 << 20  # at 1 MiB, both kinds in two steps
    nonce = blake3.blake3(body if body[0] else b"\x00", key=key).digest(length=12)
    assert bytes(sealed) == b"\x01" + nonce + AESGCM(key).encrypt(nonce, body, b"\x01")
    assert ref == ChunkRef(object_id(sealed), key, pid, size) and unseal(ref, sealed) == plaintext


def test_a_reference_is_an_immutable_value() -> None:
    """ChunkRef keeps its three hashes as one string: each reads back as given; equal fields, equal refs (and
    hashes); nothing can be set; copies and pickles are equal; a hash that is not 32 bytes is refused."""
    cid, key, pid = (bytes([n]) * 32 for n in (1, 2, 3))
    ref = ChunkRef(cid, key, pid, 9)
    assert (ref.cid, ref.key, ref.pid, ref.length) == (cid, key, pid, 9)
    assert ref == ChunkRef(cid, key, pid, 9) and hash(ref) == hash(ChunkRef(cid, key, pid, 9))
    assert ref != ChunkRef(cid, key, pid, 8) and ref != ChunkRef(key, cid, pid, 9) and ref != (cid, key, pid, 9)
    assert ChunkRef.from_cbor(ref.to_cbor()) == ref and pickle.loads(pickle.dumps(ref)) == copy.deepcopy(ref) == ref
    with pytest.raises(AttributeError):
        ref.length = 10  # type: ignore[misc]
    with pytest.raises(ValueError, match="32 bytes"):
        ChunkRef(cid, key[:31], pid, 9)
