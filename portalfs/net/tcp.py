"""The edge protocol over TLS 1.3 on TCP: for bulk transfers on fast links.

Frames are exactly those of QUIC streams; a connection carries many requests,
answered in the order they were sent, so a client may pipeline. The server
works on up to ``PIPELINE`` requests of a connection at once and writes the
answers in order.

TLS runs on the socket itself (``TlsChannel``): OpenSSL reads and writes the
non-blocking socket, decrypting records into one buffer that each frame part
is copied out of once, and encrypting as much of a body per call as the
socket takes; the event loop is asked only when the socket has nothing to
read or no room to write.
Through memory BIOs (``trio.SSLStream``'s way) every byte was copied twice
more and every 16 KiB record was a Python object of its own.

Both ends present a certificate (mutual TLS): the client pins the edge's key;
the edge hands the device key in the client's certificate to the session,
which holds the HELLO to it.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import trio
from cryptography import x509
from OpenSSL import SSL

from ..keys import DeviceKey
from ..protocol.edge import (
    ALPNS,
    FRAME_HEAD,
    Message,
    RemoteProtocolError,
    encode_frame,
    parse_frame_head,
    parse_message,
)
from ..protocol.session import Outstanding, Session
from . import Connections, one_error
from .tls import EdgeKey, certificate_key, check_pin, client_context, server_context

__all__ = [
    "serve_tcp",
    "open_tcp",
    "TcpConnection",
    "TlsChannel",
    "TransportError",
    "HandshakeTimeout",
    "PendingAnswer",
]

log = logging.getLogger("portal.net")

PIPELINE = 8  # requests of one connection in progress at once, on the server
HANDSHAKE_SECONDS = 10.0  # to connect and finish the TLS handshake, for a client and for the edge alike
SEND_SECONDS = 60.0  # the longest one request's frame may take to send before the connection is given up
RECEIVE_BUFFER = 64 << 10  # bytes a channel first decrypts into (made at its first read, grown for a larger part)
RECORD = 16384  # the most plaintext one TLS record carries: what one read can return
TCP_INFO_SIZE, TCP_INFO_RTT = 104, 68  # bytes of struct tcp_info asked for; where tcpi_rtt (microseconds) is


class TransportError(ConnectionError):
    """The connection failed or closed before an answer came."""


class HandshakeTimeout(TransportError):
    """Nothing answered within the handshake's time: the host is down or unreachable, not refusing."""


