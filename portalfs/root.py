"""Root records: one signed, chained record per portal version (docs/design.md, "Root records").

    record  = CBOR {"body": body, "sig": Ed25519(device, DOMAIN_ROOT || body)}
    body    = CBOR {"v": 1, "portal": 16 bytes, "version": n >= 1, "parent": record id | null,
                    "root": sealed_root, "device": 32-byte public key, "time": ns}
    sealed_root = nonce(12) || AES-256-GCM(root_key, nonce, CBOR RootPayload,
                                           aad=DOMAIN_ROOT_REF || portal || u64be(version))
    RootPayload = {"entry": root directory Entry (name b""), "size": bytes in files, "files": count}
    record id   = BLAKE3(record)

Only a holder of the portal read key can open ``root``; anyone can check the
signature and the chain.
"""

from __future__ import annotations

from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import encoding
from .errors import BadSignature, CorruptObject, IntegrityError
from .keys import DeviceKey, derive, verify_signature
from .tree import Entry

__all__ = [
    "CONTEXT_TREE_SECRET",
    "CONTEXT_ROOT_KEY",
    "PortalKeys",
    "RootPayload",
    "RootRecord",
    "make_root_record",
    "verify_chain",
]

CONTEXT_TREE_SECRET = "portal 2026-11-21 tree secret"
CONTEXT_ROOT_KEY = "portal 2026-11-21 root reference key"
DOMAIN_ROOT = b"portal root record v1\x00"
DOMAIN_ROOT_REF = b"portal root reference v1\x00"
RECORD_VERSION = 1


@dataclass(frozen=True, slots=True)
class PortalKeys:
    """The portal read key and what derives from it. Secret."""

    read_key: bytes
    previous: tuple[bytes, ...] = ()  # read keys before the last rotation, newest first

    @property
    def tree_secret(self) -> bytes:
        return derive(CONTEXT_TREE_SECRET, self.read_key)

    @property
    def root_key(self) -> bytes:
        return derive(CONTEXT_ROOT_KEY, self.read_key)

    @property
    def all_keys(self) -> tuple[bytes, ...]:
        return (self.read_key, *self.previous)

    def to_bytes(self) -> bytes:
        """Every read key, newest first, concatenated (32 bytes each)."""
        return b"".join(self.all_keys)

    @classmethod
    def from_bytes(cls, data: bytes) -> PortalKeys:
        if not data or len(data) % 32:
            raise ValueError("portal keys are a multiple of 32 bytes")
        keys = [data[i : i + 32] for i in range(0, len(data), 32)]
        return cls(keys[0], tuple(keys[1:]))

    def rotated(self, new_key: bytes) -> PortalKeys:
        return PortalKeys(new_key, self.all_keys)


@dataclass(frozen=True, slots=True)
class RootPayload:
    entry: Entry
    size: int
    files: int

    def to_bytes(self) -> bytes:
        return encoding.encode({"entry": self.entry.to_cbor(), "size": self.size, "files": self.files})

    @classmethod
    def from_bytes(cls, data: bytes) -> RootPayload:
        fields = encoding.decode(data)
        entry = Entry.from_cbor(fields["entry"], allow_empty_name=True)
        if entry.name != b"" or not entry.is_dir:
            raise ValueError("the root entry must be an unnamed directory")
        return cls(entry=entry, size=fields["size"], files=fields["files"])


def _root_aad(portal: bytes, version: int) -> bytes:
    return DOMAIN_ROOT_REF + portal + version.to_bytes(8, "big")


