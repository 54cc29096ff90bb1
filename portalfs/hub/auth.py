"""Signed hub requests, sans-I/O: what a client signs and what the hub checks.

Every request carries four headers (docs/design.md, "Hub API"):

    Portal-Key        hex Ed25519 public key of the signer (a device, or an edge)
    Portal-Time       ns since the epoch, on the signer's clock
    Portal-Nonce      32 hex digits, never reused
    Portal-Signature  hex Ed25519 signature over the lines (joined by "\\n")
                      DOMAIN || method, path-and-query, time, hex nonce, BLAKE3(body)

The hub refuses a time more than ``CLOCK_SKEW_NS`` from its clock and a nonce it
has seen within twice that window, so a captured request cannot be replayed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import blake3

from ..errors import BadSignature
from ..keys import verify_signature

__all__ = [
    "DOMAIN_REQUEST",
    "CLOCK_SKEW_NS",
    "SignedHeaders",
    "sign_request",
    "request_message",
    "parse_headers",
    "check_time",
    "check_signature",
]

DOMAIN_REQUEST = b"portal hub request v1\x00"
CLOCK_SKEW_NS = 300 * 10**9


@dataclass(frozen=True, slots=True)
class SignedHeaders:
    key: bytes
    time_ns: int
    nonce: bytes
    signature: bytes


def request_message(method: str, target: str, time_ns: int, nonce: bytes, body: bytes) -> bytes:
    return b"\n".join(
        [
            DOMAIN_REQUEST + method.upper().encode(),
            target.encode(),
            str(time_ns).encode(),
            nonce.hex().encode(),
            blake3.blake3(body).digest(),
        ]
    )


def sign_request(sign: object, public: bytes, method: str, target: str, body: bytes) -> dict[str, str]:
    """Headers for a request; ``sign`` maps a message to an Ed25519 signature."""
    now, nonce = time.time_ns(), os.urandom(16)
    signature = sign(request_message(method, target, now, nonce, body))  # type: ignore[operator]
    return {
        "Portal-Key": public.hex(),
        "Portal-Time": str(now),
        "Portal-Nonce": nonce.hex(),
        "Portal-Signature": signature.hex(),
    }


def parse_headers(headers: dict[str, str]) -> SignedHeaders:
    """Read the four headers, or raise BadSignature naming what is wrong."""
    try:
        key = bytes.fromhex(headers["portal-key"])
        time_ns = int(headers["portal-time"])
        nonce = bytes.fromhex(headers["portal-nonce"])
        signature = bytes.fromhex(headers["portal-signature"])
    except KeyError as exc:
        raise BadSignature(f"unsigned request: no {exc.args[0]} header") from None
    except ValueError:
        raise BadSignature("malformed signature headers") from None
    if len(key) != 32 or len(nonce) != 16 or len(signature) != 64:
        raise BadSignature("malformed signature headers")
    return SignedHeaders(key, time_ns, nonce, signature)


class ClockSkew(BadSignature):
    """A request signed at a time too far from the hub's clock: the message says how far, and which way."""


def check_time(signed: SignedHeaders, now_ns: int) -> None:
    off = signed.time_ns - now_ns
    if abs(off) > CLOCK_SKEW_NS:
        way = "ahead of" if off > 0 else "behind"
        raise ClockSkew(
            f"this machine's clock is {abs(off) / 1e9:.0f} s {way} the hub's (at most {CLOCK_SKEW_NS // 10**9} s "
            "apart): set its time (NTP)"
        )


def check_signature(signed: SignedHeaders, method: str, target: str, body: bytes, now_ns: int) -> None:
    check_time(signed, now_ns)
    message = request_message(method, target, signed.time_ns, signed.nonce, body)
    verify_signature(signed.key, signed.signature, message, "request")
