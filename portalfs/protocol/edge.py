"""The edge protocol, sans-I/O: frames, messages and their strict parsers.

No sockets, no clock. Transports (portalfs/net) move the bytes; this module
turns bytes into frozen messages and back. The layout is normative in
docs/design.md, section "Edge protocol":

    frame = kind:u8 || header_len:u32be || body_len:u32be || header || body
    header = deterministic CBOR map (fields per kind), body = raw object bytes

A request is one frame from the client, its answer one frame from the edge.
Over QUIC each request has its own bidirectional stream; over TLS/TCP the
requests of a connection are answered in order. Every parse failure raises
``RemoteProtocolError`` (the peer sent it) and every attempt to send something
the protocol forbids raises ``LocalProtocolError``.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from .. import encoding

__all__ = [
    "ALPN",
    "ALPN_BATCH",
    "ALPNS",
    "MAX_BATCH",
    "HAVE_TRUST_SECONDS",
    "MAX_BODY",
    "MAX_HAVE",
    "MAX_VERIFY",
    "Verify",
    "MAX_HEADER",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "Message",
    "Hello",
    "Get",
    "Put",
    "Have",
    "PutMany",
    "GetMany",
    "Objects",
    "Stat",
    "Welcome",
    "Data",
    "Stored",
    "Bitmap",
    "Status",
    "Failure",
    "ERROR_CODES",
    "FRAME_HEAD",
    "FrameReader",
    "parse_frame_head",
    "encode_frame",
    "encode_message",
    "parse_message",
    "hello_message",
]

ALPN = "portal/1"  # revisions 1 to 4
ALPN_BATCH = "portal/1.5"  # revision 5: PUT and GET of many objects in one request (PUTS, GETS)
ALPNS = (ALPN_BATCH, ALPN)  # what a device offers and an edge picks from, newest first

# kind:u8 || header_len:u32be || body_len:u32be
FRAME_HEAD = struct.Struct(">BII")
MAX_HEADER = 256 * 1024  # bytes of CBOR header (a HAVE of MAX_HAVE ids fits)
MAX_BODY = 8 * 1024 * 1024  # bytes of object body (a sealed 4 MiB chunk plus overhead fits)
MAX_HAVE = 4096  # ids in one HAVE
MAX_VERIFY = 256  # ids in one VERIFY (the edge reads each: up to 256 MiB of objects)
MAX_BATCH = 256  # objects in one PUTS or GETS (their bytes within MAX_BODY)
HAVE_TRUST_SECONDS = 60.0  # a device trusts a HAVE answer this long; an edge holds condemned ids twice as long
DOMAIN_HELLO = b"portal edge hello v1\x00"

ERROR_CODES = frozenset(
    {
        "unauthenticated",  # no valid HELLO yet, or the device is unknown or revoked
        "not-found",  # the edge holds no object with that id
        "bad-object",  # PUT bytes whose BLAKE3 is not the id: nothing was stored
        "quota",  # the identity's quota would be exceeded: nothing was stored
        "full",  # the edge's disk is full: nothing was stored
        "malformed",  # the request did not parse
        "unavailable",  # the edge is shutting down; try another
        "internal",  # the edge failed; its log says why
    }
)


class ProtocolError(Exception):
    """A violation of the edge protocol."""


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids."""


@dataclass(frozen=True, slots=True)
class Message:
    KIND: ClassVar[int] = 0
    FIELDS: ClassVar[tuple[str, ...]] = ()
    HAS_BODY: ClassVar[bool] = False

    def header(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    @property
    def body(self) -> bytes | bytearray:
        return b""


def _cid(value: Any) -> bytes:
    if not (isinstance(value, bytes) and len(value) == 32):
        raise ValueError("an object id is 32 bytes")
    return value


def _key(value: Any) -> bytes:
    if not (isinstance(value, bytes) and len(value) == 32):
        raise ValueError("a public key is 32 bytes")
    return value


def _uint(value: Any) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63):
        raise ValueError("expected an unsigned integer")
    return value


# requests


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """The client's device proves its key: sig over DOMAIN_HELLO || edge || time || nonce."""

    KIND: ClassVar[int] = 0x01
    FIELDS: ClassVar[tuple[str, ...]] = ("device", "cert", "time", "nonce", "sig")
    device: bytes
    cert: bytes  # the device's enrollment certificate (portalfs.keys.DeviceCertificate)
    time: int  # ns since the epoch, on the client's clock
    nonce: bytes  # 16 random bytes
    sig: bytes

    @classmethod
    def check(cls, h: dict[str, Any]) -> Hello:
        if not (isinstance(h["cert"], bytes) and len(h["cert"]) <= 4096):
            raise ValueError("bad certificate")
        if not (isinstance(h["nonce"], bytes) and len(h["nonce"]) == 16):
            raise ValueError("the nonce is 16 bytes")
        if not (isinstance(h["sig"], bytes) and len(h["sig"]) == 64):
            raise ValueError("a signature is 64 bytes")
        return cls(_key(h["device"]), h["cert"], _uint(h["time"]), h["nonce"], h["sig"])


