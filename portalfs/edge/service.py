"""What an edge does with a request: authentication, quotas, the store. No sockets.

``EdgeService`` holds the edge's store, its key, its quota book and the
device directory; ``EdgeSession`` is one connection's state (awaiting HELLO,
then serving one identity). ``handle`` is blocking (it touches the disk) and
thread-safe: transports call it from worker threads. See docs/design.md,
section "Edge protocol".
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import CorruptObject, IntegrityError, MissingObject, StorageError, StoreFull
from ..hub.client import Listed
from ..keys import DeviceCertificate, verify_signature
from ..protocol.edge import (
    MAX_BODY,
    Bitmap,
    Data,
    Failure,
    Get,
    GetMany,
    Have,
    Hello,
    Message,
    Objects,
    Put,
    PutMany,
    Stat,
    Status,
    Stored,
    Verify,
    Welcome,
    hello_message,
)
from ..sqlite import open_db, transaction
from ..store.base import CachedReads, ObjectStore, check_object

__all__ = ["EdgeService", "EdgeSession", "DeviceStatus", "QuotaBook", "GroupSync"]

log = logging.getLogger("portal.edge")

CLOCK_SKEW_NS = 300 * 10**9  # a HELLO's time may differ from the edge's clock by this much
REPLAY_CACHE = 100_000  # HELLO nonces remembered (within CLOCK_SKEW_NS of now)
MAX_SESSIONS_PER_DEVICE = 16  # connections one device may have past HELLO at once (a device uses one or two)

# What the directory says of a device: "active", "revoked", or None (not listed).
DeviceStatus = Callable[[bytes], Listed | None]  # the hub's word on a device: None, unknown to it


class GroupSync:
    """Many threads wait for one store flush that started after their put: group commit."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        self._cond = threading.Condition()
        self._started = 0
        self._done = 0
        self._running = False

    def wait(self) -> None:
        with self._cond:
            target = self._started + 1  # a flush that starts after this call
            while self._done < target:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                self._started += 1
                generation = self._started
                self._cond.release()
                try:
                    self._flush()
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._done = generation
                    self._cond.notify_all()


class QuotaBook:
    """Which identity stored which object, and how many bytes each identity holds (SQLite)."""

    _SCHEMA = """
    CREATE TABLE IF NOT EXISTS owners (cid BLOB NOT NULL, identity BLOB NOT NULL, size INTEGER NOT NULL,
        PRIMARY KEY (cid, identity)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS usage (identity BLOB PRIMARY KEY, bytes INTEGER NOT NULL) WITHOUT ROWID;
    """

    def __init__(self, path: Path, quota: int) -> None:
        self.quota = quota  # bytes per identity; 0 means no limit
        self._lock = threading.Lock()
        self._db = open_db(path, durability="full")
        self._db.executescript(self._SCHEMA)

    def usage(self, identity: bytes) -> int:
        with self._lock:
            row = self._db.execute("SELECT bytes FROM usage WHERE identity = ?", (identity,)).fetchone()
        return row[0] if row else 0

    def owned(self, identity: bytes, cids: Sequence[bytes]) -> list[bool]:
        """Whether ``identity`` was charged for each of ``cids`` already."""
        with self._lock:
            return [
                self._db.execute("SELECT 1 FROM owners WHERE cid = ? AND identity = ?", (cid, identity)).fetchone()
                is not None
                for cid in cids
            ]

    def admits(self, identity: bytes, size: int) -> bool:
        return self.quota == 0 or self.usage(identity) + size <= self.quota

    def charge(self, identity: bytes, objects: Sequence[tuple[bytes, int]]) -> None:
        """Charge ``identity`` once for each (id, size) it was not charged for yet, in one transaction."""
        with transaction(self._db, self._lock) as db:
            for cid, size in objects:
                inserted = db.execute(
                    "INSERT OR IGNORE INTO owners (cid, identity, size) VALUES (?, ?, ?)", (cid, identity, size)
                ).rowcount
                if inserted:
                    db.execute(
                        "INSERT INTO usage (identity, bytes) VALUES (?, ?) "
                        "ON CONFLICT (identity) DO UPDATE SET bytes = bytes + excluded.bytes",
                        (identity, size),
                    )

    def release(self, cid: bytes) -> None:
        """Forget every owner of ``cid`` (the object was deleted)."""
        with transaction(self._db, self._lock) as db:
            for identity, size in db.execute("SELECT identity, size FROM owners WHERE cid = ?", (cid,)).fetchall():
                db.execute("UPDATE usage SET bytes = max(0, bytes - ?) WHERE identity = ?", (size, identity))
            db.execute("DELETE FROM owners WHERE cid = ?", (cid,))

    def close(self) -> None:
        self._db.close()


