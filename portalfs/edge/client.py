"""A device's connection to one edge: HELLO, then GET, PUT, HAVE, VERIFY, STAT, and where the edge speaks
revision 5 GETS and PUTS, with typed errors."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from ..errors import CorruptObject, MissingObject, PortalError, Refused, StoreFull, Unreachable, shown
from ..keys import DeviceKey
from ..protocol.edge import (
    ALPN_BATCH,
    MAX_BATCH,
    MAX_HAVE,
    MAX_VERIFY,
    Bitmap,
    Data,
    Failure,
    Get,
    GetMany,
    Have,
    Hello,
    Message,
    Objects,
    ProtocolError,
    Put,
    PutMany,
    Stat,
    Status,
    Stored,
    Verify,
    Welcome,
    hello_message,
)
from ..store.base import check_object

__all__ = ["EdgeAddress", "EdgeClient", "connect_edge", "parse_address"]

log = logging.getLogger("portal.edge")

TRANSPORTS = ("quic", "tcp")


@dataclass(frozen=True, slots=True)
class EdgeAddress:
    host: str
    port: int
    key: bytes  # the edge's Ed25519 public key, pinned
    transport: str = "quic"
    fallback: str | None = None  # tried when ``transport`` fails at once (refused, reset), not after a timeout
    operator: str = ""  # who runs it, as the hub admitted it ("": not known, an operator of its own)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(text: str, any_port: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → (host, port), or raise ValueError; every address is parsed here.

    ``any_port``: port 0 is allowed (a server's ``--listen``: the kernel picks one).
    """
    host, sep, port = text.rpartition(":")
    lowest = 0 if any_port else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) < 65536:
        raise ValueError(f"{shown(text)} is not HOST:PORT")
    return host.strip("[]"), int(port)


_NAMES: dict[type[Message], str] = {PutMany: "PUTS", GetMany: "GETS"}  # as docs/design.md names them


class Transport(Protocol):
    alpn: str  # the protocol revision the handshake agreed on

    async def request(self, message: Message) -> Message: ...

    def round_trip(self) -> float | None: ...


