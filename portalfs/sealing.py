"""Convergent sealing of chunks and tree nodes (docs/design.md, "Sealed objects").

    pid    = BLAKE3(plaintext)                                  32 bytes
    key    = BLAKE3-keyed(secret, pid)                          32 bytes
    body   = flags(1) || payload        flags bit 0: payload is a zstd frame of the plaintext
    nonce  = BLAKE3-keyed(key, body)[0:12]    when compressed: distinct frames, distinct nonces
           | BLAKE3-keyed(key, 0x00)[0:12]    when stored: the body is the plaintext, fixed by the key
    sealed = 0x01 || nonce(12) || AES-256-GCM(key, nonce, body, aad=0x01)
    cid    = BLAKE3(sealed)                                     the object id

``secret`` is the identity's convergence secret for file chunks and the portal's
tree secret for nodes. The same plaintext under the same secret always seals to
the same bytes, so duplicates are stored once. zstd (level 1) is tried only when
a sample of the plaintext compresses (``worth_compressing``: incompressible
data, a third of the work of sealing it, is stored as it is without an
attempt), and used only when its frame is shorter than the plaintext. Both
depend on the plaintext alone, so sealing stays convergent.

Pure functions, safe to call from many threads: each thread gets its own zstd
contexts (python-zstandard contexts must not be shared between threads).
"""

from __future__ import annotations

import threading
from typing import Any

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import CorruptObject

__all__ = [
    "SEAL_VERSION",
    "MAX_PLAINTEXT",
    "ChunkRef",
    "seal",
    "unseal",
    "object_id",
    "plaintext_hash",
]

SEAL_VERSION = 0x01
ZSTD_LEVEL = 1
FLAG_ZSTD = 0x01
NONCE_LEN = 12
TAG_LEN = 16
HEADER_LEN = 1 + NONCE_LEN
OVERHEAD = HEADER_LEN + 1 + TAG_LEN
# Upper bound on one object's plaintext; readers refuse anything larger.
MAX_PLAINTEXT = 16 * 1024 * 1024
SAMPLE_PIECES = 4  # pieces of the plaintext, evenly spaced, that decide whether zstd is tried on the whole
SAMPLE_PIECE = 4096  # bytes in each
SAMPLE_GAIN = 0.97  # zstd is tried when the sample compresses below this share of its size
# Past this, the flags byte and the payload are encrypted in two steps into the sealed buffer, not first
# joined into a second buffer of the payload's size: on one thread, sealing random 1 MiB chunks took 1.55 s
# per GiB with that buffer (0.9 s of it in the kernel, mapping and faulting its pages) and 0.55 s without.
STREAM_SEAL_FROM = 64 * 1024

_AAD = bytes([SEAL_VERSION])
_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_local, "compressor", None)
    if c is None:
        c = _local.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


class ChunkRef:
    """What a reader needs to fetch, decrypt and verify one sealed object: ``cid``, BLAKE3 of the sealed bytes
    (the object's name in every store); ``key``, its AES-256-GCM key; ``pid``, BLAKE3 of its plaintext;
    ``length``, the plaintext's length. Immutable.

    The three hashes are kept as one 96-byte string, not three (a mount holds a ref for every file it has
    seen: about 110 bytes less for each)."""

    __slots__ = ("_hashes", "length")
    _hashes: bytes
    length: int

    def __init__(self, cid: bytes, key: bytes, pid: bytes, length: int) -> None:
        if len(cid) != 32 or len(key) != 32 or len(pid) != 32:
            raise ValueError("chunk reference hashes must be 32 bytes")
        object.__setattr__(self, "_hashes", b"".join((cid, key, pid)))
        object.__setattr__(self, "length", length)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a ChunkRef is immutable: cannot set {name}")

    __delattr__ = __setattr__  # type: ignore[assignment]

    @property
    def cid(self) -> bytes:
        return self._hashes[:32]

    @property
    def key(self) -> bytes:
        return self._hashes[32:64]

    @property
    def pid(self) -> bytes:
        return self._hashes[64:]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChunkRef):
            return NotImplemented
        return self is other or (self._hashes == other._hashes and self.length == other.length)

    def __hash__(self) -> int:
        return hash((self._hashes, self.length))

    def __reduce__(self) -> tuple[type[ChunkRef], tuple[bytes, bytes, bytes, int]]:
        return ChunkRef, (self.cid, self.key, self.pid, self.length)

    def __repr__(self) -> str:
        return f"ChunkRef(cid={self.cid!r}, key={self.key!r}, pid={self.pid!r}, length={self.length!r})"

    def to_cbor(self) -> list[Any]:
        return [self.cid, self.key, self.pid, self.length]

    @classmethod
    def from_cbor(cls, value: object) -> ChunkRef:
        if not (isinstance(value, list) and len(value) == 4):
            raise ValueError("a chunk reference is a 4-element array")
        cid, key, pid, length = value
        if not (isinstance(cid, bytes) and isinstance(key, bytes) and isinstance(pid, bytes)):
            raise ValueError("chunk reference fields must be byte strings")
        if len(cid) != 32 or len(key) != 32 or len(pid) != 32:
            raise ValueError("chunk reference hashes must be 32 bytes")
        if not isinstance(length, int) or not 0 <= length <= MAX_PLAINTEXT:
            raise ValueError("chunk reference length out of range")
        return cls(cid, key, pid, length)