class EdgeService:
    def __init__(
        self,
        store: ObjectStore,
        edge_public: bytes,
        quotas: QuotaBook,
        device_status: DeviceStatus | None = None,
        capacity: int = 0,
    ) -> None:
        self.store = store
        # The store, if it can answer from memory: asked once here, for every GET on the event loop would ask
        # isinstance of a Protocol, which inspects the class each time (~13 us).
        self.cached_reads = store if isinstance(store, CachedReads) else None
        self.edge_public = edge_public
        self.quotas = quotas
        self.device_status = device_status  # None: no hub, an enrollment certificate suffices
        self.capacity = capacity  # bytes; 0: whatever the disk holds
        self.accepting = True
        self._group_sync = GroupSync(store.sync)
        self._nonces: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._damaged = 0
        self._gc_lock = threading.Lock()  # a deletion of condemned ids against a PUT that saves one
        self._condemned: set[bytes] = set()
        self._sessions: Counter[bytes] = Counter()  # per device, its connections past HELLO

    def open_session(self, device: bytes) -> None:
        """Count one more connection of ``device``; IntegrityError past MAX_SESSIONS_PER_DEVICE."""
        with self._lock:
            if self._sessions[device] >= MAX_SESSIONS_PER_DEVICE:
                raise IntegrityError(f"HELLO: this device has {MAX_SESSIONS_PER_DEVICE} connections open already")
            self._sessions[device] += 1

    def close_session(self, device: bytes) -> None:
        with self._lock:
            self._sessions[device] -= 1
            if self._sessions[device] <= 0:
                del self._sessions[device]

    def statistics(self) -> dict[str, int]:
        with self._lock:
            return {"in_flight": self._in_flight, "damaged": self._damaged, "condemned": len(self._condemned)}

    def delete(self, cid: bytes) -> None:
        """Remove an object: from the store, then from the quotas (a later PUT stores and charges it again)."""
        self.store.delete(cid)
        self.quotas.release(cid)

    # garbage (docs/design.md, section 13, "Garbage")

    def condemn(self, cids: list[bytes]) -> None:
        """Hold ``cids`` for deletion: HAVE answers 0 for them from now on, so a device that needs one PUTs it,
        and a PUT of one pardons it."""
        with self._gc_lock:
            self._condemned.update(cids)

    def release(self, cids: list[bytes]) -> list[bytes]:
        """Delete those of ``cids`` still condemned, pardon the rest, and return the ids deleted."""
        deleted = []
        with self._gc_lock:
            for cid in cids:
                if cid in self._condemned:
                    self.delete(cid)
                    deleted.append(cid)
            self._condemned.clear()
        return deleted

    def _held(self, cids: tuple[bytes, ...], flags: list[bool]) -> Bitmap:
        """HAVE's and VERIFY's answer: a condemned id is not held, so a device that needs it PUTs it."""
        with self._gc_lock:
            return Bitmap.from_flags([f and c not in self._condemned for f, c in zip(flags, cids, strict=True)])

    def _pardon(self, cid: bytes) -> None:
        with self._gc_lock:
            self._condemned.discard(cid)

    # damage

    def read_back(self, cid: bytes) -> bytes:
        """The stored bytes, hashed against the id; a damaged copy is removed and raises CorruptObject."""
        try:
            return self.store.get(cid)
        except CorruptObject:
            self.remove_damaged(cid)
            raise

    def check(self, cids: tuple[bytes, ...] | list[bytes]) -> list[bool]:
        """Read and hash each object: True where it is held intact; a damaged copy is removed (False)."""
        intact = []
        for cid in cids:
            try:
                self.read_back(cid)
                intact.append(True)
            except (MissingObject, CorruptObject):
                intact.append(False)
        return intact

    def scrub_one(self, cid: bytes) -> tuple[int, bool]:
        """Read and hash one stored object: (bytes read, whether it is intact); a damaged one is removed."""
        try:
            return len(self.read_back(cid)), True
        except MissingObject:  # deleted since the scrub listed it
            return 0, True
        except CorruptObject:
            return 0, False

    def remove_damaged(self, cid: bytes) -> None:
        """A copy whose bytes no longer match its id is removed, so HAVE says 0 and a repair puts a good one."""
        log.warning("object %s is damaged on this edge's disk: removed (a repair puts a good copy back)", cid.hex())
        self.delete(cid)
        with self._lock:
            self._damaged += 1

    # authentication

    def authenticate(self, hello: Hello, now_ns: int) -> bytes:
        """Return the identity the HELLO proves, or raise IntegrityError saying why not."""
        off = hello.time - now_ns
        if abs(off) > CLOCK_SKEW_NS:
            raise IntegrityError(
                f"HELLO: the device's clock is {abs(off) / 1e9:.0f} s {'ahead of' if off > 0 else 'behind'} the "
                f"edge's (at most {CLOCK_SKEW_NS // 10**9} s apart): set its time (NTP)"
            )
        verify_signature(hello.device, hello.sig, hello_message(self.edge_public, hello.time, hello.nonce), "HELLO")
        try:
            cert = DeviceCertificate.from_bytes(hello.cert)
            identity = cert.fields()["identity"]
            fields = cert.verify(identity)
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"HELLO: malformed enrollment certificate ({exc})") from None
        if fields.get("device") != hello.device:
            raise IntegrityError("HELLO: the certificate enrolls another device")
        if self.device_status is not None:
            listed = self.device_status(hello.device)
            if listed is None or listed.status != "active":
                status = "unknown to the hub" if listed is None else listed.status
                raise IntegrityError(f"HELLO: device {hello.device.hex()[:16]} is {status}")
            if listed.identity != identity:  # a certificate from a made-up identity: another's quota, or none
                raise IntegrityError("HELLO: the hub enrolled this device for another identity than its certificate's")
        with self._lock:
            while self._nonces and next(iter(self._nonces.values())) < now_ns - 2 * CLOCK_SKEW_NS:
                self._nonces.popitem(last=False)
            if hello.nonce in self._nonces:
                raise IntegrityError("HELLO replayed")
            self._nonces[hello.nonce] = now_ns
            if len(self._nonces) > REPLAY_CACHE:
                self._nonces.popitem(last=False)
        return bytes(identity)

    # requests

    def still_active(self, device: bytes) -> bool:
        """Whether the hub still lists ``device`` as active (as of the agent's last look: at most seconds old)."""
        if self.device_status is None:
            return True
        listed = self.device_status(device)
        return listed is not None and listed.status == "active"

    def serve(self, identity: bytes, request: Message) -> Message:
        with self._lock:
            self._in_flight += 1
        try:
            return self._serve(identity, request)
        except MissingObject:
            return Failure("not-found", "no such object")
        except CorruptObject as exc:
            return Failure("bad-object", str(exc))
        except StoreFull:
            return Failure("full", "the edge is out of space")
        except StorageError as exc:
            log.error("store: %s", exc)
            return Failure("internal", "the edge could not use its store")
        except _Refusal as exc:
            return Failure(exc.code, str(exc))
        finally:
            with self._lock:
                self._in_flight -= 1

    def _serve(self, identity: bytes, request: Message) -> Message:
        if isinstance(request, Get):
            return Data(self.read_back(request.cid))
        if isinstance(request, Have):
            return self._held(request.cids, self.store.has(request.cids))
        if isinstance(request, Verify):
            return self._held(request.cids, self.check(request.cids))
        if isinstance(request, Put):
            return Stored(self._put(identity, [(request.cid, request.data)])[0])
        if isinstance(request, PutMany):
            return Bitmap.from_flags(self._put(identity, request.objects()))
        if isinstance(request, GetMany):
            answer = self.gets_answer(request.cids, self._read_checked)
            assert answer is not None  # every read gives bytes
            return answer
        if isinstance(request, Stat):
            stat = self.store.stat()
            capacity = max(0, self.capacity - stat.bytes) if self.capacity else 0
            with self._lock:
                load = self._in_flight - 1
            return Status(capacity, stat.bytes, stat.objects, load, self.quotas.quota, self.quotas.usage(identity))
        return Failure("malformed", f"{type(request).__name__} is not a request")

    def _put(self, identity: bytes, objects: list[tuple[bytes, bytes]]) -> list[bool]:
        """Store ``objects`` (a PUT's one, a PUTS's many) durably and charge ``identity`` for those new to it;
        whether each was new. Every id is checked first: one wrong id and nothing is stored (bad-object), one
        past the quota or the capacity and nothing is stored either (quota, full)."""
        if not self.accepting:
            raise _Refusal("unavailable", "the edge is shutting down")
        for cid, data in objects:
            check_object(cid, data)  # a wrong id is refused before anything else
        for cid, _ in objects:
            self._pardon(cid)  # a device counts on it from now on: garbage no more
        owned = self.quotas.owned(identity, [cid for cid, _ in objects])
        new = [(cid, data) for (cid, data), held in zip(objects, owned, strict=True) if not held]
        size = sum(len(data) for _, data in new)
        if not new:
            return [False] * len(objects)
        if not self.quotas.admits(identity, size):
            raise _Refusal("quota", f"storing {size} bytes would exceed this identity's quota of {self.quotas.quota}")
        if self.capacity and self.store.stat().bytes + size > self.capacity:
            raise _Refusal("full", "the edge has reached its capacity")
        for cid, data in new:
            self.store.put(cid, data, durable=False, verify=False)  # checked above; durable below
        self._group_sync.wait()  # one flush for every PUT waiting now
        self.quotas.charge(identity, [(cid, len(data)) for cid, data in new])
        return [not held for held in owned]

    def gets_answer(self, cids: tuple[bytes, ...], read: Callable[[bytes], bytes | bytearray | None]) -> Objects | None:
        """GETS's answer: each object ``read`` gives (b"" where the edge holds none, or a damaged one it removed),
        in order, until the next would take the body past MAX_BODY; None as soon as ``read`` gives None (an
        object not in memory, for ``EdgeSession.handle_nowait``)."""
        parts: list[bytes | bytearray] = []
        total = 0
        for cid in cids:
            data = read(cid)
            if data is None:
                return None
            if total + len(data) > MAX_BODY:
                break
            parts.append(data)
            total += len(data)
        return Objects(tuple(map(len, parts)), b"".join(parts))

    def _read_checked(self, cid: bytes) -> bytes:
        """A stored object for a GETS, hashed against its id: b"" where the edge holds none. A damaged one is
        removed and its bytes sent all the same: the reader, who checks every object, learns that this copy
        was damaged (a GETS can only say "none" otherwise), as from one served unchecked from memory."""
        try:
            data = self.store.get(cid, verify=False)
        except MissingObject:
            return b""
        try:
            check_object(cid, data)
        except CorruptObject:
            self.remove_damaged(cid)
        return data