class EdgeClient:
    def __init__(self, transport: Transport, address: EdgeAddress) -> None:
        self.address = address
        self._transport = transport
        self.requests: Counter[str] = Counter()  # requests sent, by kind: HELLO, GET, PUT, GETS, PUTS, HAVE, ...

    def round_trip(self) -> float | None:
        """The connection's round-trip time as its transport measures it (seconds), if it does."""
        return self._transport.round_trip()

    @property
    def batches(self) -> bool:
        """Whether the edge takes GETS and PUTS (revision 5): many objects in one request."""
        return self._transport.alpn == ALPN_BATCH

    async def _ask(self, message: Message, expect: type[Message]) -> Message:
        self.requests[_NAMES.get(type(message)) or type(message).__name__.upper()] += 1
        try:
            answer = await self._transport.request(message)
        except ConnectionError as exc:
            raise Unreachable(f"edge {self.address}: {exc}") from exc
        except ProtocolError as exc:
            raise Unreachable(f"edge {self.address}: protocol error: {exc}") from exc
        if isinstance(answer, Failure):
            raise _failure(self.address, answer)
        if not isinstance(answer, expect):
            raise Unreachable(f"edge {self.address}: answered {type(answer).__name__} to {type(message).__name__}")
        return answer

    async def hello(self, device: DeviceKey, cert: bytes) -> bytes:
        now, nonce = time.time_ns(), os.urandom(16)
        sig = device.sign(hello_message(self.address.key, now, nonce))
        answer = await self._ask(Hello(device.public, cert, now, nonce, sig), Welcome)
        assert isinstance(answer, Welcome)
        return answer.identity

    async def get(self, cid: bytes) -> bytes:
        answer = await self._ask(Get(cid), Data)
        assert isinstance(answer, Data)
        check_object(cid, answer.data)  # an edge can withhold an object, never alter it
        return bytes(answer.data)  # bytes already (received): the same object, not a copy

    async def put(self, cid: bytes, data: bytes) -> bool:
        answer = await self._ask(Put(cid, bytes(data)), Stored)
        assert isinstance(answer, Stored)
        return answer.new

    async def put_many(self, objects: Sequence[tuple[bytes, bytes]]) -> list[bool]:
        """PUTS: store every (id, bytes) of ``objects`` (at most MAX_BATCH, within a frame), or none; whether
        each was new to this identity there."""
        answer = await self._ask(PutMany.of(objects), Bitmap)
        assert isinstance(answer, Bitmap)
        if answer.count != len(objects):
            raise Unreachable(f"edge {self.address}: answer has {answer.count} bits for {len(objects)} objects")
        return answer.flags()

    async def get_many(self, cids: Sequence[bytes]) -> list[bytes | CorruptObject | None]:
        """GETS: the objects of the first of ``cids`` (at most MAX_BATCH) that fit in one answer, each checked
        against its id: None where the edge holds none, CorruptObject where its copy is damaged. The caller
        asks again for the rest (the answer is shorter than ``cids`` when they did not fit)."""
        if len(cids) > MAX_BATCH:
            raise ValueError(f"GETS takes at most {MAX_BATCH} ids")
        answer = await self._ask(GetMany(tuple(cids)), Objects)
        assert isinstance(answer, Objects)
        if not answer.sizes or len(answer.sizes) > len(cids):
            raise Unreachable(f"edge {self.address}: answered {len(answer.sizes)} objects for {len(cids)} ids")
        got: list[bytes | CorruptObject | None] = []
        for cid, data in zip(cids, answer.objects(), strict=False):
            if data is not None:
                try:
                    check_object(cid, data)  # an edge can withhold an object, never alter it
                except CorruptObject as exc:
                    got.append(CorruptObject(f"edge {self.address}: {exc}"))
                    continue
            got.append(data)
        return got

    async def have(self, cids: Sequence[bytes]) -> list[bool]:
        """Whether the edge holds each id."""
        return await self._bitmap(Have, MAX_HAVE, cids)

    async def verify(self, cids: Sequence[bytes]) -> list[bool]:
        """Whether the edge holds each id intact: it reads and hashes each (and removes a damaged copy)."""
        return await self._bitmap(Verify, MAX_VERIFY, cids)

    async def _bitmap(self, request: type[Have] | type[Verify], most: int, cids: Sequence[bytes]) -> list[bool]:
        flags: list[bool] = []
        self.requests[f"{request.__name__.upper()} ids"] += len(cids)
        for start in range(0, len(cids), most):
            batch = tuple(cids[start : start + most])
            answer = await self._ask(request(batch), Bitmap)
            assert isinstance(answer, Bitmap)
            if answer.count != len(batch):
                raise Unreachable(f"edge {self.address}: answer has {answer.count} bits for {len(batch)} ids")
            flags += answer.flags()
        return flags

    async def stat(self) -> Status:
        answer = await self._ask(Stat(), Status)
        assert isinstance(answer, Status)
        return answer


def _failure(address: EdgeAddress, failure: Failure) -> PortalError:
    text = f"edge {address}: {failure.message}"
    if failure.code == "not-found":
        return MissingObject(text)
    if failure.code == "bad-object":
        return CorruptObject(text)
    if failure.code == "full":
        return StoreFull(text)
    if failure.code in ("unauthenticated", "quota"):
        return Refused(text)
    return Unreachable(text)


@asynccontextmanager
async def connect_edge(address: EdgeAddress, device: DeviceKey, cert: bytes) -> AsyncIterator[EdgeClient]:
    """Open a connection over the address's transport (or its fallback), say HELLO, and yield the client."""
    from ..net.tcp import HandshakeTimeout, TransportError

    try:
        async with AsyncExitStack() as stack:
            try:
                transport = await stack.enter_async_context(_open(address.transport, address, device))
            except HandshakeTimeout:
                raise  # the host is gone: another transport to it would wait as long again
            except TransportError as exc:
                if address.fallback is None:
                    raise
                log.info("%s; trying %s", exc, address.fallback)
                transport = await stack.enter_async_context(_open(address.fallback, address, device))
            client = EdgeClient(transport, address)
            await client.hello(device, cert)
            yield client
    except TransportError as exc:
        raise Unreachable(str(exc)) from exc


def _open(kind: str, address: EdgeAddress, device: DeviceKey) -> AbstractAsyncContextManager[Transport]:
    if kind == "tcp":
        from ..net.tcp import open_tcp

        return open_tcp(address.host, address.port, address.key, device)
    from ..net.quic import open_quic

    return open_quic(address.host, address.port, address.key)
