"""Edge and device keys, their self-signed certificates, pinning, and the TLS contexts over TCP.

An edge is known by its Ed25519 public key (in the hub's directory, or given to
``portalctl edge add``). It presents a self-signed X.509 certificate for that
key; clients do not use a CA: after the handshake they compare the key in the
peer's certificate with the pinned one and hang up on a mismatch. Over TCP the
device presents a self-signed certificate for its own device key (mutual TLS)
and the edge holds the HELLO to that key; over QUIC, whose libraries cannot ask
a client for a certificate, the HELLO alone proves it. See docs/design.md,
section "Edge protocol".

TLS over TCP runs on pyOpenSSL, whose OpenSSL (the one ``cryptography`` ships)
has AES-GCM with AVX-512 where the system's may not: about half the cipher
cost per byte here (``bench/transfer``).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from ..errors import IntegrityError
from ..fsutil import write_atomic
from ..keys import public_bytes
from ..protocol.edge import ALPNS

__all__ = ["EdgeKey", "certificate_key", "check_pin", "server_context", "client_context", "PinMismatch"]


class PinMismatch(IntegrityError):
    """The peer's certificate is not for the pinned key."""


@dataclass(frozen=True, slots=True)
class EdgeKey:
    """An edge's Ed25519 key, with its certificate and key as PEM files in the edge's data directory."""

    private: bytes
    cert_file: Path
    key_file: Path

    @property
    def public(self) -> bytes:
        return public_bytes(Ed25519PrivateKey.from_private_bytes(self.private))

    def sign(self, message: bytes) -> bytes:
        """Ed25519 over ``message`` (the edge's hub requests)."""
        return Ed25519PrivateKey.from_private_bytes(self.private).sign(message)

    @classmethod
    def load_or_create(cls, data: Path) -> EdgeKey:
        raw_file, cert_file, key_file = data / "edge.key", data / "edge-cert.pem", data / "edge-key.pem"
        if not raw_file.exists():
            write_atomic(raw_file, os.urandom(32), mode=0o600)
        private = raw_file.read_bytes()
        if len(private) != 32:
            raise IntegrityError(f"{raw_file} is not an edge key")
        key = Ed25519PrivateKey.from_private_bytes(private)
        if not cert_file.exists() or certificate_key(cert_file.read_bytes(), pem=True) != public_bytes(key):
            write_atomic(key_file, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()), mode=0o600)
            write_atomic(cert_file, self_signed(key, "edge").public_bytes(Encoding.PEM), mode=0o644)
        return cls(private, cert_file, key_file)


def self_signed(key: Ed25519PrivateKey, role: str) -> x509.Certificate:
    """A certificate for ``key`` signed by itself: what a peer pins is the key, never a CA's word."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"portal {role} " + public_bytes(key).hex()[:16])])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(public_bytes(key)[:16], "big") >> 1)
        .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC))
        .sign(key, None)
    )


def certificate_key(cert: bytes | x509.Certificate | None, pem: bool = False) -> bytes:
    """The raw Ed25519 public key in a certificate (b"" when it holds another kind of key, or there is none)."""
    if cert is None:
        return b""
    if isinstance(cert, x509.Certificate):
        parsed = cert
    else:
        parsed = x509.load_pem_x509_certificate(cert) if pem else x509.load_der_x509_certificate(cert)
    try:
        return parsed.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    except ValueError:
        return b""


def check_pin(cert: bytes | x509.Certificate | None, expected: bytes, peer: str) -> None:
    if certificate_key(cert) != expected:
        raise PinMismatch(f"edge {peer}: its certificate is not for the expected key {expected.hex()[:16]}…")


def _any_certificate(connection: SSL.Connection, cert: object, errno: int, depth: int, ok: int) -> bool:
    """Accept a self-signed certificate: the key in it is checked against a pin once the handshake is done."""
    return True


def _select_alpn(connection: SSL.Connection, offered: list[bytes]) -> Any:  # bytes, or pyOpenSSL's "none" sentinel
    """The newest revision of the protocol the device offers (docs/design.md, section 12)."""
    return next((name.encode() for name in ALPNS if name.encode() in offered), SSL.NO_OVERLAPPING_PROTOCOLS)


def _context(private: Ed25519PrivateKey, certificate: x509.Certificate) -> SSL.Context:
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.use_certificate(certificate)
    context.use_privatekey(private)
    context.check_privatekey()
    # Any certificate is taken in the handshake; its key is what counts, against a pin, once it is done.
    context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _any_certificate)
    return context


def server_context(key: EdgeKey) -> SSL.Context:
    """The edge's: its own certificate, and a client certificate required of every device."""
    private = Ed25519PrivateKey.from_private_bytes(key.private)
    context = _context(private, x509.load_pem_x509_certificate(key.cert_file.read_bytes()))
    context.set_alpn_select_callback(_select_alpn)
    return context


def client_context(device: Ed25519PrivateKey, offer: Sequence[str] = ALPNS) -> SSL.Context:
    """A device's: a certificate for its own key; no CA and no host name (the edge's key is pinned). It offers
    the protocol revisions in ``offer`` (every one it speaks)."""
    context = _context(device, self_signed(device, "device"))
    context.set_alpn_protos([name.encode() for name in offer])
    return context
