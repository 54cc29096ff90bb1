"""The edge protocol over QUIC: aioquic's sans-I/O connection (or qh3's) driven by trio.

One request per client-initiated bidirectional stream. The driver is the same
for both libraries (qh3 is an aioquic fork with the same API and a native
core); ``backend()`` picks qh3 when it is installed unless told otherwise.
After reading, the driver drains every datagram already waiting on the socket
before it asks the connection what to send, so acknowledgements are batched.
"""

from __future__ import annotations

import errno
import hmac
import importlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import blake3
import trio

from ..protocol.edge import ALPNS, FrameReader, Message, RemoteProtocolError, encode_message
from ..protocol.session import Outstanding, Session
from . import Connections, one_error
from .tcp import HandshakeTimeout, PendingAnswer, TransportError
from .tls import EdgeKey, check_pin

__all__ = ["Backend", "backend", "serve_quic", "open_quic", "QuicClient"]

log = logging.getLogger("portal.net")

DATAGRAM_SIZE = 1452  # what a 1500-byte Ethernet path carries over IPv4 or IPv6 UDP
MAX_DATA = 64 * 1024 * 1024  # connection flow-control window
MAX_STREAM_DATA = 16 * 1024 * 1024  # per-stream window: a whole object in flight
ERROR_GIVEN_UP = 0x10  # application error code of a STOP_SENDING: the client no longer wants the answer
RECV_SIZE = 65536
CONCURRENT_REQUESTS = 64  # streams a client keeps open at once (below the peer's stream limit)


@dataclass(frozen=True)
class Backend:
    name: str
    QuicConnection: Any
    QuicConfiguration: Any
    events: ModuleType
    pull_quic_header: Callable[..., Any]
    Buffer: Any
    ConnectionError: type[Exception]  # what the connection raises when used after it closed
    encode_quic_retry: Callable[..., bytes]

    def configuration(self, *, is_client: bool, offer: Sequence[str] = ALPNS) -> Any:
        """A connection's; a client offers the protocol revisions in ``offer``, a server picks the newest."""
        config = self.QuicConfiguration(
            is_client=is_client,
            alpn_protocols=list(offer),
            max_datagram_size=DATAGRAM_SIZE,
            idle_timeout=30.0,
        )
        config.max_data = MAX_DATA
        config.max_stream_data = MAX_STREAM_DATA
        if hasattr(config, "signature_algorithms"):  # qh3 leaves EdDSA out unless asked; edges use Ed25519
            tls = importlib.import_module(f"{self.name}.tls")
            config.signature_algorithms = [tls.SignatureAlgorithm.ED25519]
        if hasattr(config, "congestion_control_algorithm"):
            config.congestion_control_algorithm = "cubic"
        return config

    def peer_certificate(self, connection: Any) -> bytes | None:
        """The DER certificate the peer presented."""
        if hasattr(connection, "get_peercert"):  # qh3
            cert = connection.get_peercert()
            return None if cert is None else bytes(cert.public_bytes())
        from cryptography.hazmat.primitives.serialization import Encoding

        cert = getattr(connection.tls, "_peer_certificate", None)  # aioquic keeps it private
        return None if cert is None else bytes(cert.public_bytes(Encoding.DER))


def backend(name: str | None = None) -> Backend:
    """``"qh3"``, ``"aioquic"``, or None: qh3 when installed, else aioquic (env PORTAL_QUIC overrides)."""
    wanted = name or os.environ.get("PORTAL_QUIC") or ""
    for candidate in [wanted] if wanted else ["qh3", "aioquic"]:
        try:
            connection = importlib.import_module(f"{candidate}.quic.connection")
            configuration = importlib.import_module(f"{candidate}.quic.configuration")
            events = importlib.import_module(f"{candidate}.quic.events")
            packet = importlib.import_module(f"{candidate}.quic.packet")
            buffer = importlib.import_module("qh3._hazmat" if candidate == "qh3" else "aioquic.buffer")
        except ImportError:
            continue
        return Backend(
            candidate,
            connection.QuicConnection,
            configuration.QuicConfiguration,
            events,
            packet.pull_quic_header,
            buffer.Buffer,
            connection.QuicConnectionError,
            packet.encode_quic_retry,
        )
    raise TransportError(f"no QUIC library: install {wanted or 'qh3 or aioquic'}")


