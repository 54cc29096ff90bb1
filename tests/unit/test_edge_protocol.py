"""The edge protocol without sockets: frames, parsers (fuzzed), and the edge's session rules."""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portalfs.edge.server import EDGE_SMALL_MAX
from portalfs.edge.service import EdgeService, EdgeSession, QuotaBook
from portalfs.hub.client import Listed
from portalfs.keys import DeviceKey, Identity
from portalfs.protocol.edge import (
    MAX_BATCH,
    MAX_BODY,
    Bitmap,
    Data,
    Failure,
    FrameReader,
    Get,
    GetMany,
    Have,
    Hello,
    Objects,
    Put,
    PutMany,
    RemoteProtocolError,
    Stat,
    Status,
    Stored,
    Welcome,
    encode_message,
    hello_message,
)
from portalfs.sealing import object_id
from portalfs.store import LocalStore, MemoryStore, ObjectStore

EDGE = os.urandom(32)

MESSAGES = [
    Hello(os.urandom(32), b"cert", 123, os.urandom(16), os.urandom(64)),
    Get(os.urandom(32)),
    Put(os.urandom(32), os.urandom(1000)),
    Have(tuple(os.urandom(32) for _ in range(5))),
    PutMany.of([(os.urandom(32), os.urandom(n)) for n in (10, 0, 300)]),
    GetMany(tuple(os.urandom(32) for _ in range(3))),
    Stat(),
    Welcome(os.urandom(32)),
    Data(b"x" * 10),
    Objects((3, 0, 2), b"abcde"),
    Stored(True),
    Bitmap.from_flags([True, False, True]),
    Status(1, 2, 3, 4, 5, 6),
    Failure("quota", "too much"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_a_byte_at_a_time_stream(message: object) -> None:
    reader = FrameReader()
    frame = encode_message(message)  # type: ignore[arg-type]
    got = None
    for i in range(len(frame)):
        assert got is None
        reader.feed(frame[i : i + 1])
        got = reader.next_message()
    assert got == message and reader.pending == 0


@given(st.binary(max_size=200))
@settings(max_examples=400)
def test_random_bytes_never_crash_the_parser(data: bytes) -> None:
    reader = FrameReader()
    reader.feed(data)
    try:
        while reader.next_message() is not None:
            pass
    except RemoteProtocolError:
        pass


@given(st.sampled_from(MESSAGES), st.integers(min_value=0), st.integers(min_value=0, max_value=255))
@settings(max_examples=400)
def test_a_damaged_frame_is_refused_or_parses_to_a_valid_message(message: object, where: int, byte: int) -> None:
    frame = bytearray(encode_message(message))  # type: ignore[arg-type]
    frame[where % len(frame)] = byte
    reader = FrameReader()
    reader.feed(frame)
    try:
        got = reader.next_message()
    except RemoteProtocolError:
        return
    if got is not None:
        assert encode_message(got) == bytes(frame[: len(encode_message(got))])


def test_an_oversized_frame_is_refused_from_its_head_alone() -> None:
    reader = FrameReader()
    reader.feed(bytes([Put.KIND]) + (40).to_bytes(4, "big") + (MAX_BODY + 1).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError, match="too large"):
        reader.next_message()


def test_batches_whose_sizes_do_not_add_up_or_that_are_too_long_are_refused() -> None:
    ids = [os.urandom(32) for _ in range(MAX_BATCH + 1)]
    bad = [
        PutMany((ids[0], ids[1]), (3, 3), b"12345"),  # sizes add up to more than the body
        PutMany((ids[0],), (2, 3), b"12345"),  # a size more than there are ids
        PutMany((), (), b""),  # nothing to store
        PutMany(tuple(ids), (1,) * len(ids), b"x" * len(ids)),  # past MAX_BATCH
        GetMany(()),
        GetMany(tuple(ids)),
        Objects((4,), b"12345"),
    ]
    for message in bad:
        frame = encode_message(message)
        reader = FrameReader()
        reader.feed(frame)
        with pytest.raises(RemoteProtocolError):
            reader.next_message()


def test_bitmap_flags_round_trip() -> None:
    flags = [bool(b & 1) for b in os.urandom(77)]
    assert Bitmap.from_flags(flags).flags() == flags


# the edge's rules, pairwise: a client's messages straight into a session


class Fixture:
    def __init__(self, tmp_path: Path, quota: int = 0, store: ObjectStore | None = None) -> None:
        self.identity = Identity(os.urandom(32))
        self.device = DeviceKey(os.urandom(32))
        self.cert = self.identity.enroll(self.device.public, "laptop", time.time_ns()).to_bytes()
        self.store = store if store is not None else MemoryStore()
        self.status: dict[bytes, str] = {}
        self.service = EdgeService(self.store, EDGE, QuotaBook(tmp_path / "edge.db", quota))

    def hello(
        self,
        device: DeviceKey | None = None,
        when: int | None = None,
        nonce: bytes | None = None,
        cert_by: Identity | None = None,
    ) -> Hello:
        """A HELLO of ``device`` (this fixture's), its certificate signed by ``cert_by`` (this fixture's identity)."""
        device = device or self.device
        when = time.time_ns() if when is None else when
        nonce = nonce or os.urandom(16)
        cert = self.cert if cert_by is None else cert_by.enroll(self.device.public, "laptop", when).to_bytes()
        return Hello(device.public, cert, when, nonce, device.sign(hello_message(EDGE, when, nonce)))

    def session(self) -> EdgeSession:
        return EdgeSession(self.service, "test")


def _obj(n: int = 5000) -> tuple[bytes, bytes]:
    data = os.urandom(n)
    return object_id(data), data


def test_nothing_but_hello_before_hello(tmp_path: Path) -> None:
    f = Fixture(tmp_path)
    cid, data = _obj()
    answer = f.session().handle(Put(cid, data), time.time_ns())
    assert answer == Failure("unauthenticated", "send HELLO first")
    assert f.store.stat().objects == 0


def test_hello_then_put_get_have_stat(tmp_path: Path) -> None:
    f = Fixture(tmp_path)
    s = f.session()
    assert s.handle(f.hello(), time.time_ns()) == Welcome(f.identity.public)
    cid, data = _obj()
    assert s.handle(Put(cid, data), time.time_ns()) == Stored(True)
    assert s.handle(Put(cid, data), time.time_ns()) == Stored(False)
    assert s.handle(Get(cid), time.time_ns()) == Data(data)
    assert s.handle(Have((cid, os.urandom(32))), time.time_ns()) == Bitmap.from_flags([True, False])
    status = s.handle(Stat(), time.time_ns())
    assert isinstance(status, Status) and status.objects == 1 and status.usage == len(data)
    assert s.handle(Get(os.urandom(32)), time.time_ns()).code == "not-found"  # type: ignore[attr-defined]


def test_a_put_whose_bytes_do_not_match_its_id_stores_nothing(tmp_path: Path) -> None:
    f = Fixture(tmp_path)
    s = f.session()
    s.handle(f.hello(), time.time_ns())
    cid, data = _obj()
    assert s.handle(Put(cid, data[:-1] + bytes([data[-1] ^ 1])), time.time_ns()).code == "bad-object"  # type: ignore[attr-defined]
    assert f.store.stat().objects == 0
    s.handle(Put(cid, data), time.time_ns())
    assert s.handle(Put(cid, b"other bytes"), time.time_ns()).code == "bad-object"  # type: ignore[attr-defined]
    assert f.store.get(cid) == data


@pytest.mark.parametrize(
    "flaw", ["forged", "other-device", "stale", "replayed", "revoked", "unknown", "other-identity"]
)
def test_bad_hellos_are_refused(tmp_path: Path, flaw: str) -> None:
    f = Fixture(tmp_path)
    now = time.time_ns()
    hello = f.hello()
    if flaw == "forged":
        hello = Hello(hello.device, hello.cert, hello.time, hello.nonce, bytes(64))
    elif flaw == "other-device":
        hello = f.hello(device=DeviceKey(os.urandom(32)))  # signed by a key the certificate does not enroll
    elif flaw == "stale":
        hello = f.hello(when=now - 3600 * 10**9)
    elif flaw == "replayed":
        assert f.session().handle(hello, now) == Welcome(f.identity.public)
    elif flaw in ("revoked", "unknown"):
        f.service.device_status = lambda device: Listed("revoked", f.identity.public) if flaw == "revoked" else None
    elif flaw == "other-identity":  # the hub enrolled the device for its real identity; the HELLO claims another
        made_up = Identity(os.urandom(32))
        hello = f.hello(cert_by=made_up)
        f.service.device_status = lambda device: Listed("active", f.identity.public)
    answer = f.session().handle(hello, now)
    assert isinstance(answer, Failure) and answer.code == "unauthenticated"
    if flaw == "stale":  # says how far off, and which way
        assert "clock is 3600 s behind the edge's" in answer.message


def test_a_connection_of_a_device_revoked_since_its_hello_is_refused_every_request(tmp_path: Path) -> None:
    f = Fixture(tmp_path)
    status = {"now": "active"}
    f.service.device_status = lambda device: Listed(status["now"], f.identity.public)
    session = f.session()
    assert session.handle(f.hello(), time.time_ns()) == Welcome(f.identity.public)
    cid, data = _obj()
    assert session.handle(Put(cid, data), time.time_ns()) == Stored(True)
    status["now"] = "revoked"  # the hub revoked it; the agent's next look (within 2 s) says so
    for request in (Get(cid), Have((cid,)), Put(*_obj())):
        answer = session.handle(request, time.time_ns())
        assert isinstance(answer, Failure) and answer.code == "unauthenticated", request
    assert session.handle_nowait(Get(cid)) is None


def test_a_hello_must_be_for_the_device_the_channel_proved(tmp_path: Path) -> None:
    f = Fixture(tmp_path)
    other = DeviceKey(os.urandom(32))
    answer = EdgeSession(f.service, "test", channel_device=other.public).handle(f.hello(), time.time_ns())
    assert isinstance(answer, Failure) and answer.code == "unauthenticated" and "TLS certificate" in answer.message
    session = EdgeSession(f.service, "test", channel_device=f.device.public)
    assert session.handle(f.hello(), time.time_ns()) == Welcome(f.identity.public)


def test_a_get_of_an_object_in_memory_is_answered_without_a_thread(tmp_path: Path) -> None:
    f = Fixture(tmp_path, store=LocalStore(tmp_path / "store", small_max=EDGE_SMALL_MAX))  # an edge's layout
    s = f.session()
    cid, data = _obj(EDGE_SMALL_MAX + 1)  # a file
    assert s.handle_nowait(Get(cid)) is None  # before HELLO: nothing but HELLO, on the thread
    s.handle(f.hello(), time.time_ns())
    assert s.handle(Put(cid, data), time.time_ns()) == Stored(True)
    assert s.handle_nowait(Get(cid)) == Data(data)
    assert s.handle_nowait(Put(cid, data)) is None and s.handle_nowait(Stat()) is None
    missing = os.urandom(32)
    assert s.handle_nowait(Get(missing)) is None  # the thread says not-found
    assert s.handle(Get(missing), time.time_ns()).code == "not-found"  # type: ignore[attr-defined]
    small, row = _obj(EDGE_SMALL_MAX)  # a row: read on the thread
    assert s.handle(Put(small, row), time.time_ns()) == Stored(True)
    assert s.handle_nowait(Get(small)) is None and s.handle_nowait(GetMany((cid, small))) is None
    assert s.handle(Get(small), time.time_ns()) == Data(row)
    both = s.handle(GetMany((cid, small)), time.time_ns())
    assert isinstance(both, Objects) and both.objects() == [data, row]


def test_puts_stores_every_object_or_none_and_gets_answers_each_in_order(tmp_path: Path) -> None:
    f = Fixture(tmp_path, quota=50_000)
    s = f.session()
    s.handle(f.hello(), time.time_ns())
    objects = [_obj(n) for n in (100, 7000, 1)]
    held = objects[1]
    assert s.handle(Put(*held), time.time_ns()) == Stored(True)
    assert s.handle(PutMany.of(objects), time.time_ns()) == Bitmap.from_flags([True, False, True])
    assert f.service.quotas.usage(f.identity.public) == 7101  # each charged once
    missing = os.urandom(32)
    answer = s.handle(GetMany((objects[2][0], missing, objects[0][0])), time.time_ns())
    assert isinstance(answer, Objects)
    assert answer.objects() == [objects[2][1], None, objects[0][1]]
    # one wrong id in a batch and nothing of it is stored; past the quota, nothing either
    fresh = [_obj(100), _obj(100)]
    flawed = [fresh[0], (fresh[1][0], fresh[1][1][:-1] + b"?")]
    assert s.handle(PutMany.of(flawed), time.time_ns()).code == "bad-object"  # type: ignore[attr-defined]
    assert f.store.has([fresh[0][0]]) == [False]
    large = [_obj(20_000), _obj(30_000)]
    assert s.handle(PutMany.of(large), time.time_ns()).code == "quota"  # type: ignore[attr-defined]
    assert f.store.has([cid for cid, _ in large]) == [False, False]


def test_gets_sends_a_damaged_copy_as_read_and_removes_it(tmp_path: Path) -> None:
    """The reader learns that copy was damaged, not missing; HAVE says 0 after, so a repair puts one back."""
    store = LocalStore(tmp_path / "store", small_max=EDGE_SMALL_MAX)
    f = Fixture(tmp_path, store=store)
    s = f.session()
    s.handle(f.hello(), time.time_ns())
    (cid, data), (other, kept) = _obj(), _obj()
    s.handle(PutMany.of([(cid, data), (other, kept)]), time.time_ns())
    damaged = data[:-1] + bytes([data[-1] ^ 1])
    with closing(sqlite3.connect(tmp_path / "store" / "index.db")) as db, db:  # a bit flipped on the disk
        db.execute("UPDATE small SET data = ? WHERE cid = ?", (damaged, cid))
    answer = s.handle(GetMany((cid, other)), time.time_ns())
    assert isinstance(answer, Objects) and answer.objects() == [damaged, kept]
    assert s.handle(Have((cid, other)), time.time_ns()) == Bitmap.from_flags([False, True])


def test_gets_stops_before_the_object_that_would_pass_a_frame(tmp_path: Path) -> None:
    f = Fixture(tmp_path, store=LocalStore(tmp_path / "store", small_max=EDGE_SMALL_MAX))  # an edge's layout
    s = f.session()
    s.handle(f.hello(), time.time_ns())
    objects = [_obj(3 * 1024 * 1024) for _ in range(3)]
    for cid, data in objects:
        s.handle(Put(cid, data), time.time_ns())
    ids = tuple(cid for cid, _ in objects)
    in_memory = s.handle_nowait(GetMany(ids))  # just written: in the page cache, answered on the loop
    from_disk = s.handle(GetMany(ids), time.time_ns())
    for answer in (in_memory, from_disk):
        assert isinstance(answer, Objects) and answer.objects() == [objects[0][1], objects[1][1]]
    assert s.handle_nowait(GetMany((os.urandom(32),))) is None  # one not in memory: the thread answers


def test_quota_refuses_past_the_limit_and_stores_nothing(tmp_path: Path) -> None:
    f = Fixture(tmp_path, quota=12_000)
    s = f.session()
    s.handle(f.hello(), time.time_ns())
    first, second, third = _obj(5000), _obj(5000), _obj(5000)
    assert s.handle(Put(*first), time.time_ns()) == Stored(True)
    assert s.handle(Put(*second), time.time_ns()) == Stored(True)
    answer = s.handle(Put(*third), time.time_ns())
    assert isinstance(answer, Failure) and answer.code == "quota"
    assert f.store.has([third[0]]) == [False]
    assert s.handle(Put(*first), time.time_ns()) == Stored(False)  # already held: no charge, no refusal


def test_deleting_garbage_gives_its_bytes_back_to_every_owner(tmp_path: Path) -> None:
    f = Fixture(tmp_path, quota=12_000)
    s = f.session()
    s.handle(f.hello(), time.time_ns())
    first, second, third = _obj(5000), _obj(5000), _obj(5000)
    s.handle(Put(*first), time.time_ns())
    s.handle(Put(*second), time.time_ns())
    f.service.delete(first[0])  # the hub said no live portal uses it
    assert f.store.has([first[0]]) == [False]
    assert f.service.quotas.usage(f.identity.public) == 5000
    assert s.handle(Put(*third), time.time_ns()) == Stored(True)  # fits again


def test_every_edge_address_is_parsed_by_one_function() -> None:
    from portalfs.edge.client import parse_address

    assert parse_address("10.0.0.1:8471") == ("10.0.0.1", 8471)
    assert parse_address("[fd00::1]:8471") == ("fd00::1", 8471)
    assert parse_address("127.0.0.1:0", any_port=True) == ("127.0.0.1", 0)
    for bad in ("127.0.0.1:0", "no-port", ":80", "host:99999", "host:x", "h" * 500 + ":1x"):
        with pytest.raises(ValueError, match="is not HOST:PORT") as caught:
            parse_address(bad)
        assert len(str(caught.value)) < 200


def test_answers_are_matched_to_requests_in_order_or_by_stream() -> None:
    from portalfs.protocol.edge import LocalProtocolError, RemoteProtocolError
    from portalfs.protocol.session import Outstanding

    ordered: Outstanding[str] = Outstanding(ordered=True)  # TLS over TCP: answers in request order
    for waiter in ("first", "second", "third"):
        ordered.sent(waiter)
    assert [ordered.answered(), ordered.answered()] == ["first", "second"]
    assert ordered.failed() == ["third"] and len(ordered) == 0
    with pytest.raises(RemoteProtocolError, match="nobody asked"):
        ordered.answered()

    keyed: Outstanding[str] = Outstanding(ordered=False)  # QUIC: each answer on its request's stream
    keyed.sent("on 0", 0)
    keyed.sent("on 4", 4)
    assert 4 in keyed and keyed.answered(4) == "on 4" and 4 not in keyed
    with pytest.raises(RemoteProtocolError):
        keyed.answered(8)
    with pytest.raises(LocalProtocolError):
        keyed.sent("again on 0", 0)
    assert keyed.failed() == ["on 0"]


def test_one_device_holds_a_bounded_number_of_sessions(tmp_path: Path) -> None:
    from portalfs.edge.service import MAX_SESSIONS_PER_DEVICE

    f = Fixture(tmp_path)
    sessions = [f.session() for _ in range(MAX_SESSIONS_PER_DEVICE)]
    for s in sessions:
        assert s.handle(f.hello(), time.time_ns()) == Welcome(f.identity.public)
        assert s.handle(f.hello(), time.time_ns()) == Welcome(f.identity.public)  # a second HELLO counts once
    extra = f.session()
    refused = extra.handle(f.hello(), time.time_ns())
    assert isinstance(refused, Failure) and "connections open already" in refused.message
    assert extra.handle(Stat(), time.time_ns()) == Failure("unauthenticated", "send HELLO first")
    other = DeviceKey(os.urandom(32))  # another device is not held back by this one's sessions
    cert = f.identity.enroll(other.public, "phone", time.time_ns()).to_bytes()
    when, nonce = time.time_ns(), os.urandom(16)
    hello = Hello(other.public, cert, when, nonce, other.sign(hello_message(EDGE, when, nonce)))
    assert f.session().handle(hello, time.time_ns()) == Welcome(f.identity.public)
    sessions.pop().close()  # a connection ends: its slot is free
    assert extra.handle(f.hello(), time.time_ns()) == Welcome(f.identity.public)


def test_connections_are_bounded_in_all_and_per_address() -> None:
    from portalfs.net import Connections

    held = Connections(total=5, per_address=3)
    assert [held.admit("10.0.0.1") for _ in range(4)] == [True, True, True, False]
    assert [held.admit("10.0.0.2") for _ in range(3)] == [True, True, False]  # 5 in all
    held.release("10.0.0.1")
    assert held.admit("10.0.0.2") and not held.admit("10.0.0.3")