def hello_message(edge: bytes, time_ns: int, nonce: bytes) -> bytes:
    """The bytes a HELLO signs: they bind the device to this edge's key and this moment."""
    return DOMAIN_HELLO + edge + time_ns.to_bytes(8, "big") + nonce


@dataclass(frozen=True, slots=True)
class Get(Message):
    KIND: ClassVar[int] = 0x02
    FIELDS: ClassVar[tuple[str, ...]] = ("cid",)
    cid: bytes

    @classmethod
    def check(cls, h: dict[str, Any]) -> Get:
        return cls(_cid(h["cid"]))


@dataclass(frozen=True, slots=True)
class Put(Message):
    KIND: ClassVar[int] = 0x03
    FIELDS: ClassVar[tuple[str, ...]] = ("cid",)
    HAS_BODY: ClassVar[bool] = True
    cid: bytes
    data: bytes

    @property
    def body(self) -> bytes:
        return self.data

    @classmethod
    def check(cls, h: dict[str, Any], body: bytes) -> Put:
        return cls(_cid(h["cid"]), body)


def _cid_list(h: dict[str, Any], most: int, what: str) -> tuple[bytes, ...]:
    cids = h["cids"]
    if not isinstance(cids, list) or len(cids) > most:
        raise ValueError(f"{what} takes at most {most} ids")
    return tuple(_cid(c) for c in cids)


@dataclass(frozen=True, slots=True)
class _Ids(Message):
    """A request of ids alone (HAVE, VERIFY, GETS): from LEAST to MOST of them, NAME in a refusal."""

    FIELDS: ClassVar[tuple[str, ...]] = ("cids",)
    NAME: ClassVar[str] = ""
    LEAST: ClassVar[int] = 0
    MOST: ClassVar[int] = 0
    cids: tuple[bytes, ...]

    def header(self) -> dict[str, Any]:
        return {"cids": list(self.cids)}

    @classmethod
    def check(cls, h: dict[str, Any]) -> Self:
        cids = _cid_list(h, cls.MOST, cls.NAME)
        if len(cids) < cls.LEAST:
            raise ValueError(f"{cls.NAME} asks for {cls.LEAST} id at least")
        return cls(cids)


@dataclass(frozen=True, slots=True)
class Have(_Ids):
    KIND: ClassVar[int] = 0x04
    NAME: ClassVar[str] = "HAVE"
    MOST: ClassVar[int] = MAX_HAVE


@dataclass(frozen=True, slots=True)
class Verify(_Ids):
    """HAVE that reads and hashes each object first: a damaged copy is removed and answered 0."""

    KIND: ClassVar[int] = 0x06
    NAME: ClassVar[str] = "VERIFY"
    MOST: ClassVar[int] = MAX_VERIFY


def _sizes(value: Any, count: int) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > count:
        raise ValueError(f"at most {count} sizes")
    return tuple(_uint(size) for size in value)


@dataclass(frozen=True, slots=True)
class PutMany(Message):
    """PUTS: objects stored together, their bytes one after the other in the body (revision 5)."""

    KIND: ClassVar[int] = 0x07
    FIELDS: ClassVar[tuple[str, ...]] = ("cids", "sizes")
    HAS_BODY: ClassVar[bool] = True
    cids: tuple[bytes, ...]
    sizes: tuple[int, ...]
    data: bytes | bytearray

    @classmethod
    def of(cls, objects: Sequence[tuple[bytes, bytes]]) -> PutMany:
        return cls(tuple(c for c, _ in objects), tuple(len(d) for _, d in objects), b"".join(d for _, d in objects))

    def header(self) -> dict[str, Any]:
        return {"cids": list(self.cids), "sizes": list(self.sizes)}

    @property
    def body(self) -> bytes | bytearray:
        return self.data

    def objects(self) -> list[tuple[bytes, bytes]]:
        return list(zip(self.cids, _split(self.data, self.sizes), strict=True))

    @classmethod
    def check(cls, h: dict[str, Any], body: bytes) -> PutMany:
        cids = _cid_list(h, MAX_BATCH, "PUTS")
        sizes = _sizes(h["sizes"], MAX_BATCH)
        if not cids or len(sizes) != len(cids) or sum(sizes) != len(body):
            raise ValueError("PUTS needs one size per id, and the sizes add up to the body")
        return cls(cids, sizes, body)


