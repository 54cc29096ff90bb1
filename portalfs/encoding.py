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

__all__ = ["encode", "decode", "DecodeError"]


class DecodeError(ValueError):
    """The bytes are not the deterministic CBOR encoding of a value."""


def encode(value: Any) -> bytes:
    return cbor2.dumps(value, canonical=True)


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
