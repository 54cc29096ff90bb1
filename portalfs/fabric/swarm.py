"""The swarm: a device's connections to every edge, on the process's one trio loop (``portalfs.runtime``).

It lives as long as its owner (a command, portald, a mount) and keeps its
connections, the edges' state and the hub's locations across uses; the edge
set can change while it runs (``set_edges``). Blocking callers on worker
threads (the mount's readers, the sync engine, the CLI) use ``get`` and
``push``; inside, requests run concurrently across edges. Every GET says why
it is made (``Priority``) and goes through the chunk scheduler
(``portalfs.sched``): it plans which edge serves each request, with backups,
from the edges that hold the id (the hub's locations, else every edge) and
what each edge's answers showed, keeps each edge's window full, the most
urgent requests first, fails over at once when a copy fails or is late, and
duplicates the last ones near the end. The swarm carries out its actions: a
copy is a task, and the first copy of a request to arrive wins; the copies of
small objects sent to one edge at once go in one GETS. An object goes to
``replicas`` edges chosen by rendezvous hashing weighted by each edge's
upload rate (``placement``: stable per id, spread across edges in
proportion to what each takes in), skipping edges that already hold it; the
objects bound for one edge go many to a request (PUTS) where it speaks
revision 5 of the protocol.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

import blake3
import trio

from ..backoff import Backoff
from ..edge.client import EdgeAddress, EdgeClient, connect_edge
from ..errors import CorruptObject, MissingObject, PortalError, Unreachable
from ..keys import DeviceKey
from ..protocol.edge import MAX_BATCH, MAX_BODY
from ..runtime import Runtime, current
from ..sched.actions import Action, Cancel, Request, Send
from ..sched.estimators import Throughput
from ..sched.limits import Limits, TokenBucket
from ..store.base import Priority
from .locations import LocationCache
from .usage import EdgeUsage

if TYPE_CHECKING:
    from ..sched.plan import Backend

__all__ = ["Swarm", "Placement", "edges_down", "placement"]

log = logging.getLogger("portal.swarm")

RETRY_DOWN_SECONDS = 5.0  # an edge that failed to connect is not tried again for this long,
RETRY_DOWN_MAX = 300.0  # doubling with each failure in a row up to this
EDGE_BACKOFF = Backoff(RETRY_DOWN_SECONDS, RETRY_DOWN_MAX)
CONCURRENT_PUTS = 16  # requests of a push in flight at once, over every edge
PUTS_PER_EDGE = 6  # of them, to one edge
PUSH_READERS = 2  # threads reading a push's objects at once: more contend for the GIL (16 took 3x as long)
BATCH_BYTES = 1 << 20  # a PUTS carries objects until it holds this many bytes (or MAX_BATCH objects)
LIMIT_POLL = 0.05  # seconds: a wait on a limit that may be given up asks this often whether it is still wanted
STEAL_LOOKS = 16  # ids an edge with its own queue done looks at, from the end of another's, for one to take
KEEP_CONNECTED = 16  # edges of the list a daemon's swarm stays connected to (``Swarm.connect``)
BATCH_OBJECT = 256 * 1024  # a copy of an object expected to be this small goes with others to its edge (GETS)

Locate = Callable[[list[bytes]], dict[bytes, list[bytes]]]
Report = Callable[[bytes, list[bytes]], None]  # (edge key, ids of the damaged copies read from it)


class _Edge:
    def __init__(self, address: EdgeAddress) -> None:
        self.address = address
        self.client: EdgeClient | None = None
        self.ready = trio.Event()
        self.closed = trio.Event()
        self.down_until = 0.0
        self.error: PortalError | None = None
        self.quiet = False  # connected before anything was asked of it: a failure is said once something is

    @property
    def ended(self) -> bool:
        """Its connection failed or dropped (a new one may be tried once ``down_until`` passed)."""
        return self.client is None and self.ready.is_set()


USAGE_SECONDS = 2.0  # how often the bytes moved with each edge are shared with the device's other processes


def _choose_backend() -> Backend:
    """The scheduler's plan backend (``PORTAL_SCHEDULER``: auto, numpy or cupy), made when the swarm is first
    asked to fetch: NumPy (and CuPy) are imported by a process that fetches, not by one that only pushes."""
    from ..sched.gpu import choose  # noqa: PLC0415

    return choose(os.environ.get("PORTAL_SCHEDULER", "auto"))


class _Calendar:
    """The wall clock's (day number, local hour): an edge's daily cap and hours are in the user's time. Read
    again once a second at most: the scheduler asks per request and edge it weighs."""

    def __init__(self) -> None:
        self._second = -1
        self._value = (0, 0)

    def __call__(self, now: float) -> tuple[int, int]:
        second = int(time.time())
        if second != self._second:
            local = time.localtime(second)
            self._second, self._value = second, (date(*local[:3]).toordinal(), local.tm_hour)
        return self._value


def placement(
    keys: Sequence[bytes],
    cid: bytes,
    rates: dict[bytes, float],
    operators: dict[bytes, str] | None = None,
    held: Iterable[bytes] = (),
) -> list[bytes]:
    """The edges in the order an object is placed on them: rendezvous hashing weighted by each edge's upload
    rate (score -ln(u) / rate, u from BLAKE3(edge key || cid) in (0, 1]), so that an edge is first for a share
    of the objects in proportion to its rate and the order of each object stays put while the rates do. An
    edge not measured counts at the median rate; with none measured, it is plain rendezvous hashing (the
    order of BLAKE3(edge key || cid)).

    Spread across operators: the best-ranked edge of each operator that holds no copy yet (of those in
    ``held``) comes first, then the others in rank order, so R copies go to R operators where there are R.
    An edge whose operator is not known (absent from ``operators``, or "") is an operator of its own."""
    if not rates:
        ranked = sorted(keys, key=lambda k: blake3.blake3(k + cid).digest())
    else:
        typical = statistics.median(rates.values())

        def score(key: bytes) -> tuple[float, bytes]:
            digest = blake3.blake3(key + cid).digest()
            u = (int.from_bytes(digest[:8], "big") + 1) / 2**64
            return -math.log(u) / rates.get(key, typical), digest

        ranked = sorted(keys, key=score)
    if not operators:
        return ranked

    def operator(key: bytes) -> str:
        return operators.get(key) or key.hex()

    covered = {operator(k) for k in held}
    first: list[bytes] = []
    rest: list[bytes] = []
    for key in ranked:
        (rest if operator(key) in covered else first).append(key)
        covered.add(operator(key))
    return first + rest


def edges_down(down: dict[str, str]) -> str:
    """``Placement.down`` in one line: each edge that failed, with its first error."""
    return "; ".join(f"{edge}: {reason}" for edge, reason in down.items())


@dataclass(frozen=True, slots=True)
class Placement:
    held: dict[bytes, list[bytes]]  # per edge key, the ids it holds now (for the hub's locations)
    copies: int  # objects put to an edge by this push
    damaged: int = 0  # copies an edge held but found damaged when asked to verify them (and removed)
    short: list[bytes] = field(default_factory=list)  # ids on fewer than ``replicas`` edges (but on one at least)
    down: dict[str, str] = field(default_factory=dict)  # edges that failed, each with its first error


class _Wanted:
    """A caller's wait for one object: its bytes, or why no edge gave them."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: bytes | None = None
        self.error: PortalError | None = None
        self.failures: list[str] = []
        self.corrupt: list[str] = []
        self.unreachable = 0

    def arrived(self, data: bytes) -> None:
        if self.data is None:
            self.data = data
            self.done.set()

    def give_up(self, cid: bytes, damage_seen: set[tuple[bytes, bytes]], name: Callable[[bytes], str]) -> None:
        if self.corrupt and not self.unreachable:  # every copy that could be read was damaged
            edges = sorted({name(k) for k, c in damage_seen if c == cid})
            self.error = CorruptObject(f"object {cid.hex()}: every copy is damaged (on {', '.join(edges)})")
        else:
            detail = "; ".join((self.corrupt + self.failures)[-3:]) or "no edges"
            self.error = MissingObject(f"object {cid.hex()} is on no reachable edge ({detail})")
        self.done.set()


