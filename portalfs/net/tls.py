"""Edge keys, their self-signed certificates, and pinning.

An edge is known by its Ed25519 public key (in the hub's directory, or given to
``portalctl edge add``). It presents a self-signed X.509 certificate for that
key; clients do not use a CA: after the handshake they compare the key in the
peer's certificate with the pinned one and hang up on a mismatch. Devices
prove their own key inside the channel (the protocol's HELLO), identically over
QUIC and TCP. See docs/design.md, section "Edge protocol".
"""

from __future__ import annotations

import datetime
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from cryptography.x509.oid import NameOID

from ..errors import IntegrityError
from ..fsutil import write_atomic
from ..keys import public_bytes

__all__ = ["EdgeKey", "certificate_key", "server_context", "client_context", "PinMismatch"]


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
            write_atomic(cert_file, _self_signed(key).public_bytes(Encoding.PEM), mode=0o644)
        return cls(private, cert_file, key_file)


def _self_signed(key: Ed25519PrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "portal edge " + public_bytes(key).hex()[:16])])
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


def certificate_key(cert: bytes, pem: bool = False) -> bytes:
    """The raw Ed25519 public key in a certificate (b"" when it holds another kind of key)."""
    parsed = x509.load_pem_x509_certificate(cert) if pem else x509.load_der_x509_certificate(cert)
    try:
        return parsed.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    except ValueError:
        return b""


def check_pin(cert_der: bytes | None, expected: bytes, peer: str) -> None:
    got = certificate_key(cert_der) if cert_der else b""
    if got != expected:
        raise PinMismatch(f"edge {peer}: its certificate is not for the expected key {expected.hex()[:16]}…")


def server_context(key: EdgeKey) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(key.cert_file, key.key_file)
    context.set_alpn_protocols(["portal/1"])
    return context


def client_context() -> ssl.SSLContext:
    """No CA and no host name: the peer is checked against its pinned key after the handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["portal/1"])
    return context
