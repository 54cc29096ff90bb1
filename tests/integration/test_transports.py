"""The edge protocol over each transport, against a real portal-edge process on loopback."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from OpenSSL import SSL

from portalfs.edge.client import EdgeAddress, EdgeClient, connect_edge
from portalfs.edge.server import EDGE_SMALL_MAX
from portalfs.errors import CorruptObject, IntegrityError, MissingObject, Unreachable
from portalfs.keys import DeviceKey, Identity
from portalfs.net.quic import QuicClient, open_quic
from portalfs.net.tcp import TlsChannel, TransportError, open_tcp, receive_message
from portalfs.net.tls import client_context
from portalfs.protocol.edge import (
    ALPN,
    FRAME_HEAD,
    MAX_BODY,
    Failure,
    Get,
    Hello,
    Message,
    Welcome,
    encode_frame,
    hello_message,
)
from portalfs.sealing import object_id

from .fabricutil import Server, start

TRANSPORTS = [("tcp", "qh3"), ("quic", "qh3"), ("quic", "aioquic")]


@pytest.fixture(params=TRANSPORTS, ids=[f"{t}-{q}" for t, q in TRANSPORTS])
def edge(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Server, EdgeAddress]]:
    transport, quic = request.param
    data = tmp_path / "edge"
    server = start(
        ["edge", "serve", "--data", str(data), "--listen", "127.0.0.1:0", "--transport", transport, "--quic", quic],
        data,
    )
    try:
        _, port = server.line.split()[2].rsplit(":", 1)
        yield server, EdgeAddress("127.0.0.1", int(port), bytes.fromhex(server.line.rsplit(" ", 1)[1]), transport)
    finally:
        server.stop()


def _device() -> tuple[DeviceKey, bytes]:
    identity, device = Identity(os.urandom(32)), DeviceKey(os.urandom(32))
    return device, identity.enroll(device.public, "test", time.time_ns()).to_bytes()


async def test_put_get_have_stat_and_refusals_over_each_transport(edge: tuple[Server, EdgeAddress]) -> None:
    _, address = edge
    device, cert = _device()
    blobs = [os.urandom(n) for n in (0, 1, 70_000, 3 * 1024 * 1024 + 7)]  # empty to larger than any read

    async with connect_edge(address, device, cert) as client:
        cids = [object_id(b) for b in blobs]
        async with trio.open_nursery() as nursery:  # pipelined: every PUT at once
            for cid, blob in zip(cids, blobs, strict=True):
                nursery.start_soon(client.put, cid, blob)
        assert await client.put(cids[2], blobs[2]) is False  # already held
        got: dict[bytes, bytes] = {}

        async def fetch(cid: bytes) -> None:
            got[cid] = await client.get(cid)

        async with trio.open_nursery() as nursery:
            for cid in cids * 3:
                nursery.start_soon(fetch, cid)
        assert [got[c] for c in cids] == blobs
        missing = object_id(b"never stored")
        assert await client.have([cids[3], missing, cids[0]]) == [True, False, True]
        round_trip = client.round_trip()  # the kernel's, over TCP; the QUIC libraries do not say theirs
        assert round_trip is None if address.transport == "quic" else 0 < round_trip < 1, round_trip
        status = await client.stat()
        assert status.objects == len(blobs) and status.used >= sum(map(len, blobs))
        with pytest.raises(CorruptObject):
            await client.put(missing, b"not what the id says")
        with pytest.raises(MissingObject):
            await client.get(missing)
        assert await client.have([missing]) == [False]  # the refused PUT stored nothing


async def test_many_objects_go_in_one_request_where_the_edge_speaks_revision_5(
    edge: tuple[Server, EdgeAddress],
) -> None:
    _, address = edge
    device, cert = _device()
    blobs = [os.urandom(1000 + i) for i in range(40)] + [os.urandom(3 * 1024 * 1024) for _ in range(3)]
    cids = [object_id(b) for b in blobs]
    async with connect_edge(address, device, cert) as client:
        assert client.batches
        assert await client.put_many(list(zip(cids[:40], blobs[:40], strict=True))) == [True] * 40
        for cid, blob in zip(cids[40:], blobs[40:], strict=True):
            await client.put(cid, blob)
        missing = object_id(b"never stored")
        wanted = [cids[3], missing, *cids[38:]]
        got: list[object] = []
        while len(got) < len(wanted):  # three large objects do not fit one answer: asked again for the rest
            got += await client.get_many(wanted[len(got) :])
        assert got == [blobs[3], None, *blobs[38:]]
        assert client.requests["GETS"] >= 2 and client.requests["GET"] == 0

    # a device of an earlier revision offers portal/1 alone: it is served one object a request
    opened = (
        open_tcp(address.host, address.port, address.key, device, offer=(ALPN,))
        if address.transport == "tcp"
        else open_quic(address.host, address.port, address.key, offer=(ALPN,))
    )
    async with opened as transport:
        older = EdgeClient(transport, address)
        await older.hello(device, cert)
        assert not older.batches
        assert await older.get(cids[5]) == blobs[5]


async def test_an_object_damaged_on_the_edge_is_refused_by_the_reader(edge: tuple[Server, EdgeAddress]) -> None:
    server, address = edge
    device, cert = _device()
    blob = os.urandom(EDGE_SMALL_MAX + 1)  # a file (a row is read, and checked, on a worker thread)
    cid = object_id(blob)

    async with connect_edge(address, device, cert) as client:
        await client.put(cid, blob)
        path = server.data / "store" / "objects" / cid.hex()[:2] / cid.hex()
        damaged = bytearray(path.read_bytes())
        damaged[1000] ^= 1
        path.write_bytes(damaged)  # in the page cache: the edge serves it as it is, unchecked
        with pytest.raises(CorruptObject):
            await client.get(cid)


async def test_a_client_hangs_up_on_an_edge_that_is_not_the_pinned_key(edge: tuple[Server, EdgeAddress]) -> None:
    _, address = edge
    device, cert = _device()
    impostor = EdgeAddress(address.host, address.port, DeviceKey(os.urandom(32)).public, address.transport)

    with pytest.raises((IntegrityError, Unreachable)):
        async with connect_edge(impostor, device, cert):
            raise AssertionError("connected to an edge with another key")


async def test_an_edge_that_is_gone_is_unreachable(edge: tuple[Server, EdgeAddress]) -> None:
    server, address = edge
    server.stop()
    device, cert = _device()

    with pytest.raises(Unreachable):
        with trio.fail_after(30):
            async with connect_edge(address, device, cert):
                raise AssertionError("connected to a stopped edge")


async def test_over_quic_an_answer_given_up_stops_the_edge_sending_it(edge: tuple[Server, EdgeAddress]) -> None:
    """A GET cancelled (a copy that lost to another in the endgame) sends STOP_SENDING: the edge stops sending
    the rest of the object, and the connection goes on serving."""
    _, address = edge
    if address.transport != "quic":
        pytest.skip("over TCP an answer is one frame on the connection's stream: it cannot be stopped half-way")
    device, cert = _device()
    big, small = os.urandom(MAX_BODY - 1024), os.urandom(1000)
    async with connect_edge(address, device, cert) as client:
        for blob in (big, small):
            await client.put(object_id(blob), blob)
    async with connect_edge(address, device, cert) as client:
        quic = client._transport
        assert isinstance(quic, QuicClient)
        with trio.move_on_after(0.002) as given_up:
            await client.get(object_id(big))
        assert given_up.cancelled_caught, "the answer came whole within 2 ms"
        assert await client.get(object_id(small)) == small
        with trio.fail_after(10):
            while quic._stopped:  # until the edge's RESET_STREAM (or the answer's end) came
                await trio.sleep(0.01)
        await trio.sleep(0.2)  # anything still on its way
        assert quic._endpoint.received < len(big) // 2, quic._endpoint.received
        assert not quic._streams.readers


@pytest.fixture
def tcp_edge(tmp_path: Path) -> Iterator[tuple[Server, EdgeAddress]]:
    data = tmp_path / "edge"
    server = start(["edge", "serve", "--data", str(data), "--listen", "127.0.0.1:0", "--transport", "tcp"], data)
    try:
        _, port = server.line.split()[2].rsplit(":", 1)
        yield server, EdgeAddress("127.0.0.1", int(port), bytes.fromhex(server.line.rsplit(" ", 1)[1]), "tcp")
    finally:
        server.stop()


@pytest.mark.parametrize(
    "garbage",
    [
        FRAME_HEAD.pack(Get.KIND, 0, MAX_BODY + 1),  # a body larger than any frame may carry
        FRAME_HEAD.pack(Get.KIND, 40, 0) + b"\x01" * 10,  # a frame cut short by the hang-up
        FRAME_HEAD.pack(0x7E, 0, 0),  # an unknown kind
    ],
    ids=["oversized", "truncated", "unknown-kind"],
)
async def test_a_tls_peer_that_sends_a_bad_frame_is_hung_up_on_and_others_are_served(
    tcp_edge: tuple[Server, EdgeAddress], garbage: bytes
) -> None:
    server, address = tcp_edge
    device, cert = _device()

    with trio.fail_after(30):
        stream = await trio.open_tcp_stream(address.host, address.port)
        bad = TlsChannel(stream, client_context(device.signing_key), server_side=False)
        await bad.do_handshake()
        await bad.send_all(garbage)
        if garbage[0] == 0x7E or len(garbage) == FRAME_HEAD.size:
            with pytest.raises((trio.EndOfChannel, trio.BrokenResourceError)):  # the edge hung up
                await bad.receive_exactly(1)
        await bad.aclose()
        async with connect_edge(address, device, cert) as client:  # and serves everyone else
            blob = os.urandom(100_000)
            await client.put(object_id(blob), blob)
            assert await client.get(object_id(blob)) == blob
    assert server.process.poll() is None


async def test_over_tcp_the_edge_requires_a_client_certificate_for_the_hello_device(
    tcp_edge: tuple[Server, EdgeAddress],
) -> None:
    server, address = tcp_edge
    device, cert = _device()
    impostor = DeviceKey(os.urandom(32))  # holds a TLS certificate of its own, and replays nothing

    async def hello_over(context: SSL.Context) -> Message | None:
        stream = await trio.open_tcp_stream(address.host, address.port)
        channel = TlsChannel(stream, context, server_side=False)
        try:
            await channel.do_handshake()
            now, nonce = time.time_ns(), os.urandom(16)
            hello = Hello(device.public, cert, now, nonce, device.sign(hello_message(address.key, now, nonce)))
            await channel.send_all(*encode_frame(hello))
            return await receive_message(channel)
        finally:
            await channel.aclose()

    with trio.fail_after(30):
        answer = await hello_over(client_context(impostor.signing_key))  # a valid HELLO, another device's TLS
        assert isinstance(answer, Failure) and answer.code == "unauthenticated"
        bare = SSL.Context(SSL.TLS_METHOD)  # no certificate at all: the handshake is refused
        bare.set_min_proto_version(SSL.TLS1_3_VERSION)
        bare.set_alpn_protos([b"portal/1"])
        with pytest.raises((trio.BrokenResourceError, trio.EndOfChannel)):
            await hello_over(bare)
        assert isinstance(await hello_over(client_context(device.signing_key)), Welcome)
    assert server.process.poll() is None


async def test_a_client_gives_up_on_a_tcp_peer_that_never_shakes_hands() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")  # the kernel accepts; nobody answers
    port = listeners[0].socket.getsockname()[1]
    try:
        with trio.fail_after(10), pytest.raises(TransportError, match="no TLS handshake within"):
            async with open_tcp("127.0.0.1", port, os.urandom(32), DeviceKey(os.urandom(32)), timeout=0.5):
                raise AssertionError("a handshake with nobody")
    finally:
        await listeners[0].aclose()


async def test_a_refused_transport_falls_back_to_the_other(tmp_path: Path) -> None:
    data = tmp_path / "edge"
    server = start(["edge", "serve", "--data", str(data), "--listen", "127.0.0.1:0", "--transport", "quic"], data)
    try:
        _, port = server.line.split()[2].rsplit(":", 1)
        key = bytes.fromhex(server.line.rsplit(" ", 1)[1])
        address = EdgeAddress("127.0.0.1", int(port), key, "tcp", fallback="quic")  # no TCP listener: refused
        device, cert = _device()
        with trio.fail_after(30):
            async with connect_edge(address, device, cert) as client:
                blob = os.urandom(50_000)
                await client.put(object_id(blob), blob)
                assert await client.get(object_id(blob)) == blob
    finally:
        server.stop()


def _rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


async def test_one_address_cannot_take_every_connection_or_the_edges_memory(
    tcp_edge: tuple[Server, EdgeAddress],
) -> None:
    """A peer opening connections by the hundred, never shaking hands: those past its address's share are
    closed at once, the edge's memory barely moves, and a device at another address is served."""
    import socket

    from portalfs.net import MAX_PER_ADDRESS

    server, address = tcp_edge
    before = _rss(server.process.pid)
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_PER_ADDRESS + 36):
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))  # another loopback address: the flood's own
            sock.connect((address.host, address.port))
            held.append(sock)
        closed = 0
        deadline = time.monotonic() + 5  # well within the edge's 10 s for a handshake
        while time.monotonic() < deadline and closed < 36:
            time.sleep(0.1)
            closed = 0
            for sock in held:
                try:
                    closed += sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""  # hung up on
                except BlockingIOError:
                    pass  # held open, waiting for a handshake
                except ConnectionResetError:
                    closed += 1
        assert closed == 36, f"{closed} of the flood's connections were refused"
        device, cert = _device()
        with trio.fail_after(30):
            async with connect_edge(address, device, cert) as client:
                assert (await client.stat()).objects == 0
        peak = _rss(server.process.pid, "VmHWM")
        assert peak - before < 32 << 20, f"the edge grew by {(peak - before) >> 20} MiB"
    finally:
        for sock in held:
            sock.close()


