"""The edge protocol over TLS 1.3 on TCP: for bulk transfers on fast links.

Frames are exactly those of QUIC streams; a connection carries many requests,
answered in the order they were sent, so a client may pipeline. The server
works on up to ``PIPELINE`` requests of a connection at once and writes the
answers in order.

TLS runs through memory BIOs on a trio socket (``TlsChannel``), like
``trio.SSLStream``, but a receive takes every record that one read of the
socket brought (up to ``READ_SIZE``) instead of one 16 KiB record per trip
through the event loop: at a gigabyte a second the per-trip cost was most of
the client's time.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from ..edge.protocol import FrameReader, Message, RemoteProtocolError, encode_frame
from ..edge.service import EdgeSession
from . import one_error
from .tls import EdgeKey, check_pin, client_context, server_context

__all__ = ["serve_tcp", "open_tcp", "TcpConnection", "TlsChannel", "TransportError", "PendingAnswer"]

log = logging.getLogger("portal.net")

PIPELINE = 8  # requests of one connection in progress at once, on the server
READ_SIZE = 256 * 1024  # bytes taken from the socket at once
TLS_RECORD = 16384  # most plaintext bytes in one TLS record: what one SSLObject.read can return


class TransportError(ConnectionError):
    """The connection failed or closed before an answer came."""


class TlsChannel(trio.abc.AsyncResource):
    """TLS over a trio socket stream. ``send_all`` may be called from many tasks; ``receive`` from one."""

    def __init__(self, stream: trio.SocketStream, context: ssl.SSLContext, server_side: bool) -> None:
        self.socket_stream = stream
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side, server_hostname=None)
        self._send_lock = trio.Lock()  # ciphertext leaves in the order the BIO holds it
        self._buffer = bytearray(READ_SIZE)  # socket reads land here, then go into the BIO

    def getpeercert(self) -> bytes | None:
        return self._tls.getpeercert(binary_form=True)

    async def do_handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise trio.BrokenResourceError("the peer closed the connection during the TLS handshake") from None
                continue
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(f"TLS handshake: {exc.reason or exc}") from exc
            await self._flush()
            return

    async def send_all(self, *parts: bytes) -> None:
        """Send ``parts`` one after the other (as one write: another task's data cannot come between)."""
        try:
            for part in parts:
                if part:
                    self._tls.write(part)
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(f"TLS: {exc.reason or exc}") from exc
        await self._flush()

    async def receive(self) -> list[bytes]:
        """The plaintext of every record received so far, waiting for one if none is; [] at the end."""
        while True:
            pieces = []
            try:
                while True:
                    pieces.append(self._tls.read(TLS_RECORD))  # a larger size is allocated, then shrunk
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return pieces
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(f"TLS: {exc.reason or exc}") from exc
            if self._outgoing.pending:  # the peer's records asked for an answer (a key update)
                await self._flush()
            if pieces:
                return pieces
            if not await self._fill():
                return []

    async def aclose(self) -> None:
        await self.socket_stream.aclose()

    async def _fill(self) -> bool:
        try:
            n = await self.socket_stream.socket.recv_into(self._buffer)
        except OSError as exc:
            raise trio.BrokenResourceError(f"connection: {exc.strerror or exc}") from exc
        if not n:
            return False
        with memoryview(self._buffer) as view:
            self._incoming.write(view[:n])
        return True

    async def _flush(self) -> None:
        async with self._send_lock:
            data = self._outgoing.read()
            if data:
                await self.socket_stream.send_all(data)


class PendingAnswer:
    """One request's answer: delivered by the connection's reader, or abandoned when the connection fails."""

    __slots__ = ("_done", "_message", "_cause")

    def __init__(self) -> None:
        self._done = trio.Event()
        self._message: Message | None = None
        self._cause: BaseException | None = None

    def deliver(self, message: Message) -> None:
        self._message = message
        self._done.set()

    def abandon(self, cause: BaseException | None) -> None:
        self._cause = cause
        self._done.set()

    async def wait(self, peer: str) -> Message:
        await self._done.wait()
        if self._message is None:
            raise TransportError(f"edge {peer}: connection lost") from self._cause
        return self._message


async def serve_tcp(
    key: EdgeKey,
    host: str,
    port: int,
    new_session: Callable[[str], EdgeSession],
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    context = server_context(key)
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners)

    async def handle(stream: trio.SocketStream) -> None:
        host, port = stream.socket.getpeername()[:2]
        peer = f"{host}:{port}"
        tls = TlsChannel(stream, context, server_side=True)
        try:
            await tls.do_handshake()
            await _serve_connection(tls, new_session(peer))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except RemoteProtocolError as exc:
            log.warning("%s: closed: %s", peer, exc)
        finally:
            await trio.aclose_forcefully(tls)

    await trio.serve_listeners(handle, listeners)


async def _serve_connection(stream: TlsChannel, session: EdgeSession) -> None:
    reader = FrameReader()
    answers_send, answers_recv = trio.open_memory_channel[trio.Event](PIPELINE)
    results: dict[trio.Event, tuple[bytes, bytes]] = {}
    limit = trio.Semaphore(PIPELINE)

    async def work(message: Message, done: trio.Event) -> None:
        try:
            answer = await trio.to_thread.run_sync(session.handle, message, time.time_ns())
            results[done] = encode_frame(answer)
        finally:
            limit.release()
            done.set()

    async def write_answers() -> None:
        async with answers_recv:
            async for done in answers_recv:
                await done.wait()
                try:
                    await stream.send_all(*results.pop(done))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_answers)
        async with answers_send:
            while True:
                try:
                    pieces = await stream.receive()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if not pieces:
                    break
                for piece in pieces:
                    reader.feed(piece)
                while (message := reader.next_message()) is not None:
                    await limit.acquire()
                    done = trio.Event()
                    await answers_send.send(done)
                    nursery.start_soon(work, message, done)