@dataclass(frozen=True, slots=True)
class GetMany(_Ids):
    """GETS: objects read together (revision 5); answered by OBJECTS."""

    KIND: ClassVar[int] = 0x08
    NAME: ClassVar[str] = "GETS"
    LEAST: ClassVar[int] = 1
    MOST: ClassVar[int] = MAX_BATCH


@dataclass(frozen=True, slots=True)
class Stat(Message):
    KIND: ClassVar[int] = 0x05

    @classmethod
    def check(cls, h: dict[str, Any]) -> Stat:
        return cls()


# responses


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    KIND: ClassVar[int] = 0x81
    FIELDS: ClassVar[tuple[str, ...]] = ("identity",)
    identity: bytes  # the identity the edge now accounts this connection to

    @classmethod
    def check(cls, h: dict[str, Any]) -> Welcome:
        return cls(_key(h["identity"]))


@dataclass(frozen=True, slots=True)
class Data(Message):
    KIND: ClassVar[int] = 0x82
    HAS_BODY: ClassVar[bool] = True
    data: bytes | bytearray  # a bytearray where an edge answers from a buffer it read the object into

    @property
    def body(self) -> bytes | bytearray:
        return self.data

    @classmethod
    def check(cls, h: dict[str, Any], body: bytes) -> Data:
        return cls(body)


@dataclass(frozen=True, slots=True)
class Stored(Message):
    KIND: ClassVar[int] = 0x83
    FIELDS: ClassVar[tuple[str, ...]] = ("new",)
    new: bool

    @classmethod
    def check(cls, h: dict[str, Any]) -> Stored:
        if not isinstance(h["new"], bool):
            raise ValueError("'new' is a boolean")
        return cls(h["new"])