def _udp_socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
        except OSError:
            pass
    return sock


class _Endpoint:
    """A non-blocking UDP socket and the one loop that moves datagrams for its connections."""

    def __init__(self, sock: socket.socket, *, one_peer: bool = False) -> None:
        self.sock = sock
        self.one_peer = one_peer  # a client's socket, connected to its edge: a refusal is the edge's answer
        self._wake: trio.CancelScope | None = None
        self.deadline = float("inf")
        self.received = 0  # bytes of the datagrams drained

    def drain(self) -> list[tuple[bytes, Any]]:
        """Every datagram waiting on the socket now."""
        received: list[tuple[bytes, Any]] = []
        while True:
            try:
                datagram = self.sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return received
            except OSError as exc:  # ICMP errors surface here on Linux
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH) and not self.one_peer:
                    continue  # about one of a server's many peers: not the socket's end
                raise
            received.append(datagram)
            self.received += len(datagram[0])

    def send_raw(self, datagram: bytes, addr: Any) -> None:
        """One datagram the server makes itself (a Retry); dropped if the socket buffer is full."""
        try:
            self.sock.sendto(datagram, addr)
        except OSError as exc:
            log.debug("sendto %s: %s", addr, exc)

    def send(self, connection: Any) -> None:
        """Send what the connection has to send now; move the loop's deadline to its timer."""
        for data, addr in connection.datagrams_to_send(now=time.monotonic()):
            try:
                self.sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                pass  # the socket buffer is full: QUIC's loss recovery resends it
            except OSError as exc:
                if self.one_peer and exc.errno == errno.ECONNREFUSED:
                    raise  # an earlier datagram was refused: nobody listens there
                log.debug("sendto %s: %s", addr, exc)
        timer = connection.get_timer()
        if timer is not None and timer < self.deadline:
            self.deadline = timer
            if self._wake is not None:
                self._wake.deadline = trio.current_time() + max(0.0, timer - time.monotonic())

    async def wait(self) -> bool:
        """Wait for datagrams or the deadline; True when datagrams may be waiting."""
        with trio.CancelScope(deadline=trio.current_time() + max(0.0, self.deadline - time.monotonic())) as scope:
            self._wake = scope
            await trio.lowlevel.wait_readable(self.sock)
        self._wake = None
        return not scope.cancelled_caught


class _Streams:
    """Per-stream reassembly of frames arriving on a connection."""

    def __init__(self) -> None:
        self.readers: dict[int, FrameReader] = {}

    def feed(self, stream_id: int, data: bytes, end: bool) -> Message | None:
        reader = self.readers.setdefault(stream_id, FrameReader())
        reader.feed(data)
        message = reader.next_message()
        if message is not None or end:
            self.readers.pop(stream_id, None)
            if message is None or reader.pending:
                raise RemoteProtocolError(f"stream {stream_id}: not exactly one frame")
        return message


# server


class RetryTokens:
    """Stateless address validation (RFC 9000, section 8.1): the first Initial of a new connection is answered
    with a Retry whose token comes back only from a client that receives at the address it sends from; the
    edge holds nothing for a connection before that, so spoofed Initials take no slot. A token is a MAC, under
    a key of this process, of the address, the time, the client's original connection id and the one the
    Retry gave; it is good for TOKEN_NS."""

    TOKEN_NS = 10 * 10**9

    def __init__(self) -> None:
        self._key = os.urandom(32)

    def _mac(self, addr: tuple[str, int], body: bytes) -> bytes:
        return blake3.blake3(f"{addr[0]}|{addr[1]}|".encode() + body, key=self._key).digest()[:16]

    def make(self, addr: tuple[str, int], original: bytes, retry: bytes, now_ns: int) -> bytes:
        body = now_ns.to_bytes(8, "big") + bytes([len(original)]) + original + retry
        return body + self._mac(addr, body)

    def check(self, addr: tuple[str, int], token: bytes, now_ns: int) -> tuple[bytes, bytes] | None:
        """(original connection id, the Retry's) of a good token; None for any other."""
        body, mac = token[:-16], token[-16:]
        if len(body) < 9 or not hmac.compare_digest(mac, self._mac(addr, body)):
            return None
        if not 0 <= now_ns - int.from_bytes(body[:8], "big") <= self.TOKEN_NS:
            return None
        size = body[8]
        return body[9 : 9 + size], body[9 + size :]