@dataclass(frozen=True, slots=True)
class RootRecord:
    body: bytes
    signature: bytes
    portal: bytes
    version: int
    parent: bytes | None
    sealed_root: bytes
    device: bytes
    time_ns: int

    @property
    def record_id(self) -> bytes:
        return blake3.blake3(self.to_bytes()).digest()

    def to_bytes(self) -> bytes:
        return encoding.encode({"body": self.body, "sig": self.signature})

    @classmethod
    def from_bytes(cls, data: bytes) -> RootRecord:
        """Parse and check the signature by the device the record names."""
        try:
            outer = encoding.decode(data)
            if set(outer) != {"body", "sig"}:
                raise ValueError("unexpected fields")
            body, sig = outer["body"], outer["sig"]
            f = encoding.decode(body)
            if f.get("v") != RECORD_VERSION or set(f) != {"v", "portal", "version", "parent", "root", "device", "time"}:
                raise ValueError("not a version-1 root record")
            portal, version, parent = f["portal"], f["version"], f["parent"]
            if not (isinstance(portal, bytes) and len(portal) == 16):
                raise ValueError("bad portal id")
            if not (isinstance(version, int) and version >= 1):
                raise ValueError("bad version number")
            if (version == 1) != (parent is None) or (parent is not None and len(parent) != 32):
                raise ValueError("bad parent")
            if not (isinstance(f["device"], bytes) and len(f["device"]) == 32 and isinstance(sig, bytes)):
                raise ValueError("bad device key or signature")
        except (encoding.DecodeError, ValueError, TypeError, AttributeError) as exc:
            raise CorruptObject(f"root record: {exc}") from exc
        verify_signature(f["device"], sig, DOMAIN_ROOT + body, f"root record v{version}")
        return cls(body, sig, portal, version, parent, f["root"], f["device"], f["time"])

    def open(self, keys: PortalKeys) -> RootPayload:
        """Decrypt the root reference with the portal read key (or one it replaced, for older versions)."""
        for read_key in keys.all_keys:
            try:
                plain = AESGCM(derive(CONTEXT_ROOT_KEY, read_key)).decrypt(
                    self.sealed_root[:12], self.sealed_root[12:], _root_aad(self.portal, self.version)
                )
                break
            except (InvalidTag, ValueError):
                continue
        else:
            raise IntegrityError(f"root record v{self.version}: root reference does not decrypt with this portal key")
        try:
            return RootPayload.from_bytes(plain)
        except (encoding.DecodeError, ValueError, KeyError, TypeError) as exc:
            raise CorruptObject(f"root record v{self.version}: malformed root reference") from exc


def make_root_record(
    *,
    keys: PortalKeys,
    device: DeviceKey,
    portal: bytes,
    parent: RootRecord | None,
    payload: RootPayload,
    time_ns: int,
    nonce: bytes,
) -> RootRecord:
    """Seal ``payload`` and sign a record one version past ``parent``."""
    version = 1 if parent is None else parent.version + 1
    sealed_root = nonce + AESGCM(keys.root_key).encrypt(nonce, payload.to_bytes(), _root_aad(portal, version))
    body = encoding.encode(
        {
            "v": RECORD_VERSION,
            "portal": portal,
            "version": version,
            "parent": None if parent is None else parent.record_id,
            "root": sealed_root,
            "device": device.public,
            "time": time_ns,
        }
    )
    return RootRecord.from_bytes(encoding.encode({"body": body, "sig": device.sign(DOMAIN_ROOT + body)}))


def verify_chain(records: list[RootRecord], writers: set[bytes], after: RootRecord | None = None) -> None:
    """Check that ``records`` (oldest first) form one chain, each signed by an allowed writer.

    The chain starts at version 1, or continues ``after`` (a version already checked): the one chain check,
    for a portal's whole history and for the records a device pulls from the hub.
    """
    previous = after
    for record in records:
        if record.device not in writers:
            raise BadSignature(f"root record v{record.version}: signed by a device that may not write")
        if previous is None:
            if record.version != 1 or record.parent is not None:
                raise CorruptObject(f"root record v{record.version}: chain does not start at version 1")
        elif (
            record.portal != previous.portal
            or record.version != previous.version + 1
            or record.parent != previous.record_id
        ):
            raise CorruptObject(f"root record v{record.version}: does not follow v{previous.version}")
        previous = record