class TcpConnection:
    """A client's TLS connection to one edge; ``request`` may be called from many tasks at once."""

    def __init__(self, stream: TlsChannel, peer: str) -> None:
        self.peer = peer
        self._stream = stream
        self._send_lock = trio.Lock()
        self._waiting: deque[PendingAnswer] = deque()
        self._failed: BaseException | None = None

    async def request(self, message: Message) -> Message:
        if self._failed is not None:
            raise TransportError(f"edge {self.peer}: connection lost") from self._failed
        answer = PendingAnswer()
        frame = encode_frame(message)
        async with self._send_lock:
            self._waiting.append(answer)
            try:
                await self._stream.send_all(*frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._fail(exc)
        return await answer.wait(self.peer)

    def _fail(self, exc: BaseException) -> None:
        if self._failed is None:
            self._failed = exc
        while self._waiting:
            self._waiting.popleft().abandon(self._failed)

    async def _read_answers(self) -> None:
        reader = FrameReader()
        try:
            while True:
                pieces = await self._stream.receive()
                if not pieces:
                    raise TransportError("closed by the edge")
                for piece in pieces:
                    reader.feed(piece)
                while (message := reader.next_message()) is not None:
                    if not self._waiting:
                        raise RemoteProtocolError("an answer nobody asked for")
                    self._waiting.popleft().deliver(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError, TransportError, RemoteProtocolError) as exc:
            self._fail(exc)


@asynccontextmanager
async def open_tcp(host: str, port: int, edge_key: bytes) -> AsyncIterator[TcpConnection]:
    peer = f"{host}:{port}"
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise TransportError(f"edge {peer}: {exc.strerror or exc}") from exc
    tls = TlsChannel(stream, client_context(), server_side=False)
    try:
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, OSError) as exc:
            raise TransportError(f"edge {peer}: TLS handshake failed") from exc
        check_pin(tls.getpeercert(), edge_key, peer)
        connection = TcpConnection(tls, peer)
        with one_error():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(connection._read_answers)
                try:
                    yield connection
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(tls)