class _Refusal(Exception):
    """A request refused whole: its FAILURE's code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class EdgeSession:
    """One connection: nothing but HELLO until it succeeds, then requests for that identity.

    ``channel_device`` is the device key the channel itself proved (the client
    certificate over TLS/TCP), or None where the channel proves none (QUIC): a
    HELLO for another device is refused.
    """

    def __init__(self, service: EdgeService, peer: str, channel_device: bytes | None = None) -> None:
        self.service = service
        self.peer = peer
        self.channel_device = channel_device
        self.identity: bytes | None = None
        self.device: bytes | None = None  # the device the HELLO proved

    def handle_nowait(self, request: Message) -> Message | None:
        """The answer if it needs neither a disk nor much CPU (a GET, or a GETS, of objects in the page cache);
        else None. For the event loop: ``handle`` on a worker thread answers the rest."""
        if self.identity is None or not isinstance(request, Get | GetMany) or not self._still_active():
            return None
        store = self.service.cached_reads
        if store is None:
            return None
        # unchecked: the reader checks them (docs/design.md, 12)
        if isinstance(request, Get):
            data = store.read_cached(request.cid)
            return None if data is None else Data(data)
        return self.service.gets_answer(request.cids, store.read_cached)

    def handle(self, request: Message, now_ns: int) -> Message:
        if isinstance(request, Hello):
            try:
                if self.channel_device is not None and request.device != self.channel_device:
                    raise IntegrityError("HELLO: the device is not the one whose TLS certificate this connection has")
                identity = self.service.authenticate(request, now_ns)
                if self.device != request.device:  # a session counts once, for the device it serves
                    self.service.open_session(request.device)
                    self.close()
                self.identity, self.device = identity, request.device
            except IntegrityError as exc:
                log.warning("%s: refused: %s", self.peer, exc)
                return Failure("unauthenticated", str(exc))
            return Welcome(self.identity)
        if self.identity is None:
            return Failure("unauthenticated", "send HELLO first")
        if not self._still_active():
            log.warning(
                "%s: device %s was revoked: its connection is refused", self.peer, (self.device or b"").hex()[:16]
            )
            self.identity = None  # a revoked device's connection serves nothing more
            return Failure("unauthenticated", "this device has been revoked")
        return self.service.serve(self.identity, request)

    def _still_active(self) -> bool:
        return self.device is None or self.service.still_active(self.device)

    def close(self) -> None:
        """The connection ended: it no longer counts against its device's sessions."""
        if self.device is not None:
            self.service.close_session(self.device)
            self.device = self.identity = None
