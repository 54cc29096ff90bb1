"""Deterministic CBOR, the one serialization of every structured Portal object.

Portal encodes nodes, root records, enrollment certificates and key files as
CBOR in the core deterministic encoding of RFC 8949 section 4.2.1 (shortest
integer forms, definite lengths, map keys sorted by their encoded bytes).
``decode`` is strict: bytes that are not exactly the deterministic encoding of
what they decode to (trailing bytes, a non-shortest form, unsorted keys) are
rejected, so every object has exactly one valid byte string.
"""

from __future__ import annotations

from typing import Any

import cbor2

__all__ = ["encode", "encode_ordered", "encode_array", "key_order", "decode", "DecodeError"]


class DecodeError(ValueError):
    """The bytes are not the deterministic CBOR encoding of a value."""


def encode(value: Any) -> bytes:
    return cbor2.dumps(value, canonical=True)


def encode_ordered(value: Any) -> bytes:
    """``encode(value)`` for a value whose every map already holds its keys in the deterministic order
    (``key_order``): the same bytes, without the encoder sorting each map's keys (a third of the time, for a
    directory of thousands of entries). The caller builds its maps in that order; tests compare with
    ``encode``, and ``decode`` refuses any other order."""
    return cbor2.dumps(value)


def encode_array(items: list[bytes]) -> bytes:
    """The encoding of an array whose items are given already encoded: its head (major type 4 and the
    count, in the shortest form), then the items as they are."""
    count = len(items)
    if count < 24:
        head = bytes([0x80 | count])
    else:
        width = 1 if count < 1 << 8 else 2 if count < 1 << 16 else 4 if count < 1 << 32 else 8
        head = bytes([0x80 | {1: 24, 2: 25, 4: 26, 8: 27}[width]]) + count.to_bytes(width, "big")
    return head + b"".join(items)


def key_order(key: bytes | str) -> tuple[int, int, bytes]:
    """Where ``key`` falls among a map's keys in the deterministic encoding (bytewise order of the encoded
    keys, RFC 8949 4.2.1: byte strings before text, then shorter before longer, then bytewise), for keys
    shorter than 2**64 bytes."""
    raw = key.encode() if isinstance(key, str) else key
    return (2 if isinstance(key, bytes) else 3), len(raw), raw


def decode(data: bytes) -> Any:
    try:
        value = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise DecodeError(f"malformed CBOR: {exc}") from exc
    try:
        canonical = encode(value)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
        raise DecodeError(f"unencodable CBOR value: {exc}") from exc
    if canonical != bytes(data):
        raise DecodeError("CBOR is not in deterministic encoding")
    return value