@dataclass(frozen=True, slots=True)
class Bitmap(Message):
    """Bit i (LSB first within each byte) is set when the edge holds the request's i-th id."""

    KIND: ClassVar[int] = 0x84
    FIELDS: ClassVar[tuple[str, ...]] = ("count", "bits")
    count: int
    bits: bytes

    @classmethod
    def from_flags(cls, flags: list[bool]) -> Bitmap:
        bits = bytearray((len(flags) + 7) // 8)
        for i, flag in enumerate(flags):
            if flag:
                bits[i >> 3] |= 1 << (i & 7)
        return cls(len(flags), bytes(bits))

    def flags(self) -> list[bool]:
        return [bool(self.bits[i >> 3] >> (i & 7) & 1) for i in range(self.count)]

    @classmethod
    def check(cls, h: dict[str, Any]) -> Bitmap:
        count, bits = _uint(h["count"]), h["bits"]
        if count > MAX_HAVE or not isinstance(bits, bytes) or len(bits) != (count + 7) // 8:
            raise ValueError("bitmap length does not match its count")
        return cls(count, bits)


@dataclass(frozen=True, slots=True)
class Objects(Message):
    """GETS's answer: ``sizes[i]`` bytes of the body are the i-th id's object, 0 where the edge holds none;
    fewer sizes than ids asked when the rest would take the body past MAX_BODY (the device asks again)."""

    KIND: ClassVar[int] = 0x86
    FIELDS: ClassVar[tuple[str, ...]] = ("sizes",)
    HAS_BODY: ClassVar[bool] = True
    sizes: tuple[int, ...]
    data: bytes | bytearray

    def header(self) -> dict[str, Any]:
        return {"sizes": list(self.sizes)}

    @property
    def body(self) -> bytes | bytearray:
        return self.data

    def objects(self) -> list[bytes | None]:
        return [part or None for part in _split(self.data, self.sizes)]

    @classmethod
    def check(cls, h: dict[str, Any], body: bytes) -> Objects:
        sizes = _sizes(h["sizes"], MAX_BATCH)
        if sum(sizes) != len(body):
            raise ValueError("the sizes do not add up to the body")
        return cls(sizes, body)


def _split(data: bytes | bytearray, sizes: Sequence[int]) -> list[bytes]:
    view = memoryview(data)
    parts, at = [], 0
    for size in sizes:
        parts.append(bytes(view[at : at + size]))
        at += size
    return parts


@dataclass(frozen=True, slots=True)
class Status(Message):
    KIND: ClassVar[int] = 0x85
    FIELDS: ClassVar[tuple[str, ...]] = ("capacity", "used", "objects", "load", "quota", "usage")
    capacity: int  # bytes the edge may still store
    used: int  # bytes it stores
    objects: int
    load: int  # requests in flight
    quota: int  # this identity's quota in bytes (0: none)
    usage: int  # bytes this identity has stored here

    @classmethod
    def check(cls, h: dict[str, Any]) -> Status:
        return cls(*(_uint(h[name]) for name in cls.FIELDS))


@dataclass(frozen=True, slots=True)
class Failure(Message):
    KIND: ClassVar[int] = 0xFF
    FIELDS: ClassVar[tuple[str, ...]] = ("code", "message")
    code: str
    message: str

    @classmethod
    def check(cls, h: dict[str, Any]) -> Failure:
        if h["code"] not in ERROR_CODES or not isinstance(h["message"], str) or len(h["message"]) > 1024:
            raise ValueError("unknown error code")
        return cls(h["code"], h["message"])


_KINDS: dict[int, type[Message]] = {
    cls.KIND: cls
    for cls in (
        Hello, Get, Put, Have, Verify, PutMany, GetMany, Stat, Welcome, Data, Stored, Bitmap, Objects, Status, Failure
    )
}  # fmt: skip
REQUESTS = frozenset({Hello, Get, Put, Have, Verify, PutMany, GetMany, Stat})


def encode_message(message: Message) -> bytes:
    """The frame for ``message``."""
    head, body = encode_frame(message)
    return head + body


def encode_frame(message: Message) -> tuple[bytes, bytes | bytearray]:
    """The frame for ``message`` as (kind, lengths and header; body): a large body is sent without a copy."""
    if type(message) not in _KINDS.values():
        raise LocalProtocolError(f"not a protocol message: {message!r}")
    header = encoding.encode(message.header()) if message.FIELDS else b""
    body = message.body
    if len(header) > MAX_HEADER or len(body) > MAX_BODY:
        raise LocalProtocolError(f"{type(message).__name__} is larger than a frame may be")
    return FRAME_HEAD.pack(message.KIND, len(header), len(body)) + header, body


def parse_message(kind: int, header: bytes, body: bytes | bytearray) -> Message:
    """Check one frame's parts and return its message, or raise RemoteProtocolError."""
    cls = _KINDS.get(kind)
    if cls is None:
        raise RemoteProtocolError(f"unknown frame kind {kind:#04x}")
    if body and not cls.HAS_BODY:
        raise RemoteProtocolError(f"{cls.__name__} carries no body")
    try:
        fields = encoding.decode(header) if header else {}
        if not isinstance(fields, dict) or set(fields) != set(cls.FIELDS):
            raise ValueError(f"expected fields {sorted(cls.FIELDS)}")
        if cls.HAS_BODY:
            return cls.check(fields, body)  # type: ignore[attr-defined,no-any-return]
        return cls.check(fields)  # type: ignore[attr-defined,no-any-return]
    except (encoding.DecodeError, ValueError, TypeError, KeyError) as exc:
        raise RemoteProtocolError(f"malformed {cls.__name__}: {exc}") from None


def parse_frame_head(head: bytes | bytearray) -> tuple[int, int, int]:
    """A frame's (kind, header length, body length), refused before anything is read when too large."""
    kind, header_len, body_len = FRAME_HEAD.unpack(head)
    if header_len > MAX_HEADER or body_len > MAX_BODY:
        raise RemoteProtocolError(f"frame too large ({header_len}-byte header, {body_len}-byte body)")
    return kind, header_len, body_len


class FrameReader:
    """Reassembles frames from a byte stream: ``feed`` bytes, then take ``next_message`` until None.

    Received pieces are kept as they came and joined once per frame part, so a
    body is copied once however many pieces it arrived in (a megabyte body comes
    in dozens). ``feed`` keeps a reference to ``bytes`` it is given: they are
    immutable; anything else is copied.
    """

    def __init__(self) -> None:
        self._pieces: deque[bytes | memoryview] = deque()
        self._size = 0
        self._head: tuple[int, int, int] | None = None  # the current frame's kind and lengths, once read

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            self._pieces.append(data if isinstance(data, bytes) else bytes(data))
            self._size += len(data)

    @property
    def pending(self) -> int:
        return self._size

    def next_message(self) -> Message | None:
        if self._head is None:
            if self._size < FRAME_HEAD.size:
                return None
            self._head = parse_frame_head(self._take(FRAME_HEAD.size))
        kind, header_len, body_len = self._head
        if self._size < header_len + body_len:
            return None
        self._head = None
        header = self._take(header_len)
        body = self._take(body_len)
        return parse_message(kind, header, body)

    def _take(self, n: int) -> bytes:
        """The next ``n`` buffered bytes, in one copy (none when they are exactly one received piece)."""
        if n == 0:
            return b""
        first = self._pieces[0]
        if len(first) == n and isinstance(first, bytes):
            self._pieces.popleft()
            self._size -= n
            return first
        parts: list[bytes | memoryview] = []
        need = n
        while need:
            piece = self._pieces[0]
            if len(piece) <= need:
                parts.append(self._pieces.popleft())
                need -= len(piece)
            else:
                view = memoryview(piece)
                parts.append(view[:need])
                self._pieces[0] = view[need:]
                need = 0
        self._size -= n
        return b"".join(parts)