def object_id(sealed: bytes | bytearray | memoryview) -> bytes:
    return blake3.blake3(sealed).digest()


def plaintext_hash(plaintext: bytes | memoryview) -> bytes:
    return blake3.blake3(plaintext).digest()


def worth_compressing(plaintext: bytes | memoryview) -> bool:
    """Whether zstd is worth a try on ``plaintext``: a plaintext of up to twice the sample is simply tried;
    a larger one when SAMPLE_PIECES pieces of SAMPLE_PIECE bytes, evenly spaced, compress together below
    SAMPLE_GAIN of their size (random or already compressed data does not: it is stored as it is)."""
    size = len(plaintext)
    if size <= 2 * SAMPLE_PIECES * SAMPLE_PIECE:
        return True
    step = size // SAMPLE_PIECES
    view = memoryview(plaintext)
    sample = b"".join(view[i * step : i * step + SAMPLE_PIECE] for i in range(SAMPLE_PIECES))
    return len(_compressor().compress(sample)) < SAMPLE_GAIN * len(sample)


def seal(secret: bytes, plaintext: bytes | memoryview, pid: bytes | None = None) -> tuple[ChunkRef, bytearray]:
    """Seal ``plaintext`` convergently under ``secret``; return its reference and sealed bytes.

    The sealed bytes come back as a ``bytearray`` (built in place, not copied);
    treat them as read-only.

    ``pid`` may be passed when the caller has already hashed the plaintext.
    """
    if len(plaintext) > MAX_PLAINTEXT:
        raise ValueError(f"plaintext of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT}")
    if pid is None:
        pid = plaintext_hash(plaintext)
    key = blake3.blake3(pid, key=secret).digest()
    frame = _compressor().compress(plaintext) if worth_compressing(plaintext) else None
    payload: bytes | memoryview
    if frame is not None and len(frame) < len(plaintext):
        flags, payload = b"\x01", frame
        nonce = blake3.blake3(flags, key=key).update(frame).digest(length=NONCE_LEN)
    else:
        flags, payload = b"\x00", plaintext
        nonce = blake3.blake3(flags, key=key).digest(length=NONCE_LEN)
    sealed = bytearray(HEADER_LEN + 1 + len(payload) + TAG_LEN)
    sealed[0:1] = _AAD
    sealed[1:HEADER_LEN] = nonce
    out = memoryview(sealed)
    if len(payload) < STREAM_SEAL_FROM:
        AESGCM(key).encrypt_into(nonce, flags + payload, _AAD, out[HEADER_LEN:])
    else:  # the same bytes (GCM encrypts a stream), without joining flags and payload first
        encryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(_AAD)
        encryptor.update_into(flags, out[HEADER_LEN:])
        encryptor.update_into(payload, out[HEADER_LEN + 1 :])
        encryptor.finalize()
        out[-TAG_LEN:] = encryptor.tag
    return ChunkRef(object_id(sealed), key, pid, len(plaintext)), sealed


def unseal(
    ref: ChunkRef, sealed: bytes | bytearray, what: str = "object", id_checked: bool = False
) -> bytes | memoryview:
    """Open ``sealed`` with ``ref``; verify its id (unless ``id_checked``), its tag and its length, or raise
    CorruptObject.

    ``id_checked``: the id needs no check here, because the store's ``get`` has just verified it, or because
    the bytes are the device's own (docs/design.md, section 4, "What a reader checks": the tag, under a key
    the store never held, already authenticates them). The plaintext is not hashed again: the ciphertext is
    fixed by the id or the tag, and with it the plaintext.
    """
    name = f"{what} {ref.cid.hex()}"
    if not id_checked and object_id(sealed) != ref.cid:
        raise CorruptObject(f"{name}: bytes do not match the object id")
    if len(sealed) < OVERHEAD or sealed[0] != SEAL_VERSION:
        raise CorruptObject(f"{name}: unknown sealed-object version")
    view = memoryview(sealed)
    body = bytearray(len(sealed) - HEADER_LEN - TAG_LEN)
    try:
        AESGCM(ref.key).decrypt_into(view[1:HEADER_LEN], view[HEADER_LEN:], _AAD, body)
    except InvalidTag as exc:
        raise CorruptObject(f"{name}: authentication tag does not verify") from exc
    flags = body[0]
    if flags & ~FLAG_ZSTD:
        raise CorruptObject(f"{name}: unknown flags {flags:#04x}")
    payload = memoryview(body)[1:]  # no copy
    plaintext: bytes | memoryview
    if flags & FLAG_ZSTD:
        try:
            plaintext = _decompressor().decompress(payload, max_output_size=MAX_PLAINTEXT)
        except zstandard.ZstdError as exc:
            raise CorruptObject(f"{name}: compressed payload is damaged") from exc
    else:
        plaintext = payload
    if len(plaintext) != ref.length:
        raise CorruptObject(f"{name}: plaintext is not the length its reference gives")
    return plaintext