class Swarm:
    """``locate`` asks the hub which edges hold ids; ``report`` tells it of damaged copies a read met."""

    def __init__(
        self,
        edges: Sequence[EdgeAddress],
        device: DeviceKey,
        cert: bytes,
        locate: Locate | None,
        report: Report | None = None,
        runtime: Runtime | None = None,
        usage: EdgeUsage | None = None,
    ) -> None:
        """``usage``: the bytes the device's processes moved with each edge today, shared (daily caps)."""
        self.addresses = list(edges)
        self._usage = usage
        self._shared: tuple[int, dict[bytes, int]] = (-1, {})  # (day, bytes per edge) last added to ``usage``
        self._device = device
        self._cert = cert
        self._locate = locate
        self._report = report
        self._damaged: dict[bytes, set[bytes]] = {}  # edge key -> damaged copies met, not yet reported
        self._requests: list[Counter[str]] = []  # each connection's requests, by kind
        self.locations = LocationCache()  # what the hub said, so that a read does not ask again
        self._damage_seen: set[tuple[bytes, bytes]] = set()  # (edge, cid) already logged
        self._edges: dict[bytes, _Edge] = {}
        self._failures: dict[bytes, int] = {}  # edge key -> connections that failed in a row
        self._runtime = runtime
        self._nursery: trio.Nursery | None = None
        from ..sched.scheduler import Scheduler  # noqa: PLC0415 - only once a swarm is made

        self._scheduler = Scheduler(choose_backend=_choose_backend, calendar=_Calendar())
        self._scheduler.set_edges([a.key for a in self.addresses])
        self._copies: dict[tuple[Request, bytes], trio.CancelScope] = {}  # copies in flight
        self._wake = trio.Event()  # new requests: tick now
        self._uploads: dict[bytes, Throughput] = {}  # per edge key: how fast its PUTs went
        self._limits = Limits()
        self._buckets: dict[Any, TokenBucket] = {}  # "down", "up", and (direction, edge key)
        self._stop = trio.Event()
        self._done = trio.Event()

    # lifecycle

    def start(self) -> Swarm:
        """Start on the process's runtime (from a worker thread or a blocking program, not the loop itself)."""
        if self._runtime is None:
            self._runtime = current()
        self._runtime.start(self._main)
        return self

    def close(self) -> None:
        """Close every connection and wait for them to end (from a thread that is not the loop's)."""
        if self._runtime is None or self._nursery is None:
            return
        try:
            self._runtime.call(self._close)
        except trio.RunFinishedError:  # the loop ended first, and every connection with it
            pass

    async def _close(self) -> None:
        with trio.move_on_after(10):
            await self._count_usage()  # what this process moved counts for the others after it ends
        self._stop.set()
        with trio.move_on_after(10):
            await self._done.wait()
        if self._usage is not None:
            self._usage.close()

    async def _share_usage(self) -> None:
        while True:
            await trio.sleep(USAGE_SECONDS)
            await self._count_usage()

    async def _count_usage(self) -> None:
        """Add what this process moved with each edge since last time to the device's shared figures, and take
        the other processes' (only where some edge has a daily cap)."""
        if self._usage is None or not self._scheduler.capped():
            return
        day = self._scheduler.day(trio.current_time())
        here = self._scheduler.moved_here(day)
        before = self._shared[1] if self._shared[0] == day else {}
        try:
            totals = await trio.to_thread.run_sync(
                self._usage.add, day, {k: size - before.get(k, 0) for k, size in here.items()}
            )
        except sqlite3.Error as exc:
            log.warning("could not share the bytes moved with the edges today: %s", exc)
            return
        self._shared = (day, here)
        for key, total in totals.items():
            self._scheduler.elsewhere(key, day, total - here.get(key, 0))

    async def _main(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._drive)
                nursery.start_soon(self._share_usage)
                task_status.started()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._done.set()

    def set_edges(self, edges: Sequence[EdgeAddress]) -> None:
        """Use ``edges`` from now on: an edge that left is disconnected, one that came is connected when first
        used, and those that stay keep their connections and state."""
        self._runtime_call_sync(self._set_edges, list(edges))

    def configure(self, limits: Limits) -> None:
        """Bandwidth limits for the device and per edge, and each edge's constraints (metered, daily cap,
        hours), from the configuration (docs/design.md, section 14, "Limits")."""
        self._runtime_call_sync(self._configure, limits)

    def _configure(self, limits: Limits) -> None:
        self._limits = limits
        self._buckets = limits.buckets(trio.current_time())
        self._edge_limits()

    def _edge_limits(self) -> None:
        """Give the scheduler each edge's constraints, as the configuration has them."""
        for a in self.addresses:
            self._scheduler.set_limits(a.key, self._limits.edge(a.key))

    def _buckets_of(self, key: bytes, direction: str) -> list[TokenBucket]:
        """The device's and the edge's buckets for ``direction`` ("down", "up"), those that are limited."""
        found = (self._buckets.get(direction), self._buckets.get((direction, key)))
        return [bucket for bucket in found if bucket is not None]

    async def _bandwidth(self, key: bytes, direction: str, size: int, wanted: Callable[[], bool] | None = None) -> bool:
        """Wait until the device's and the edge's buckets for ``direction`` allow another request, and reserve
        ``size`` bytes in them (a request's size is settled by ``_charge`` once known), so that requests
        sent together wait their turn rather than all going at once. ``wanted`` is asked every LIMIT_POLL
        seconds while it waits: once it says no, the wait is given up, what it reserved is given back, and
        the answer is False."""
        reserved: list[TokenBucket] = []
        for bucket in self._buckets_of(key, direction):
            while (ready := bucket.ready_at(trio.current_time())) > trio.current_time():
                if wanted is not None and not wanted():
                    for taken in reserved:
                        taken.charge(-size, trio.current_time())
                    return False
                await trio.sleep_until(ready if wanted is None else min(ready, trio.current_time() + LIMIT_POLL))
            bucket.charge(size, trio.current_time())
            reserved.append(bucket)
        return True

    def _charge(self, key: bytes, direction: str, size: int) -> None:
        now = trio.current_time()
        for bucket in self._buckets_of(key, direction):
            bucket.charge(size, now)

    def _set_edges(self, edges: list[EdgeAddress]) -> None:
        keep = {a.key: a for a in edges}
        for key, edge in list(self._edges.items()):
            if keep.get(key) != edge.address:
                edge.closed.set()
                del self._edges[key]
        self.addresses = edges
        self._scheduler.set_edges([a.key for a in edges])
        self._edge_limits()

    # connections

    async def _hold(self, edge: _Edge) -> None:
        key = edge.address.key
        try:
            async with connect_edge(edge.address, self._device, self._cert) as client:
                self._requests.append(client.requests)
                self._failures.pop(key, None)
                self._scheduler.set_down(key, 0.0)
                edge.client = client
                edge.quiet = False  # connected: if it drops, that is said
                edge.ready.set()
                await edge.closed.wait()
        except PortalError as exc:
            edge.error = exc
            if not edge.quiet:
                log.warning("%s", exc)
        except Exception as exc:  # noqa: BLE001 - a task boundary: any failure of one edge's connection
            # makes that edge unreachable; it must not end the swarm and every other edge with it.
            edge.error = Unreachable(f"edge {edge.address}: connection failed ({exc!r})")
            log.warning("%s", edge.error, exc_info=True)
        finally:
            failed = edge.client is None  # never connected
            edge.client = None
            if failed:
                self._failures[key] = self._failures.get(key, 0) + 1
            wait = EDGE_BACKOFF.delay(max(1, self._failures.get(key, 0)))  # a dropped connection: the first wait
            edge.down_until = trio.current_time() + wait
            self._scheduler.set_down(key, edge.down_until)
            edge.ready.set()

    async def _client(self, key: bytes, force: bool = False) -> EdgeClient:
        edge = self._edges.get(key)
        if edge is not None and edge.quiet and edge.error is not None:  # now that it is needed: said once
            edge.quiet = False
            log.warning("%s", edge.error)
        if edge is not None and edge.ended:
            if trio.current_time() < edge.down_until and not force:
                raise edge.error or Unreachable(f"edge {edge.address}: down")
            edge = None  # try again
        if edge is None:
            edge = self._connect(key)
            if edge is None:
                raise Unreachable(f"edge {key.hex()[:16]}… is not in this device's edge list")
        await edge.ready.wait()
        if edge.client is None:
            raise edge.error or Unreachable(f"edge {edge.address}: connection failed")
        return edge.client

    def _connect(self, key: bytes) -> _Edge | None:
        """Start connecting to edge ``key`` (None: it is not in the edge list)."""
        address = next((a for a in self.addresses if a.key == key), None)
        if address is None:
            return None
        edge = self._edges[key] = _Edge(address)
        assert self._nursery is not None
        self._nursery.start_soon(self._hold, edge)
        return edge

    def _warm(self, holders: Iterable[list[bytes]]) -> None:
        """Connect now to every edge that holds something asked for and that this swarm has not tried yet (one
        that failed is tried again by ``_client`` when a copy goes there, after its backoff): a read's first
        objects come from one edge or two, and the rest of the swarm would otherwise be connected only once
        the objects after them are planned there (a handshake and a HELLO, several round trips each, while the
        connected edges serve alone)."""
        for key in {key for keys in holders for key in keys}:
            if key not in self._edges:
                self._connect(key)

    def connect(self) -> None:
        """Connect now to the edges of the list (the first KEEP_CONNECTED), those not connected and not waiting
        out a backoff: a daemon keeps its swarm connected, so that what a command hands it starts with no
        handshake (TLS and HELLO: several round trips, and the edge may ask its hub about the device). A
        failure is quiet until something is asked of that edge."""
        self._runtime_call_sync(self._connect_listed)

    def _connect_listed(self) -> None:
        now = trio.current_time()
        for address in self.addresses[:KEEP_CONNECTED]:
            edge = self._edges.get(address.key)
            if edge is not None and not (edge.ended and now >= edge.down_until):
                continue  # connected, connecting, or waiting out its backoff
            edge = self._connect(address.key)
            if edge is not None:
                edge.quiet = True

    def _drop(self, key: bytes) -> None:
        edge = self._edges.get(key)
        if edge is not None:
            edge.closed.set()

    # GET

    def _damage(self, key: bytes, cid: bytes, exc: CorruptObject) -> None:
        """A copy on edge ``key`` did not match its id: say so once, and keep it for the hub."""
        if (key, cid) not in self._damage_seen:
            self._damage_seen.add((key, cid))
            log.warning("damaged copy: %s; reading the next replica and telling the hub", exc)
        self._damaged.setdefault(key, set()).add(cid)

    def report_damage(self) -> None:
        """Tell the hub of the damaged copies met since the last report (it asks their edges to check them)."""
        damaged, self._damaged = self._damaged, {}
        if self._report is None:
            return
        for key, cids in damaged.items():
            try:
                self._report(key, sorted(cids))
            except PortalError as exc:
                log.warning("could not report %d damaged copies on edge %s: %s", len(cids), key.hex()[:16], exc)

    def _act(self, actions: list[Action]) -> None:
        """Carry out the scheduler's actions: a copy is a task of its own, a cancel cancels it; the copies of
        small objects sent to one edge at once go together (GETS), a task for each MAX_BATCH of them."""
        assert self._nursery is not None
        together: dict[tuple[bytes, bool], list[Request]] = {}
        for action in actions:
            if isinstance(action, Send):
                force = action.why == "retry"
                if action.request.size <= BATCH_OBJECT and self._may_batch(action.edge):
                    together.setdefault((action.edge, force), []).append(action.request)
                else:
                    self._nursery.start_soon(self._copy, action.request, action.edge, force)
            elif isinstance(action, Cancel):
                scope = self._copies.pop((action.request, action.edge), None)
                if scope is not None:
                    scope.cancel()
            else:
                action.request.tag.give_up(action.request.cid, self._damage_seen, self._name)
        for (key, force), requests in together.items():
            if len(requests) == 1:
                self._nursery.start_soon(self._copy, requests[0], key, force)
                continue
            for start in range(0, len(requests), MAX_BATCH):
                self._nursery.start_soon(self._copy_batch, requests[start : start + MAX_BATCH], key, force)

    def _may_batch(self, key: bytes) -> bool:
        """Whether copies to edge ``key`` may go in GETS: it speaks revision 5, or is not connected yet (then
        ``_copy_batch`` sends them one by one if it does not)."""
        edge = self._edges.get(key)
        return edge is None or edge.client is None or edge.client.batches

    async def _drive(self) -> None:
        """Tick the scheduler: at once when requests come, at the next deadline or hedge, every 50 ms while
        requests wait for room (an answer or a failure acts at once, in ``_copy``)."""
        while True:
            now = trio.current_time()
            self._act(self._scheduler.tick(now))
            wake = self._scheduler.next_wake(now)
            with trio.move_on_at(math.inf if wake is None else wake):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _copy(self, request: Request, key: bytes, force: bool) -> None:
        """One copy of a request, to one edge; what became of it goes back to the scheduler."""
        with trio.CancelScope() as scope:
            self._copies[(request, key)] = scope
            try:
                client = await self._client(key, force)
                await self._bandwidth(key, "down", request.size)
                self._scheduler.started(request, key, trio.current_time())
                got: bytes | PortalError = await client.get(request.cid)
                self._scheduler.round_trip(key, client.round_trip())
            except PortalError as exc:
                got = exc
            self._copies.pop((request, key), None)
            self._act(self._settle(request, key, got))

    async def _copy_batch(self, requests: list[Request], key: bytes, force: bool) -> None:
        """Copies of several small requests to one edge, in GETS (asked again for what did not fit one answer);
        each object's fate goes back to the scheduler as its own copy's would. A Cancel does not reach them:
        they are answered together, and a copy answered after its request was done counts as duplicate."""
        assert self._nursery is not None
        left = list(requests)
        try:
            client = await self._client(key, force)
            if not client.batches:  # an edge of an earlier revision: one copy a request
                for request in left:
                    self._nursery.start_soon(self._copy, request, key, force)
                return
            await self._bandwidth(key, "down", sum(r.size for r in left))
            self._scheduler.started_together(left, key, trio.current_time())
            while left:
                got = await client.get_many([r.cid for r in left])
                self._scheduler.round_trip(key, client.round_trip())  # once an answer, not once an object
                actions = []
                for request, data in zip(left, got, strict=False):
                    outcome = MissingObject(f"edge {client.address}: no such object") if data is None else data
                    actions += self._settle(request, key, outcome, fill=False)
                left = left[len(got) :]
                self._act(actions + self._scheduler.fill(trio.current_time()))
        except PortalError as exc:
            actions = []
            for request in left:
                actions += self._settle(request, key, exc, fill=False)
            self._act(actions + self._scheduler.fill(trio.current_time()))

    def _settle(self, request: Request, key: bytes, got: bytes | PortalError, fill: bool = True) -> list[Action]:
        """Tell the scheduler what became of a copy of ``request`` on edge ``key``: its bytes, or why not
        (``fill``: ``Scheduler.answered``'s)."""
        wanted: _Wanted = request.tag
        cid = request.cid
        now = trio.current_time()
        if isinstance(got, MissingObject):
            wanted.failures.append(str(got))
            self.locations.forget(cid, key)
            return self._scheduler.failed(request, key, now, fill=fill)
        if isinstance(got, CorruptObject):  # the edge's copy is damaged: the next replica
            self._damage(key, cid, got)
            wanted.corrupt.append(str(got))
            return self._scheduler.failed(request, key, now, fill=fill)
        if isinstance(got, PortalError):  # unreachable, refused: the next replica
            wanted.failures.append(str(got))
            if isinstance(got, Unreachable):
                wanted.unreachable += 1
                self._drop(key)
            return self._scheduler.failed(request, key, now, unreachable=True, fill=fill)
        self._charge(key, "down", len(got) - request.size)
        actions = self._scheduler.answered(request, key, now, len(got), fill=fill)
        wanted.arrived(got)
        return actions

    def _name(self, key: bytes) -> str:
        address = next((a for a in self.addresses if a.key == key), None)
        return str(address) if address is not None else key.hex()[:16]

    def get(self, cid: bytes, priority: Priority = Priority.FOREGROUND) -> bytes:
        """Fetch one object from the fabric (blocking; from a worker thread, not the loop)."""
        return self.get_many([cid], priority)[cid]

    def get_many(
        self,
        cids: Sequence[bytes],
        priority: Priority = Priority.FOREGROUND,
        sizes: Mapping[bytes, int] | None = None,
    ) -> dict[bytes, bytes]:
        """Fetch ``cids`` (blocking; from a worker thread): ``sizes`` are the bytes expected of some (the
        scheduler plans with them, and batches the small ones)."""
        self._scheduler.prepare()  # here, not on the loop at its first tick
        located = self.locations.known(cids)
        unknown = [cid for cid in cids if cid not in located]
        if unknown and self._locate is not None:
            try:
                answer = self._locate(unknown)
            except PortalError as exc:  # the hub is down: every edge is asked instead
                log.info("locations: %s; asking every edge", exc)
            else:
                self.locations.learn(answer)
                located.update(answer)
        try:
            return self._run(self._get_many, list(cids), located, priority, sizes or {})  # type: ignore[no-any-return]
        finally:
            if self._damaged:
                self.report_damage()

    async def _get_many(
        self,
        cids: list[bytes],
        located: dict[bytes, list[bytes]] | None,
        priority: Priority,
        sizes: Mapping[bytes, int],
    ) -> dict[bytes, bytes]:
        now = trio.current_time()
        self._warm((located or {}).values())
        wanted: dict[bytes, _Wanted] = {}
        for cid in cids:
            if cid not in wanted:
                request = self._scheduler.add(cid, priority, (located or {}).get(cid), now, sizes.get(cid, 0))
                request.tag = wanted[cid] = _Wanted()
        self._wake.set()
        for one in wanted.values():
            await one.done.wait()
        for one in wanted.values():
            if one.error is not None:
                raise one.error
        return {cid: one.data for cid, one in wanted.items() if one.data is not None}

    # PUT

    def push(
        self, objects: Callable[[bytes], bytes], cids: Sequence[bytes], replicas: int, verify: bool = False
    ) -> Placement:
        """Make every id held by ``replicas`` edges that answer; ``objects(cid)`` reads one (on a worker thread).

        Edges that do not answer count for nothing, so pushing what is already
        placed copies what a lost edge held to others (self-healing). With
        ``verify`` (a repair), an edge counts only the copies it read back
        intact (VERIFY, not HAVE), and removes a damaged one, so it is replaced.
        An id that reached fewer edges is in ``short`` (the edges that failed,
        in ``down``); raises Unreachable only if some id reached none.
        """
        return self._run(self._push, objects, list(cids), replicas, verify)  # type: ignore[no-any-return]

    async def _push(
        self, objects: Callable[[bytes], bytes], cids: list[bytes], replicas: int, verify: bool
    ) -> Placement:
        keys = [a.key for a in self.addresses]
        if not keys:
            raise Unreachable("this device knows no edge")
        now = trio.current_time()
        held_back = [k for k in keys if not self._scheduler.allows(k, Priority.PULL, now)]
        if held_back and len(held_back) == len(keys):
            raise Unreachable("every edge is held back by its limits (metered, daily cap or hours): nothing was put")
        holders: dict[bytes, set[bytes]] = {cid: set() for cid in cids}
        damaged = 0
        down: dict[str, str] = {}

        def failed(key: bytes, exc: PortalError) -> None:
            down.setdefault(self._name(key), str(exc))  # said once per edge, by the caller

        async def ask(key: bytes) -> None:
            nonlocal damaged
            try:
                client = await self._client(key)
                if verify:
                    held, intact = await client.have(cids), await client.verify(cids)
                    damaged += sum(h and not i for h, i in zip(held, intact, strict=True))
                else:
                    intact = await client.have(cids)
                for cid, present in zip(cids, intact, strict=True):
                    if present:
                        holders[cid].add(key)
            except PortalError as exc:
                failed(key, exc)

        for key in held_back:  # a background push waits for them: what they lack is placed later
            failed(key, Unreachable("held back by its limits (metered, daily cap or hours)"))
        keys = [k for k in keys if k not in held_back]
        async with trio.open_nursery() as nursery:  # every edge at once: one that is down costs one timeout
            for key in keys:
                nursery.start_soon(ask, key)
        limit = trio.Semaphore(CONCURRENT_PUTS)
        readers = trio.CapacityLimiter(PUSH_READERS)
        copies = 0
        operators = {a.key: a.operator for a in self.addresses}
        rates = self._upload_rates(keys)
        ranked = {cid: placement(keys, cid, rates, operators, holders[cid]) for cid in cids}
        failing: set[bytes] = set()  # edges that failed during this push: what they were to take goes on

        queues: dict[bytes, deque[bytes]] = {}  # a round's: per edge, the ids it is to take
        bound: dict[bytes, set[bytes]] = {}  # a round's: per id, the edges it was queued for or taken by

        def operator(key: bytes) -> str:
            return operators.get(key) or key.hex()

        def steal(key: bytes) -> bytes | None:
            """An id queued for the edge whose queue is longest, for ``key`` to take instead, its own queue done:
            the last queued there, if ``key`` neither holds it nor was to take it, and its copies stay with as
            many operators. So a slow edge does not set the pace of a push: what it would send last goes to an
            edge that is free."""
            victim_key = max((k for k in queues if k != key), key=lambda k: len(queues[k]), default=None)
            if victim_key is None or len(queues[victim_key]) < 2:  # the last one is its own edge's
                return None
            victim = queues[victim_key]
            passed: list[bytes] = []  # looked at from the end, not for ``key``: put back as they were
            try:
                while len(passed) < STEAL_LOOKS:
                    try:
                        cid = victim.pop()
                    except IndexError:
                        return None
                    others = {operator(k) for k in bound[cid] | holders[cid] if k != victim_key}
                    spread = operator(key) == operator(victim_key) or operator(key) not in others
                    if key not in bound[cid] and key not in holders[cid] and spread:
                        bound[cid].add(key)
                        return cid
                    passed.append(cid)
                return None
            finally:
                victim.extend(reversed(passed))

        def take(key: bytes, most: int) -> list[tuple[bytes, bytes]]:
            """The next objects for one request to ``key``, read (on a worker thread): from its queue, or once
            that is done stolen from the longest; up to ``most`` of them and about BATCH_BYTES, never past a
            frame."""
            queue = queues[key]
            batch: list[tuple[bytes, bytes]] = []
            size = 0
            while len(batch) < most and size < BATCH_BYTES:
                try:
                    cid = queue.popleft()  # another task of the same edge takes from it too
                except IndexError:
                    stolen = steal(key)
                    if stolen is None:
                        break
                    cid = stolen
                data = objects(cid)
                if batch and size + len(data) > MAX_BODY:
                    queue.appendleft(cid)  # the next request's
                    break
                batch.append((cid, data))
                size += len(data)
            return batch

        def takeable(key: bytes) -> bool:
            """Whether anything is left for ``key`` to take: its own queue, or one another edge may give up."""
            return bool(queues[key]) or any(len(q) >= 2 for k, q in queues.items() if k != key)

        async def put_to(key: bytes) -> None:
            nonlocal copies
            while key not in failing:
                async with limit:
                    try:
                        client = await self._client(key)
                        # the limits first (a request's worth reserved), then the objects: what waits on the
                        # limits stays queued, for other edges to take
                        if not await self._bandwidth(key, "up", BATCH_BYTES, lambda: takeable(key)):
                            return
                        batch = await trio.to_thread.run_sync(
                            take, key, MAX_BATCH if client.batches else 1, limiter=readers
                        )
                        size = sum(len(data) for _, data in batch)
                        self._charge(key, "up", size - BATCH_BYTES)
                        if not batch:
                            return
                        sent = trio.current_time()
                        if client.batches:
                            await client.put_many(batch)
                        else:
                            await client.put(*batch[0])
                    except PortalError as exc:
                        failing.add(key)
                        failed(key, exc)
                        if isinstance(exc, Unreachable):
                            self._drop(key)
                        return
                    self._scheduler.counted(key, size, trio.current_time())
                    self._uploads.setdefault(key, Throughput()).sample(size, trio.current_time() - sent)
                    for cid, _ in batch:
                        holders[cid].add(key)
                    copies += len(batch)

        for _round in keys:  # what an edge that failed was to take goes to the next edge of each id's ranking
            queues.clear()
            bound.clear()
            for cid in cids:
                need = replicas - len(holders[cid])
                for key in ranked[cid]:
                    if need <= 0:
                        break
                    if key not in holders[cid] and key not in failing:
                        queues.setdefault(key, deque()).append(cid)
                        bound.setdefault(cid, set()).add(key)
                        need -= 1
            if not queues:
                break
            for key in keys:  # an edge with nothing of its own to take may take from the others
                if key not in failing:
                    queues.setdefault(key, deque())
            async with trio.open_nursery() as nursery:
                for key in queues:
                    for _ in range(PUTS_PER_EDGE):
                        nursery.start_soon(put_to, key)
        lost = [cid for cid, held in holders.items() if not held]
        if lost:
            why = edges_down(down) or "no edge took them"
            raise Unreachable(f"{len(lost)} objects could be put on no edge (first {lost[0].hex()}): {why}")
        by_edge: dict[bytes, list[bytes]] = {}
        for cid, held in holders.items():
            for key in held:
                by_edge.setdefault(key, []).append(cid)
        short = [cid for cid, held in holders.items() if len(held) < replicas]
        return Placement(by_edge, copies, damaged, short, down)

    def fetched(self) -> dict[str, Any]:
        """What the scheduler did so far and has left (``Scheduler.statistics``), per edge by address (from a
        thread that is not the loop's)."""
        return self._runtime_call_sync(self.fetching)  # type: ignore[no-any-return]

    def fetching(self) -> dict[str, Any]:
        """``fetched``, on the loop."""
        stats = self._scheduler.statistics()
        stats["edges"] = {self._name(key): figures for key, figures in stats["edges"].items()}
        return stats

    def _upload_rates(self, keys: list[bytes]) -> dict[bytes, float]:
        rates = {k: self._uploads[k].bytes_per_second for k in keys if k in self._uploads}
        return {k: r for k, r in rates.items() if r}

    def statistics(self) -> dict[str, int]:
        """The requests this swarm sent to edges so far, by kind (HELLO, GET, PUT, GETS, PUTS, HAVE, VERIFY,
        STAT), and the ids it asked about ("HAVE ids", "VERIFY ids")."""
        return self._run(self._statistics)  # type: ignore[no-any-return]

    async def _statistics(self) -> dict[str, int]:
        return dict(sum(self._requests, Counter()))

    def stat(self) -> list[dict[str, Any]]:
        return self._run(self._stat)  # type: ignore[no-any-return]

    async def _stat(self) -> list[dict[str, Any]]:
        rows = [
            {"edge": str(a), "key": a.key.hex(), "transport": a.transport, "operator": a.operator}
            for a in self.addresses
        ]

        async def ask(address: EdgeAddress, row: dict[str, Any]) -> None:
            try:
                status = await (await self._client(address.key)).stat()
                row.update(up=True, objects=status.objects, used=status.used, usage=status.usage, quota=status.quota)
            except PortalError as exc:
                row.update(up=False, error=str(exc))

        async with trio.open_nursery() as nursery:  # every edge at once
            for address, row in zip(self.addresses, rows, strict=True):
                nursery.start_soon(ask, address, row)
        return rows

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._runtime is None:
            raise RuntimeError("the swarm is not started")
        return self._runtime.call(fn, *args)

    def _runtime_call_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._runtime is None:
            raise RuntimeError("the swarm is not started")
        return self._runtime.call_sync(fn, *args)