class TlsChannel(trio.abc.AsyncResource):
    """TLS 1.3 on a non-blocking socket that OpenSSL reads and writes itself, from the trio thread.

    OpenSSL decrypts straight from the socket, a record at a time, into one
    buffer that stays mapped (``receive_exactly`` copies a frame part out of it
    once) and encrypts a whole body into the socket in as few calls as the
    socket's buffer allows (``send_all``). The SSL object is only ever used on
    the trio thread; a send or receive cancelled half-way breaks the channel
    (TLS records cannot be taken back).
    """

    def __init__(self, stream: trio.SocketStream, context: SSL.Context, server_side: bool) -> None:
        trio_socket = stream.socket
        self._socket = socket.socket(trio_socket.family, trio_socket.type, trio_socket.proto, trio_socket.detach())
        self._socket.setblocking(False)
        self._tls = SSL.Connection(context, self._socket)
        if server_side:
            self._tls.set_accept_state()
        else:
            self._tls.set_connect_state()
        self._send_lock = trio.Lock()  # one frame's records at a time
        self._broken: str | None = None
        # records are decrypted here: none until the first read (a connection that never sends costs no
        # buffer), then grown to the largest frame part received, and kept
        self._buffer = bytearray()

    def peer_certificate(self) -> x509.Certificate | None:
        return self._tls.get_peer_certificate(as_cryptography=True)

    @property
    def alpn(self) -> str:
        """The protocol revision the handshake agreed on (docs/design.md, section 12)."""
        return self._tls.get_alpn_proto_negotiated().decode("ascii", "replace")

    def round_trip(self) -> float | None:
        """The kernel's smoothed round-trip time of the connection, in seconds (TCP_INFO's tcpi_rtt); None where
        it has none yet, or the platform does not say."""
        try:
            info = self._socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
        except (OSError, AttributeError):  # a closed socket; TCP_INFO is Linux's
            return None
        if len(info) < TCP_INFO_RTT + 4:
            return None
        (microseconds,) = struct.unpack_from("=I", info, TCP_INFO_RTT)
        return microseconds / 1e6 or None

    @property
    def peer(self) -> str:
        host, port = self._socket.getpeername()[:2]
        return f"{host}:{port}"

    async def _wait(self, want: SSL.Error) -> None:
        if isinstance(want, SSL.WantWriteError):
            await trio.lowlevel.wait_writable(self._socket)
        else:
            await trio.lowlevel.wait_readable(self._socket)

    async def do_handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                return
            except (SSL.WantReadError, SSL.WantWriteError) as want:
                await self._wait(want)
            except (SSL.Error, OSError) as exc:
                raise trio.BrokenResourceError(f"TLS handshake: {_reason(exc)}") from exc

    async def send_all(self, *parts: bytes | bytearray | memoryview) -> None:
        """Send ``parts`` one after the other (as one write: another task's data cannot come between)."""
        async with self._send_lock:
            self._check()
            try:
                for part in parts:
                    view = memoryview(part)
                    while view:
                        try:
                            view = view[self._tls.send(view) :]  # as many records as the socket takes
                        except (SSL.WantReadError, SSL.WantWriteError) as want:
                            await self._wait(want)  # then the same bytes again, as OpenSSL requires
            except (SSL.Error, OSError) as exc:
                raise self._break(exc) from exc
            except trio.Cancelled:
                self._broken = "a send was cancelled half-way"
                raise
        await trio.lowlevel.checkpoint()

    async def receive_exactly(self, n: int) -> bytes:
        """The next ``n`` plaintext bytes. EndOfChannel: the peer closed before the first of them."""
        if len(self._buffer) < n:
            self._buffer = bytearray(max(n, RECEIVE_BUFFER))
        view = memoryview(self._buffer)  # released with the buffer; slices of it are temporaries
        got = 0
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check()
        try:
            while got < n:
                try:
                    k = self._tls.recv_into(view[got:n], min(n - got, RECORD))  # one record at most
                except (SSL.WantReadError, SSL.WantWriteError) as want:
                    await self._wait(want)
                    continue
                except (SSL.ZeroReturnError, SSL.SysCallError) as exc:
                    if isinstance(exc, SSL.SysCallError) and exc.args[0] != -1:
                        raise  # an error on the socket; -1 is an end of the stream without close_notify
                    k = 0
                if not k:
                    if got == 0:
                        raise trio.EndOfChannel
                    raise trio.BrokenResourceError("the peer closed the connection in the middle of a frame")
                got += k
        except (SSL.Error, OSError) as exc:
            raise self._break(exc) from exc
        except trio.Cancelled:
            if got:
                self._broken = "a receive was cancelled half-way"
            raise
        return bytes(view[:n])  # the one copy, out of a buffer whose pages stay mapped

    def _check(self) -> None:
        if self._broken is not None:
            raise trio.BrokenResourceError(self._broken)

    def _break(self, exc: BaseException) -> trio.BrokenResourceError:
        self._broken = f"TLS: {_reason(exc)}"
        return trio.BrokenResourceError(self._broken)

    async def aclose(self) -> None:
        trio.lowlevel.notify_closing(self._socket)
        self._socket.close()
        await trio.lowlevel.checkpoint()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SSL.SysCallError):
        errno, text = (exc.args + (None, None))[:2]
        return "the peer closed the connection" if errno == -1 else str(text or exc)
    if isinstance(exc, SSL.Error):
        reasons = [entry[2] for entry in exc.args[0] if isinstance(entry, tuple)] if exc.args and exc.args[0] else []
        return "; ".join(reasons) or type(exc).__name__
    if isinstance(exc, OSError):
        return str(exc.strerror or exc)
    return str(exc)