async def serve_quic(
    key: EdgeKey,
    host: str,
    port: int,
    new_session: Callable[[str], Session],
    connections: Connections | None = None,
    *,
    quic: Backend | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the edge protocol over QUIC; ``new_session(peer)`` per connection, within ``connections`` (shared
    with the other transport; its own by default): an Initial packet past them is dropped. A connection is
    made only for a client whose address a Retry validated (``RetryTokens``)."""
    quic = quic or backend()
    held = connections or Connections()
    tokens = RetryTokens()
    config = quic.configuration(is_client=False)
    config.load_cert_chain(str(key.cert_file), str(key.key_file))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = _udp_socket(family)
    sock.bind((host, port))
    endpoint = _Endpoint(sock)
    by_cid: dict[bytes, _ServerConnection] = {}
    task_status.started(sock.getsockname()[:2])
    log.info("QUIC (%s) on %s:%d", quic.name, *sock.getsockname()[:2])
    try:
        async with trio.open_nursery() as nursery:
            while True:
                readable = await endpoint.wait()
                now = time.monotonic()
                touched: set[_ServerConnection] = set()
                for data, addr in endpoint.drain() if readable else []:
                    try:
                        header = quic.pull_quic_header(
                            quic.Buffer(data=data), host_cid_length=config.connection_id_length
                        )
                    except ValueError:
                        continue
                    conn = by_cid.get(header.destination_cid)
                    if conn is None:
                        if len(data) < 1200 or not _is_initial(header.packet_type):
                            continue
                        if not header.token:  # validate the address first: a Retry, and nothing held
                            retry = os.urandom(8)
                            token = tokens.make(addr, header.destination_cid, retry, time.time_ns())
                            endpoint.send_raw(quic.encode_quic_retry(
                                version=header.version, source_cid=retry, destination_cid=header.source_cid,
                                original_destination_cid=header.destination_cid, retry_token=token), addr)  # fmt: skip
                            continue
                        checked = tokens.check(addr, header.token, time.time_ns())
                        if checked is None or checked[1] != header.destination_cid or not held.admit(addr[0]):
                            continue
                        quic_conn = quic.QuicConnection(
                            configuration=config,
                            original_destination_connection_id=checked[0],
                            retry_source_connection_id=header.destination_cid,
                        )
                        conn = _ServerConnection(quic, quic_conn, addr, new_session, endpoint, nursery)
                        by_cid[header.destination_cid] = conn
                        by_cid[quic_conn.host_cid] = conn
                    conn.quic.receive_datagram(data, addr, now)
                    touched.add(conn)
                endpoint.deadline = float("inf")
                for conn in list(set(by_cid.values())):
                    timer = conn.quic.get_timer()
                    if timer is not None and timer <= now:
                        conn.quic.handle_timer(now)
                        touched.add(conn)
                for conn in touched:
                    conn.process_events(quic)
                for conn in set(by_cid.values()):
                    endpoint.send(conn.quic)
                    if conn.closed:
                        for cid in [c for c, v in by_cid.items() if v is conn]:
                            del by_cid[cid]
                        held.release(conn.address)
                        conn.session.close()
    finally:
        sock.close()


def _is_initial(packet_type: Any) -> bool:
    return getattr(packet_type, "name", None) == "INITIAL"


class _ServerConnection:
    def __init__(
        self,
        backend: Backend,
        quic: Any,
        addr: tuple[str, int],
        new_session: Callable[[str], Session],
        endpoint: _Endpoint,
        nursery: trio.Nursery,
    ) -> None:
        self.quic = quic
        self.address = addr[0]  # the peer's network address, as counted in the server's Connections
        self.peer = f"{addr[0]}:{addr[1]}"
        self.session = new_session(self.peer)
        self.endpoint = endpoint
        self.nursery = nursery
        self.streams = _Streams()
        self.closed = False
        self.backend = backend

    def process_events(self, quic: Backend) -> None:
        events = quic.events
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                try:
                    message = self.streams.feed(event.stream_id, event.data, event.end_stream)
                except RemoteProtocolError as exc:
                    log.warning("%s: %s", self.peer, exc)
                    self.quic.reset_stream(event.stream_id, 1)
                    continue
                if message is not None:
                    self.nursery.start_soon(self._answer, event.stream_id, message)
            elif isinstance(event, events.ConnectionTerminated):
                self.closed = True

    async def _answer(self, stream_id: int, message: Message) -> None:
        answer = self.session.handle_nowait(message)  # a GET from memory: no thread
        if answer is None:
            answer = await trio.to_thread.run_sync(self.session.handle, message, time.time_ns())
        if not self.closed:
            try:
                self.quic.send_stream_data(stream_id, encode_message(answer), end_stream=True)
                self.endpoint.send(self.quic)
            # RuntimeError: the device stopped the stream (STOP_SENDING: a copy it gave up) while a worker thread
            # read the answer, and the stream was reset; aioquic refuses data on it so. It once ended the edge.
            except (self.backend.ConnectionError, ValueError, RuntimeError) as exc:
                log.debug("%s: answer not sent: %s", self.peer, exc)


# client


class QuicClient:
    """A client's QUIC connection to one edge; ``request`` may be called from many tasks at once."""

    def __init__(self, quic: Backend, connection: Any, endpoint: _Endpoint, peer: str) -> None:
        self.peer = peer
        self._quic = quic
        self._conn = connection
        self._endpoint = endpoint
        self._streams = _Streams()
        self._outstanding: Outstanding[PendingAnswer] = Outstanding(ordered=False)  # by stream
        self._handshake = trio.Event()
        self._failed: BaseException | None = None
        self._slots = trio.Semaphore(CONCURRENT_REQUESTS)
        self._stopped: set[int] = set()  # streams whose answers were given up, until the edge resets them
        self.alpn = ""  # the protocol revision the handshake agreed on

    def round_trip(self) -> float | None:
        """None: neither QUIC library says its smoothed round trip in its public API."""
        return None

    async def request(self, message: Message) -> Message:
        async with self._slots:
            return await self._request(message)

    async def _request(self, message: Message) -> Message:
        if self._failed is not None:
            raise TransportError(f"edge {self.peer}: connection lost") from self._failed
        stream_id = self._conn.get_next_available_stream_id()
        answer = PendingAnswer()
        self._outstanding.sent(answer, stream_id)
        try:
            self._conn.send_stream_data(stream_id, encode_message(message), end_stream=True)
            self._endpoint.send(self._conn)
        except (self._quic.ConnectionError, ValueError) as exc:
            self._fail(exc)
        try:
            return await answer.wait(self.peer)
        except trio.Cancelled:
            self._stop(stream_id)
            raise

    def _stop(self, stream_id: int) -> None:
        """A request given up before its answer came (a copy that lost to another, a read cancelled): the edge is
        asked to stop sending the answer (STOP_SENDING: it resets the stream, and neither sends nor resends the
        rest), and what came of it is dropped. Without this, a duplicate cancelled in the endgame kept the edge
        sending, for nothing, up to a whole object."""
        if stream_id not in self._outstanding:
            return  # answered meanwhile, or the connection failed
        self._outstanding.answered(stream_id)
        self._streams.readers.pop(stream_id, None)
        if self._failed is not None:
            return
        self._stopped.add(stream_id)
        try:
            self._conn.stop_stream(stream_id, ERROR_GIVEN_UP)
            self._endpoint.send(self._conn)
        except (self._quic.ConnectionError, ValueError) as exc:
            log.debug("%s: stream %d not stopped: %s", self.peer, stream_id, exc)

    def _fail(self, exc: BaseException) -> None:
        if self._failed is None:
            self._failed = exc
        self._handshake.set()
        for answer in self._outstanding.failed():
            answer.abandon(self._failed)

    async def _run(self) -> None:
        try:
            await self._pump()
        except (self._quic.ConnectionError, ValueError, OSError) as exc:
            self._fail(TransportError(f"QUIC connection failed: {exc}"))

    async def _pump(self) -> None:
        events = self._quic.events
        endpoint = self._endpoint
        while self._failed is None:
            endpoint.deadline = float("inf")
            endpoint.send(self._conn)
            readable = await endpoint.wait()
            now = time.monotonic()
            for data, addr in endpoint.drain() if readable else []:
                self._conn.receive_datagram(data, addr, now)
            timer = self._conn.get_timer()
            if timer is not None and timer <= now:
                self._conn.handle_timer(now)
            while (event := self._conn.next_event()) is not None:
                if isinstance(event, events.HandshakeCompleted):
                    self.alpn = event.alpn_protocol or ""
                    self._handshake.set()
                elif isinstance(event, events.StreamDataReceived):
                    if event.stream_id in self._stopped:  # what was on its way before the edge stopped
                        if event.end_stream:
                            self._stopped.discard(event.stream_id)
                        continue
                    try:
                        message = self._streams.feed(event.stream_id, event.data, event.end_stream)
                    except RemoteProtocolError as exc:
                        self._fail(exc)
                        break
                    if message is not None and event.stream_id in self._outstanding:
                        self._outstanding.answered(event.stream_id).deliver(message)
                elif isinstance(event, events.StreamReset):
                    self._stopped.discard(event.stream_id)
                    if event.stream_id in self._outstanding:
                        self._outstanding.answered(event.stream_id).abandon(self._failed)
                elif isinstance(event, events.ConnectionTerminated):
                    self._fail(TransportError(f"closed: {event.reason_phrase or event.error_code}"))

    async def close(self) -> None:
        if self._failed is None:
            try:
                self._conn.close()
                self._endpoint.send(self._conn)
            except (self._quic.ConnectionError, ValueError):
                pass


@asynccontextmanager
async def open_quic(
    host: str,
    port: int,
    edge_key: bytes,
    *,
    quic: Backend | None = None,
    timeout: float = 10.0,
    offer: Sequence[str] = ALPNS,
) -> AsyncIterator[QuicClient]:
    quic = quic or backend()
    peer = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise TransportError(f"edge {peer}: {exc}") from exc
    family, _, _, _, addr = infos[0]
    sock = _udp_socket(family)
    sock.connect(addr)  # one peer: a refusal (ICMP port unreachable) ends the handshake at once, not at the timeout
    config = quic.configuration(is_client=True, offer=offer)
    config.verify_mode = 0  # ssl.CERT_NONE: the pin is checked below
    config.server_name = "portal-edge"
    connection = quic.QuicConnection(configuration=config)
    connection.connect(addr, now=time.monotonic())
    client = QuicClient(quic, connection, _Endpoint(sock, one_peer=True), peer)
    try:
        with one_error():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client._run)
                with trio.move_on_after(timeout):
                    await client._handshake.wait()
                if not client._handshake.is_set():
                    raise HandshakeTimeout(f"edge {peer}: no QUIC handshake within {timeout:.0f} s")
                if client._failed is not None:
                    raise TransportError(f"edge {peer}: no QUIC handshake") from client._failed
                check_pin(quic.peer_certificate(connection), edge_key, peer)
                try:
                    yield client
                finally:
                    await client.close()
                    nursery.cancel_scope.cancel()
    finally:
        sock.close()