async def test_spoofed_quic_initials_take_no_connection_slot(tmp_path: Path) -> None:
    """Initial packets from an address that never answers (spoofed) are each met with a Retry and nothing
    held: past the 64 connections one address may have, a real client from that address still connects."""
    import socket

    from portalfs.net import MAX_PER_ADDRESS

    data = tmp_path / "edge"
    server = start(["edge", "serve", "--data", str(data), "--listen", "127.0.0.1:0", "--transport", "quic"], data)
    try:
        _, port = server.line.split()[2].rsplit(":", 1)
        address = EdgeAddress("127.0.0.1", int(port), bytes.fromhex(server.line.rsplit(" ", 1)[1]), "quic")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
            for _ in range(3 * MAX_PER_ADDRESS):
                head = bytes([0xC3]) + (1).to_bytes(4, "big") + bytes([8]) + os.urandom(8) + bytes([8])
                head += os.urandom(8) + bytes([0])  # source id, then no token
                rest = 1250 - len(head) - 2
                flood.sendto(head + bytes([0x40 | (rest >> 8), rest & 0xFF]) + os.urandom(rest), (address.host,
                             address.port))  # fmt: skip
        device, cert = _device()
        with trio.fail_after(30):
            async with connect_edge(address, device, cert) as client:
                assert (await client.stat()).objects == 0
    finally:
        server.stop()