async def receive_message(channel: TlsChannel) -> Message | None:
    """The next frame's message, read straight into its parts; None when the peer closed between frames."""
    try:
        head = await channel.receive_exactly(FRAME_HEAD.size)
    except trio.EndOfChannel:
        return None
    kind, header_len, body_len = parse_frame_head(head)
    try:
        header = await channel.receive_exactly(header_len) if header_len else b""
        body = await channel.receive_exactly(body_len) if body_len else b""
    except trio.EndOfChannel:
        raise trio.BrokenResourceError("the peer closed the connection in the middle of a frame") from None
    return parse_message(kind, header, body)


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
    new_session: Callable[[str, bytes | None], Session],
    connections: Connections | None = None,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the edge protocol over TLS; ``new_session(peer, device key in its certificate)`` per connection,
    within ``connections`` (shared with the other transport; its own by default)."""
    context = server_context(key)
    listeners = await trio.open_tcp_listeners(port, host=host)
    held = connections or Connections()
    task_status.started(listeners)

    async def handle(stream: trio.SocketStream) -> None:
        address = str(stream.socket.getpeername()[0])
        if not held.admit(address):
            await trio.aclose_forcefully(stream)
            return
        tls = TlsChannel(stream, context, server_side=True)
        peer = tls.peer
        session: Session | None = None
        try:
            with trio.move_on_after(HANDSHAKE_SECONDS) as handshake:
                await tls.do_handshake()
            if handshake.cancelled_caught:
                log.info("%s: closed: no TLS handshake within %.0f s", peer, HANDSHAKE_SECONDS)
                return
            device_key = certificate_key(tls.peer_certificate())  # the handshake required a certificate
            session = new_session(peer, device_key)
            await _serve_connection(tls, session)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            held.release(address)
            if session is not None:
                session.close()
            await trio.aclose_forcefully(tls)

    await trio.serve_listeners(handle, listeners)


async def _serve_connection(stream: TlsChannel, session: Session) -> None:
    answers_send, answers_recv = trio.open_memory_channel[trio.Event](PIPELINE)
    results: dict[trio.Event, tuple[bytes, bytes | bytearray]] = {}
    limit = trio.Semaphore(PIPELINE)

    async def work(message: Message, done: trio.Event) -> None:
        try:
            answer = session.handle_nowait(message)  # a GET from memory: no thread
            if answer is None:
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
                    message = await receive_message(stream)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                except RemoteProtocolError as exc:  # this connection ends; the edge serves the others
                    log.warning("%s: closed: %s", session.peer, exc)
                    break
                if message is None:
                    break
                await limit.acquire()
                done = trio.Event()
                await answers_send.send(done)
                nursery.start_soon(work, message, done)


class TcpConnection:
    """A client's TLS connection to one edge; ``request`` may be called from many tasks at once."""

    def __init__(self, stream: TlsChannel, peer: str) -> None:
        self.peer = peer
        self.alpn = stream.alpn
        self.round_trip = stream.round_trip
        self._stream = stream
        self._send_lock = trio.Lock()
        self._outstanding: Outstanding[PendingAnswer] = Outstanding(ordered=True)  # answers come in order
        self._failed: BaseException | None = None

    async def request(self, message: Message) -> Message:
        if self._failed is not None:
            raise TransportError(f"edge {self.peer}: connection lost") from self._failed
        answer = PendingAnswer()
        frame = encode_frame(message)
        async with self._send_lock:
            # Shielded: a frame cut half-way by a cancelled caller (a read given up, a copy that lost to
            # another) would break the channel for every request on it. Bounded, for an edge that stops reading.
            with trio.CancelScope(shield=True), trio.move_on_after(SEND_SECONDS) as limit:
                self._outstanding.sent(answer)
                try:
                    await self._stream.send_all(*frame)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._fail(exc)
            if limit.cancelled_caught:
                self._fail(TransportError(f"sending to the edge stalled for {SEND_SECONDS:.0f} s"))
        return await answer.wait(self.peer)

    def _fail(self, exc: BaseException) -> None:
        if self._failed is None:
            self._failed = exc
        for answer in self._outstanding.failed():
            answer.abandon(self._failed)

    async def _read_answers(self) -> None:
        try:
            while True:
                message = await receive_message(self._stream)
                if message is None:
                    raise TransportError("closed by the edge")
                self._outstanding.answered().deliver(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError, TransportError, RemoteProtocolError) as exc:
            self._fail(exc)


@asynccontextmanager
async def open_tcp(
    host: str,
    port: int,
    edge_key: bytes,
    device: DeviceKey,
    *,
    timeout: float = HANDSHAKE_SECONDS,
    offer: Sequence[str] = ALPNS,
) -> AsyncIterator[TcpConnection]:
    """A TLS connection to the edge at host:port whose key is ``edge_key``, as ``device`` (its certificate),
    offering the protocol revisions in ``offer``."""
    peer = f"{host}:{port}"
    tls = await _connect(host, port, client_context(device.signing_key, offer), timeout)
    try:
        check_pin(tls.peer_certificate(), edge_key, peer)
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


async def _connect(host: str, port: int, context: SSL.Context, timeout: float) -> TlsChannel:
    """Connect and shake hands within ``timeout`` seconds (a host that is gone answers nothing at all)."""
    peer = f"{host}:{port}"
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise TransportError(f"edge {peer}: {exc.strerror or exc}") from exc
        tls = TlsChannel(stream, context, server_side=False)
        try:
            await tls.do_handshake()
            return tls
        except (trio.BrokenResourceError, OSError) as exc:
            await trio.aclose_forcefully(tls)
            raise TransportError(f"edge {peer}: TLS handshake failed") from exc
        except trio.Cancelled:
            await trio.aclose_forcefully(tls)
            raise
    raise HandshakeTimeout(f"edge {peer}: no TLS handshake within {timeout:.0f} s")
