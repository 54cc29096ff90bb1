"""The swarm: a device's connections to every edge, on the process's one trio loop (``portalfs.runtime``).

It lives as long as its owner (a command, portald, a mount) and keeps its
connections, the edges' state and the hub's locations across uses; the edge
set can change while it runs (``set_edges``). Blocking callers on worker
threads (the mount's readers, the sync engine, the CLI) use ``get`` and
``push``; inside, requests run concurrently across edges. Every GET says why
it is made (``Priority``): at most CONCURRENT_GETS are in flight, and a
waiting one of a more urgent kind goes first (``PriorityGate``), so that a
read a process waits for is not queued behind read-ahead, a sync or a repair. A GET goes to the
edges that hold the id (the hub's locations, else every edge), least busy
first, and fails over to the next one at once when an edge errs or
disconnects. A PUT goes to ``replicas`` edges chosen by rendezvous hashing
(stable per id, spread across edges), skipping edges that already hold it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import blake3
import trio

from ..backoff import Backoff
from ..edge.client import EdgeAddress, EdgeClient, connect_edge
from ..errors import CorruptObject, MissingObject, PortalError, Unreachable
from ..keys import DeviceKey
from ..runtime import Runtime, current
from ..store.base import Priority
from .estimators import EdgeEstimate
from .locations import LocationCache

__all__ = ["Swarm", "Placement", "PriorityGate", "edges_down"]

log = logging.getLogger("portal.swarm")

RETRY_DOWN_SECONDS = 5.0  # an edge that failed to connect is not tried again for this long,
RETRY_DOWN_MAX = 300.0  # doubling with each failure in a row up to this
EDGE_BACKOFF = Backoff(RETRY_DOWN_SECONDS, RETRY_DOWN_MAX)
CONCURRENT_PUTS = 16
CONCURRENT_GETS = 64
TYPICAL_OBJECT = 1 << 20  # bytes a GET is counted for before its answer says (chunks average about 1 MiB)

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


def edges_down(down: dict[str, str]) -> str:
    """``Placement.down`` in one line: each edge that failed, with its first error."""
    return "; ".join(f"{edge}: {reason}" for edge, reason in down.items())


class PriorityGate:
    """At most ``slots`` holders at a time; a freed slot goes to the most urgent waiter (lowest priority value),
    the earliest of equals. Runs on one trio loop."""

    def __init__(self, slots: int) -> None:
        self.free = slots
        self._waiting: list[tuple[int, int, trio.Event]] = []  # a heap
        self._order = itertools.count()

    @asynccontextmanager
    async def slot(self, priority: Priority) -> AsyncIterator[None]:
        if self.free > 0 and not self._waiting:
            self.free -= 1
        else:
            entry = (int(priority), next(self._order), trio.Event())
            heapq.heappush(self._waiting, entry)
            try:
                await entry[2].wait()
            except BaseException:
                if entry[2].is_set():  # handed a slot as it was cancelled: pass it on
                    self._release()
                else:
                    self._waiting.remove(entry)
                    heapq.heapify(self._waiting)
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        if self._waiting:
            heapq.heappop(self._waiting)[2].set()  # the slot passes straight to it
        else:
            self.free += 1

    @property
    def waiting(self) -> int:
        return len(self._waiting)


@dataclass(frozen=True, slots=True)
class Placement:
    held: dict[bytes, list[bytes]]  # per edge key, the ids it holds now (for the hub's locations)
    copies: int  # objects put to an edge by this push
    damaged: int = 0  # copies an edge held but found damaged when asked to verify them (and removed)
    short: list[bytes] = field(default_factory=list)  # ids on fewer than ``replicas`` edges (but on one at least)
    down: dict[str, str] = field(default_factory=dict)  # edges that failed, each with its first error


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
    ) -> None:
        self.addresses = list(edges)
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
        self._gets = PriorityGate(CONCURRENT_GETS)
        self.estimates: dict[bytes, EdgeEstimate] = {}  # per edge key: what its answers showed (estimators.py)
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
        self._stop.set()
        with trio.move_on_after(10):
            await self._done.wait()

    async def _main(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._done.set()

    def set_edges(self, edges: Sequence[EdgeAddress]) -> None:
        """Use ``edges`` from now on: an edge that left is disconnected, one that came is connected when first
        used, and those that stay keep their connections and state."""
        self._runtime_call_sync(self._set_edges, list(edges))

    def _set_edges(self, edges: list[EdgeAddress]) -> None:
        keep = {a.key: a for a in edges}
        for key, edge in list(self._edges.items()):
            if keep.get(key) != edge.address:
                edge.closed.set()
                del self._edges[key]
        self.addresses = edges

    # connections

    async def _hold(self, edge: _Edge) -> None:
        key = edge.address.key
        try:
            async with connect_edge(edge.address, self._device, self._cert) as client:
                self._requests.append(client.requests)
                self._failures.pop(key, None)
                edge.client = client
                edge.ready.set()
                await edge.closed.wait()
        except PortalError as exc:
            edge.error = exc
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
            edge.ready.set()

    async def _client(self, key: bytes, force: bool = False) -> EdgeClient:
        edge = self._edges.get(key)
        if edge is not None and edge.client is None and edge.ready.is_set():
            if trio.current_time() < edge.down_until and not force:
                raise edge.error or Unreachable(f"edge {edge.address}: down")
            edge = None  # try again
        if edge is None:
            address = next((a for a in self.addresses if a.key == key), None)
            if address is None:
                raise Unreachable(f"edge {key.hex()[:16]}… is not in this device's edge list")
            edge = self._edges[key] = _Edge(address)
            assert self._nursery is not None
            self._nursery.start_soon(self._hold, edge)
        await edge.ready.wait()
        if edge.client is None:
            raise edge.error or Unreachable(f"edge {edge.address}: connection failed")
        return edge.client

    def _drop(self, key: bytes) -> None:
        edge = self._edges.get(key)
        if edge is not None:
            edge.closed.set()

    def _load(self, key: bytes) -> tuple[bool, int, float]:
        """Edges known to be down last, then the least busy, and among those equally busy the one estimated to
        answer soonest (round trip, throughput, health: ``estimators.EdgeEstimate.finish``). Ranking by the
        estimate alone measured 10-15% slower on two equal edges (bench/fetch): requests in flight balance
        them better, and a slow edge gathers more of them by itself."""
        estimate = self._estimate(key)
        edge = self._edges.get(key)
        now = trio.current_time()
        finish = estimate.finish(TYPICAL_OBJECT, now)
        in_flight = estimate.queued_bytes // TYPICAL_OBJECT
        if edge is None:
            return False, in_flight, finish
        down = edge.client is None and edge.ready.is_set() and now < edge.down_until
        return down, in_flight, finish

    def _estimate(self, key: bytes) -> EdgeEstimate:
        estimate = self.estimates.get(key)
        if estimate is None:
            estimate = self.estimates[key] = EdgeEstimate.new()
        return estimate

    # GET

    def _candidates(self, cid: bytes, located: dict[bytes, list[bytes]] | None) -> list[bytes]:
        known = {a.key for a in self.addresses}
        held = [k for k in (located or {}).get(cid, []) if k in known]
        rest = [k for k in known if k not in held]
        return sorted(held, key=self._load) + sorted(rest, key=self._load)

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

    async def _get(self, cid: bytes, located: dict[bytes, list[bytes]] | None, priority: Priority) -> bytes:
        async with self._gets.slot(priority):
            return await self._get_now(cid, located)

    async def _get_now(self, cid: bytes, located: dict[bytes, list[bytes]] | None) -> bytes:
        failures: list[str] = []
        corrupt: list[str] = []
        unreachable = 0
        candidates = self._candidates(cid, located)
        # A second round reconnects to edges that were down: the last replica may be one of them.
        for key, force in [(k, False) for k in candidates] + [(k, True) for k in candidates]:
            estimate = self._estimate(key)
            try:
                client = await self._client(key, force)
                estimate.queued_bytes += TYPICAL_OBJECT
                sent = trio.current_time()
                try:
                    data = await client.get(cid)
                    estimate.answered(len(data), trio.current_time() - sent)
                    return data
                finally:
                    estimate.queued_bytes -= TYPICAL_OBJECT
            except MissingObject as exc:
                failures.append(str(exc))
                self.locations.forget(cid, key)
            except CorruptObject as exc:  # the edge's copy is damaged: the next replica
                self._damage(key, cid, exc)
                corrupt.append(str(exc))
            except PortalError as exc:  # unreachable, refused: the next replica
                failures.append(str(exc))
                estimate.failed(trio.current_time())
                if isinstance(exc, Unreachable):
                    unreachable += 1
                    self._drop(key)
        if corrupt and not unreachable:  # every copy that could be read was damaged
            edges = sorted({self._name(k) for k, c in self._damage_seen if c == cid})
            raise CorruptObject(f"object {cid.hex()}: every copy is damaged (on {', '.join(edges)})")
        detail = "; ".join((corrupt + failures)[-3:]) or "no edges"
        raise MissingObject(f"object {cid.hex()} is on no reachable edge ({detail})")

    def _name(self, key: bytes) -> str:
        address = next((a for a in self.addresses if a.key == key), None)
        return str(address) if address is not None else key.hex()[:16]

    def get(self, cid: bytes, priority: Priority = Priority.FOREGROUND) -> bytes:
        """Fetch one object from the fabric (blocking; from a worker thread, not the loop)."""
        return self.get_many([cid], priority)[cid]

    def get_many(self, cids: Sequence[bytes], priority: Priority = Priority.FOREGROUND) -> dict[bytes, bytes]:
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
            return self._run(self._get_many, list(cids), located, priority)  # type: ignore[no-any-return]
        finally:
            if self._damaged:
                self.report_damage()

    async def _get_many(
        self, cids: list[bytes], located: dict[bytes, list[bytes]] | None, priority: Priority
    ) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        errors: list[PortalError] = []

        async def one(cid: bytes) -> None:
            try:
                found[cid] = await self._get(cid, located, priority)
            except PortalError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for cid in cids:
                nursery.start_soon(one, cid)
        if errors:
            raise errors[0]
        return found

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

        async with trio.open_nursery() as nursery:  # every edge at once: one that is down costs one timeout
            for key in keys:
                nursery.start_soon(ask, key)
        limit = trio.Semaphore(CONCURRENT_PUTS)
        copies = 0

        async def place(cid: bytes) -> None:
            nonlocal copies
            ranked = sorted(keys, key=lambda k: blake3.blake3(k + cid).digest())
            async with limit:
                data: bytes | None = None
                for key in ranked:
                    if len(holders[cid]) >= replicas:
                        return
                    if key in holders[cid]:
                        continue
                    try:
                        client = await self._client(key)
                        if data is None:
                            data = await trio.to_thread.run_sync(objects, cid)
                        await client.put(cid, data)
                        holders[cid].add(key)
                        copies += 1
                    except PortalError as exc:
                        failed(key, exc)
                        if isinstance(exc, Unreachable):
                            self._drop(key)

        async with trio.open_nursery() as nursery:
            for cid in cids:
                nursery.start_soon(place, cid)
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

    def statistics(self) -> dict[str, int]:
        """The requests this swarm sent to edges so far, by kind (HELLO, GET, PUT, HAVE, VERIFY, STAT), and the
        ids it asked about ("HAVE ids", "VERIFY ids")."""
        return self._run(self._statistics)  # type: ignore[no-any-return]

    async def _statistics(self) -> dict[str, int]:
        return dict(sum(self._requests, Counter()))

    def stat(self) -> list[dict[str, Any]]:
        return self._run(self._stat)  # type: ignore[no-any-return]

    async def _stat(self) -> list[dict[str, Any]]:
        rows = [{"edge": str(a), "key": a.key.hex(), "transport": a.transport} for a in self.addresses]

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
