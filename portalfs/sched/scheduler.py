"""The chunk scheduler's dispatch, sans-I/O on explicit time (docs/design.md, section 14, "The chunk scheduler").

The caller (the swarm, or a test on virtual time) adds requests, calls ``tick`` every 50 ms or at once when a
request that a reader waits for comes, and tells the scheduler what became of each copy it sent
(``answered``, ``failed``). Each of those returns actions: ``Send`` a request to an edge, ``Cancel`` a copy
no longer needed (the first copy of a request to arrive wins), ``GiveUp`` when no edge is left to ask.

- A tick plans every request not yet sent (``plan.py``: shares, cost matrix, primary and backups) and fills
  each edge's window, the most urgent class first. The window is the edge's bandwidth-delay product in
  requests, plus 2 (at least 2, at most 16); a read that waits may take up to 2 more beside copies that do not
  wait (read-ahead, a sync's), so that it is not queued behind them.
- An edge with room and nothing planned for it takes a planned request from the edge whose queue ends last,
  if it holds that chunk (work stealing), so no edge idles while another is queued.
- A failed copy, or one past its deadline (its RTO plus three times its expected transfer), fails over at once to
  the request's next backup, then to its other holders, then to edges not known to hold it, then once to
  edges that were down; after that the request is given up.
- Endgame: once nothing is left to send, an edge with room duplicates the in-flight request expected to
  finish last, if it holds it and would finish it sooner. Hedge: a read that waits and has been in flight
  longer than its edge's p95 response time is sent to its first backup too. Duplicates are bounded: their
  bytes stay under ``max(DUPLICATE_FLOOR, DUPLICATE_SHARE x bytes asked)`` and are counted in ``statistics``.
- Constraints: an edge may be down (until a time), metered, capped per day, or open to background classes
  only in some hours; a read that waits (foreground, read-ahead) uses any edge that is up.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..store.base import Priority
from .actions import Action, Cancel, EdgeLimits, GiveUp, Request, Send
from .estimators import EdgeEstimate

if TYPE_CHECKING:
    from .plan import Backend

__all__ = ["Scheduler", "Request", "Send", "Cancel", "GiveUp", "EdgeLimits", "Action"]

TYPICAL_OBJECT = 1 << 20  # bytes a request is counted for when its size is not known (chunks average ~1 MiB)
DEFAULT_RATE = 12.5e6  # bytes per second assumed of an edge never measured (it is soon measured)
DEFAULT_RTT = 0.02
WINDOW_MIN, WINDOW_MAX, WINDOW_EXTRA, URGENT_EXTRA = 2, 16, 2, 2
PIPELINE = 2  # copies a measured edge may always hold, whatever their size: the one it sends, the next
MAX_IN_FLIGHT = 64
DUPLICATE_FLOOR = 8 << 20
DUPLICATE_SHARE = 0.1
LATE_FACTOR = 3  # a copy is late past its edge's RTO and this many times its bytes' (and its queue's) time
DELIVERY_SPAN = 4  # answers a delivery-rate sample spans
HEDGE_SAMPLES = 8  # response times an edge must have answered before its p95 is trusted
CHOICES = 3  # a primary and two backups per request
WAIT_FOR_ROOM = 0.05  # seconds between ticks while requests (or hedges) wait for an edge with room


class _Edge:
    def __init__(self, key: bytes, index: int) -> None:
        self.key = key
        self.index = index
        self.estimate = EdgeEstimate.new()
        self.limits = EdgeLimits()
        self.down_until = 0.0
        self.in_flight: set[Request] = set()
        self.flight = 0  # bytes of the copies in flight there
        self.waiting = 0  # of those, bytes of copies a read waits for (FOREGROUND)
        self.durations: deque[float] = deque(maxlen=64)
        self.bytes = 0  # answered
        self.day = (-1, 0)  # (day number, bytes this process moved that day)
        self.others = (-1, 0)  # (day number, bytes the device's other processes moved that day)
        self.gone = False  # no longer in the edge list
        self.suspect = False  # a copy went past its deadline: nothing new is sent until it answers again
        self.busy: deque[tuple[float, int]] = deque(maxlen=DELIVERY_SPAN + 1)  # answers while busy: (when, bytes)
        self.latencies: deque[float] = deque(maxlen=64)  # response time less the bytes' own time at the rate
        self.round_trip = 0.0  # the connection's, as its transport measured it last (0: not known)
        self._p95: float | None = None  # of ``durations``, once computed
        self._least: float | None = None  # of ``latencies``, once computed

    def delivered(self, size: int, sent: float, now: float) -> tuple[int, float]:
        """A throughput sample (bytes, seconds) for an answer of ``size`` bytes to a copy sent at ``sent``: the
        delivery rate over the last DELIVERY_SPAN answers of this busy period (the edge had a copy in
        flight since the first of them), so that two answers read together do not count as an instant; an
        answer to an edge that was idle counts from its sending, its latency included."""
        if not self.busy or sent > self.busy[-1][0]:  # idle when it was sent: a new busy period
            self.busy.clear()
            self.busy.append((now, size))
            return size, now - sent
        self.busy.append((now, size))
        first = self.busy[0][0]
        return sum(b for _, b in list(self.busy)[1:]), now - first

    def queued(self) -> int:
        """Bytes of the copies in flight there."""
        return self.flight

    def today(self, day: int) -> int:
        """Bytes moved with it on ``day`` (toward its daily cap): by this process, and by the device's others as
        last told (``Scheduler.elsewhere``)."""
        return self.own_today(day) + (self.others[1] if self.others[0] == day else 0)

    def own_today(self, day: int) -> int:
        return self.day[1] if self.day[0] == day else 0

    def moved(self, day: int, size: int) -> None:
        self.day = (day, self.own_today(day) + size)

    def rate(self, fallback: float) -> float:
        return self.estimate.throughput.bytes_per_second or fallback

    def srtt(self) -> float:
        return self.estimate.rtt.srtt if self.estimate.rtt.srtt is not None else DEFAULT_RTT

    def latency(self) -> float:
        """Seconds from sending a request to its first byte, queue aside: the least seen lately, and no less than
        the connection's round trip where its transport measures one. (A response time less its bytes' time at
        the estimated rate is often 0: the estimate lags, and a copy sent behind others counts their bytes
        whole though part of them had gone; so windows sized by it alone left out the round trip.)"""
        if self._least is None:  # once per answer, not per question (asked for every copy in flight)
            self._least = min(self.latencies) if self.latencies else DEFAULT_RTT
        return max(self._least, self.round_trip)

    def window(self, fallback: float) -> int:
        """Typical objects' worth of bytes it may have in flight: one until it has answered (a probe: a slow
        edge is not handed a queue before its rate is known), then its bandwidth-delay product plus
        WINDOW_EXTRA. In bytes, so that small objects go many at a time (and together: GETS)."""
        if self.estimate.throughput.bytes_per_second is None:
            return 1
        bdp = self.rate(fallback) * self.latency() / TYPICAL_OBJECT
        return max(WINDOW_MIN, min(WINDOW_MAX, math.ceil(bdp) + WINDOW_EXTRA))

    def answered(self, response: float, latency: float) -> None:
        """An answer ``response`` seconds after its copy went, ``latency`` of it before the first byte."""
        self.latencies.append(latency)
        self.durations.append(response)
        self._p95 = self._least = None

    def p95(self) -> float | None:
        """The 95th percentile of its recent response times (computed once per answer: asked per copy in
        flight at every wake)."""
        if len(self.durations) < HEDGE_SAMPLES:
            return None
        if self._p95 is None:
            # numpy's default percentile (linear between closest ranks); np.percentile's first call imports
            # numpy.ma, 19 ms of a command's start
            self._p95 = statistics.quantiles(self.durations, n=20, method="inclusive")[18]
        return self._p95


class Scheduler:
    """``backend`` plans the ticks; ``choose_backend`` makes it at ``prepare`` or the first tick that plans a
    request, whichever comes first (a process that only pushes, or only asks what its limits allow, never
    imports NumPy: 70 ms of a command's start); with neither, NumPy on the calling thread."""

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        choose_backend: Callable[[], Backend] | None = None,
        calendar: Callable[[float], tuple[int, int]] | None = None,
    ) -> None:
        self._backend = backend
        self._choose_backend = choose_backend
        self._edges: list[_Edge] = []
        self._by_key: dict[bytes, _Edge] = {}
        self._unsent: dict[Request, None] = {}  # in order of arrival
        self._in_flight: set[Request] = set()
        self._seq = itertools.count()
        # (day number, local hour) at a time, for EdgeLimits' daily caps and hours; the swarm passes the wall
        # clock's, a test its own
        self._calendar = calendar or (lambda now: (int(now // 86400), 12))
        self.asked_bytes = 0
        self.duplicate_bytes = 0  # bytes of copies sent beside a first one (endgame, hedges)
        self.wasted_bytes = 0  # bytes of copies that arrived after another copy of the same request
        self.sends: dict[str, int] = {}  # copies sent, by why

    # edges

    def set_edges(self, keys: list[bytes]) -> None:
        """Use these edges from now on; those that stay keep their estimates. An edge keeps its index for the
        scheduler's life (one that left is only marked gone), so requests in flight stay valid."""
        for key in keys:
            if key not in self._by_key:
                edge = _Edge(key, len(self._edges))
                self._edges.append(edge)
                self._by_key[key] = edge
        wanted = set(keys)
        for edge in self._edges:
            edge.gone = edge.key not in wanted

    def estimate(self, key: bytes) -> EdgeEstimate:
        return self._by_key[key].estimate

    def round_trip(self, key: bytes, seconds: float | None) -> None:
        """The round trip of the connection to edge ``key``, as its transport measures it (None: it does not)."""
        edge = self._by_key.get(key)
        if edge is not None and seconds is not None:
            edge.round_trip = seconds

    def set_limits(self, key: bytes, limits: EdgeLimits) -> None:
        self._by_key[key].limits = limits

    def set_down(self, key: bytes, until: float) -> None:
        """The edge cannot be reached until ``until`` (the caller's backoff); its copies in flight stay."""
        if key in self._by_key:
            self._by_key[key].down_until = until

    # requests

    def add(self, cid: bytes, priority: int, holders: list[bytes] | None, now: float, size: int = 0) -> Request:
        """A request for ``cid``; ``holders``: the edges known to hold it (None: not known, every edge)."""
        known = [self._by_key[k].index for k in holders or [] if k in self._by_key and not self._by_key[k].gone]
        rest = [e.index for e in self._edges if e.index not in known and not e.gone]
        if not known:
            known, rest = rest, []
        request = Request(cid, size or TYPICAL_OBJECT, int(priority), next(self._seq) & 0xFFFFFFFF, known, rest, now)
        self._unsent[request] = None
        self.asked_bytes += request.size
        return request

    def pending(self) -> int:
        return len(self._unsent) + len(self._in_flight)

    def _usable(self, edge: _Edge, priority: int, now: float) -> bool:
        if edge.gone or edge.suspect or now < edge.down_until:
            return False
        return edge.limits.allows(priority, self._calendar(now)[1], self._today(edge, now))

    def _fallback_rate(self) -> float:
        known = [e.estimate.throughput.bytes_per_second for e in self._edges]
        rates = [r for r in known if r]
        return float(statistics.median(rates)) if rates else DEFAULT_RATE

    # the tick

    def prepare(self) -> Backend:
        """The plan backend, made now if it was not yet: a caller about to fetch calls this off the event loop,
        so that NumPy's import does not stall the loop at the first tick."""
        if self._backend is None:
            from .plan import NumpyBackend  # noqa: PLC0415 - only once there is something to plan

            self._backend = self._choose_backend() if self._choose_backend else NumpyBackend(threads=1)
        return self._backend

    def tick(self, now: float) -> list[Action]:
        actions: list[Action] = self._late(now)
        self._plan(now)
        actions += self._fill(now)
        actions += self._hedge(now)
        return actions

    def _plan(self, now: float) -> None:
        if not self._unsent or not self._edges:
            return
        import numpy as np  # noqa: PLC0415 - only once there is something to plan (see the class)

        from .plan import ChunkArrays, EdgeArrays, advance, plan  # noqa: PLC0415

        backend = self.prepare()
        fallback = self._fallback_rate()
        queued = np.array([e.queued() for e in self._edges], np.float64)
        rate = np.array([e.rate(fallback) for e in self._edges], np.float64)
        health = np.array([max(0.05, e.estimate.health.score(now, e.srtt(), e.estimate.rtt.rto)) for e in self._edges])
        latency = np.array([e.latency() for e in self._edges])
        ready = (latency + queued / rate) / health
        inv_rate = 1.0 / (rate * health)
        classes: dict[int, list[Request]] = {}
        for request in self._unsent:
            classes.setdefault(request.priority, []).append(request)
        for priority in sorted(classes):
            requests = classes[priority]
            usable = [self._usable(e, priority, now) for e in self._edges]
            width = max(1, max(len(r.holders) for r in requests))
            cand = np.full((len(requests), width), -1, np.int32)
            for i, request in enumerate(requests):
                live = [e for e in request.holders if e not in request.tried]
                cand[i, : len(live)] = live
            size = np.fromiter((r.size for r in requests), np.uint32, len(requests))
            seq = np.fromiter((r.seq for r in requests), np.uint32, len(requests))
            edges = EdgeArrays.of(ready, inv_rate, usable)
            tick = plan(backend, ChunkArrays(cand, size, seq), edges, CHOICES)
            order = backend.tohost(tick.order)
            for request, row in zip(requests, order, strict=True):
                request.order = [int(e) for e in row if e >= 0]
            ready = advance(edges, tick).ready.astype(np.float64)

    def _room(self, edge: _Edge, priority: int, fallback: float) -> bool:
        """Whether ``edge`` may take another copy: its bytes in flight are under its window, or (once it has
        answered) it holds fewer than PIPELINE copies, and the device's bytes in flight are under MAX_IN_FLIGHT
        typical objects. The second rule is for a large object that fills a window alone: without a copy queued
        behind it, the edge would send it and then idle for the round trip the next request takes to reach it
        (bench/swarm saw that gap after each).

        A read that waits may go past either bound by the bytes of copies that do not wait (read-ahead, a
        sync's), up to URGENT_EXTRA typical objects: it is not queued behind them. Beside copies that wait too
        it gets no more room than they had: a `get` asks for everything in the foreground, and room past the
        window then only deepened every edge's queue, the slow ones' most, which the end of the transfer
        waited for or duplicated (simulated bench/swarm edges, 30 chunkings: a median of 0.947 of the rates
        with that room, 0.965 without)."""
        pipelined = edge.estimate.throughput.bytes_per_second is not None and len(edge.in_flight) < PIPELINE
        window = edge.window(fallback) * TYPICAL_OBJECT + self._extra(priority, edge.flight - edge.waiting)
        if edge.flight >= window and not pipelined:
            return False
        flight = sum(e.flight for e in self._edges)
        waiting = sum(e.waiting for e in self._edges)
        return flight < MAX_IN_FLIGHT * TYPICAL_OBJECT + self._extra(priority, flight - waiting)

    @staticmethod
    def _extra(priority: int, not_waiting: int) -> int:
        """Bytes a copy of ``priority`` may go past a full window, with ``not_waiting`` bytes of copies that
        no read waits for in it."""
        return min(URGENT_EXTRA * TYPICAL_OBJECT, not_waiting) if priority == Priority.FOREGROUND else 0

    def _fill(self, now: float) -> list[Action]:
        """Send planned requests, most urgent first, to their primaries while those have room; then let edges with
        room take requests planned elsewhere that they hold; then the endgame."""
        fallback = self._fallback_rate()
        actions: list[Action] = []
        queues: dict[int, deque[Request]] = {}
        for request in sorted(self._unsent, key=lambda r: (r.priority, r.seq)):
            if request.order:
                queues.setdefault(request.order[0], deque()).append(request)
                continue
            rerouted = self._reroute(request, "unplanned", now)  # none of its holders may be used now
            if rerouted is not None:
                actions.append(rerouted)
        for index, queue in queues.items():
            edge = self._edges[index]
            while queue and self._room(edge, queue[0].priority, fallback):
                if not self._usable(edge, queue[0].priority, now):  # since the plan: late, down, past its cap
                    break
                actions.append(self._send(queue.popleft(), edge, "plan", now))
        for edge in self._edges:  # work stealing
            while True:
                victim = self._steal(edge, queues, now, fallback)
                if victim is None:
                    break
                actions.append(self._send(victim, edge, "steal", now))
        if not self._unsent:
            actions += self._endgame(now, fallback)
        return actions

    def _finish(self, edge: _Edge, extra: int, fallback: float) -> float:
        """Seconds until ``edge`` would have answered what it holds and ``extra`` more bytes."""
        return edge.latency() + (edge.queued() + extra) / edge.rate(fallback)

    def _steal(self, edge: _Edge, queues: dict[int, deque[Request]], now: float, fallback: float) -> Request | None:
        if not self._room(edge, Priority.REPAIR, fallback):
            return None
        busiest = sorted(
            (q for i, q in queues.items() if q and i != edge.index),
            key=lambda q: -self._finish(self._edges[q[0].order[0]], sum(r.size for r in q), fallback),
        )
        for queue in busiest:
            owner = self._edges[queue[0].order[0]]
            behind = sum(r.size for r in queue)  # bytes queued there up to and including the request looked at
            for request in reversed(queue):  # the one that would be served last
                theirs = self._finish(owner, behind, fallback)
                behind -= request.size
                if self._finish(edge, request.size, fallback) >= theirs:  # it would not end sooner here
                    break
                if edge.index in request.holders and edge.index not in request.tried:
                    if self._usable(edge, request.priority, now):
                        queue.remove(request)
                        return request
        return None

    def _endgame(self, now: float, fallback: float) -> list[Action]:
        """Each edge with room duplicates, while it has room, the copy in flight expected to end last among
        those it holds and would finish sooner. Asked at every answer once nothing is left to send: the
        expected ends are computed once for all the edges (a copy sent here changes no other request's)."""
        edges = [edge for edge in self._edges if self._room(edge, Priority.REPAIR, fallback)]
        if not edges:
            return []
        flying = [r for r in self._in_flight if not r.duplicated]
        ends = [max(self._expected_end(r, e, fallback, now) for e in r.copies) for r in flying]
        latest_first = sorted(zip(ends, flying, strict=True), key=lambda pair: -pair[0])  # stable: ties as met
        actions: list[Action] = []
        for edge in edges:
            usable: dict[int, bool] = {}  # by priority
            while self._room(edge, Priority.REPAIR, fallback):
                best: Request | None = None
                for end, request in latest_first:
                    if request.duplicated or edge.index in request.copies or edge.index in request.tried:
                        continue
                    if edge.index not in request.holders:
                        continue
                    if request.priority not in usable:
                        usable[request.priority] = self._usable(edge, request.priority, now)
                    if usable[request.priority] and now + self._finish(edge, request.size, fallback) < end:
                        best = request
                        break
                if best is None or not self._may_duplicate(best):
                    break
                actions.append(self._duplicate(best, edge, "endgame", now))
        return actions

    def _expected_end(self, request: Request, index: int, fallback: float, now: float) -> float:
        """When the copy on edge ``index`` should arrive: from the edge's estimates, and no sooner than it has
        already taken again (a copy past its expected time, or on an edge not measured yet, is a straggler)."""
        edge = self._edges[index]
        sent = request.copies[index]
        expected = sent + edge.latency() + (request.ahead.get(index, 0) + request.size) / edge.rate(fallback)
        return max(expected, now + (now - sent))

    def _may_duplicate(self, request: Request) -> bool:
        budget = max(DUPLICATE_FLOOR, DUPLICATE_SHARE * self.asked_bytes)
        return self.duplicate_bytes + request.size <= budget

    def _duplicate(self, request: Request, edge: _Edge, why: str, now: float) -> Action:
        request.duplicated = True
        self.duplicate_bytes += request.size
        return self._send(request, edge, why, now)

    def _hedge(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for request in list(self._in_flight):
            if request.priority != Priority.FOREGROUND or request.duplicated or len(request.copies) != 1:
                continue
            (index, sent), = request.copies.items()  # fmt: skip
            p95 = self._edges[index].p95()
            if p95 is None or now - sent <= p95 or not self._may_duplicate(request):
                continue
            backup = self._next(request, now, skip_busy=True)
            if backup is not None:
                actions.append(self._duplicate(request, backup, "hedge", now))
        return actions

    def _late(self, now: float) -> list[Action]:
        """Copies past their deadline. The edge becomes suspect (its RTO backs off, it takes nothing new until
        it answers), every copy it holds counts as late, and each request with no copy left in time fails
        over at once (the late copies stay: the first to arrive wins)."""
        actions: list[Action] = []
        for edge in self._edges:
            if edge.suspect or not any(now >= r.deadlines[edge.index] for r in edge.in_flight):
                continue
            edge.suspect = True
            edge.estimate.failed(now)
            for request in sorted(edge.in_flight, key=lambda r: (r.priority, r.seq)):
                request.late.add(edge.index)
                if len(request.copies) == len(request.late):
                    backup = self._next(request, now)
                    if backup is not None:  # a second copy (the late one may still come): counted, not bounded
                        self.duplicate_bytes += request.size
                        actions.append(self._send(request, backup, "late", now))
        return actions

    def next_wake(self, now: float) -> float | None:
        """When the caller should tick next without being told of anything: the earliest deadline or hedge
        time, or 50 ms while requests wait for room (or a hedge that is due waits for a backup with room, or
        for room in the duplicates' budget: asked again then, not at once, which would spin)."""
        times = [now + WAIT_FOR_ROOM] if self._unsent else []
        for request in self._in_flight:
            for index, sent in request.copies.items():
                edge = self._edges[index]
                if not edge.suspect:
                    times.append(request.deadlines[index])
                p95 = edge.p95()
                if p95 is not None and request.priority == Priority.FOREGROUND and not request.duplicated:
                    times.append(sent + p95 if sent + p95 > now else now + WAIT_FOR_ROOM)
        return min(times) if times else None

    # outcomes

    def _send(self, request: Request, edge: _Edge, why: str, now: float) -> Send:
        """Send a copy; it is late after the edge's RTO plus LATE_FACTOR times the time its bytes and those
        ahead of them should take."""
        ahead = request.ahead[edge.index] = edge.queued()
        expected = (ahead + request.size) / edge.rate(self._fallback_rate())
        request.deadlines[edge.index] = now + edge.estimate.rtt.rto + LATE_FACTOR * expected
        self._unsent.pop(request, None)
        self._in_flight.add(request)
        request.copies[edge.index] = now
        if request not in edge.in_flight:
            edge.in_flight.add(request)
            edge.flight += request.size
            edge.waiting += request.size if request.priority == Priority.FOREGROUND else 0
        self.sends[why] = self.sends.get(why, 0) + 1
        return Send(request, edge.key, why)

    def _drop(self, request: Request, index: int) -> None:
        request.copies.pop(index, None)
        request.deadlines.pop(index, None)
        request.ahead.pop(index, None)
        request.late.discard(index)
        edge = self._edges[index]
        if request in edge.in_flight:
            edge.in_flight.remove(request)
            edge.flight -= request.size
            edge.waiting -= request.size if request.priority == Priority.FOREGROUND else 0

    def started(self, request: Request, key: bytes, now: float) -> None:
        """The copy on ``key`` went out only now (it waited for a connection or a bandwidth limit): its
        response time and deadline count from here."""
        edge = self._by_key.get(key)
        if edge is None or edge.index not in request.copies:
            return
        waited = now - request.copies[edge.index]
        request.copies[edge.index] = now
        request.deadlines[edge.index] += waited

    def started_together(self, requests: Sequence[Request], key: bytes, now: float) -> None:
        """The copies of ``requests`` on ``key`` went out now in one request (GETS): they are answered together,
        so each is late only when the last of them would be."""
        for request in requests:
            self.started(request, key, now)
        edge = self._by_key.get(key)
        if edge is None:
            return
        deadlines = [r.deadlines[edge.index] for r in requests if edge.index in r.deadlines]
        for request in requests:
            if edge.index in request.deadlines:
                request.deadlines[edge.index] = max(deadlines)

    def answered(self, request: Request, key: bytes, now: float, size: int, *, fill: bool = True) -> list[Action]:
        """A copy arrived, ``size`` bytes. ``fill=False``: of an answer of many, the others told next; ``fill``
        after the last (what the answers made room for is sent once, not once per object)."""
        edge = self._by_key.get(key)
        if edge is None or edge.index not in request.copies:
            return []
        sent, ahead = request.copies[edge.index], request.ahead.get(edge.index, 0)
        self._drop(request, edge.index)
        edge.suspect = False
        # The response time (queue included) feeds the RTO and the p95; the throughput is the delivery rate:
        # the bytes over the time since the edge last answered or since this copy was sent, the later.
        edge.estimate.answered(now - sent, *edge.delivered(size, sent, now))
        rate = edge.rate(self._fallback_rate())
        edge.answered(now - sent, max(0.0, now - sent - (ahead + size) / rate))
        edge.bytes += size
        edge.moved(self._calendar(now)[0], size)
        actions: list[Action] = []
        if request.done:
            self.wasted_bytes += size
        else:
            request.done = True
            self._in_flight.discard(request)
            for index in list(request.copies):
                self._drop(request, index)
                actions.append(Cancel(request, self._edges[index].key))
        return actions + (self._fill(now) if fill else [])

    def fill(self, now: float) -> list[Action]:
        """Send what answers told with ``fill=False`` made room for."""
        return self._fill(now)

    def failed(
        self, request: Request, key: bytes, now: float, *, unreachable: bool = False, fill: bool = True
    ) -> list[Action]:
        """A copy failed: the edge lacks it, its copy is damaged, or the edge cannot be reached (its
        estimate counts that failure). The request fails over at once if no other copy is in flight.
        ``fill``: as for ``answered``."""
        edge = self._by_key.get(key)
        if edge is None or edge.index not in request.copies:
            return []
        self._drop(request, edge.index)
        request.tried.add(edge.index)
        if unreachable:
            edge.estimate.failed(now)
        actions: list[Action] = []
        if not request.done and not request.copies:
            rerouted = self._reroute(request, "failover", now)
            if rerouted is not None:
                actions.append(rerouted)
        return actions + (self._fill(now) if fill else [])

    def _reroute(self, request: Request, why: str, now: float) -> Action | None:
        """A request with no copy out and no plan to follow: to the usable edge not yet asked that would end
        it first, else once to an edge that was down. With none now, it is given up if every edge that might
        serve it failed it or is gone, and else waits, unsent, for one (an edge is suspect, or its limits
        hold the request's class back)."""
        other = self._next(request, now) or self._retry(request, now)
        if other is not None:
            return self._send(request, other, "retry" if now < other.down_until else why, now)
        self._in_flight.discard(request)
        if self._exhausted(request):
            self._unsent.pop(request, None)
            request.done = True
            return GiveUp(request)
        request.order = []  # planned afresh, without the edges that failed it, once one may be used
        self._unsent[request] = None
        return None

    def _next(self, request: Request, now: float, skip_busy: bool = False) -> _Edge | None:
        """The usable edge not yet asked that would end the request first: among its holders, else among the
        edges not known to hold it (the plan's backup order is stale once an edge fails)."""
        fallback = self._fallback_rate()
        for group in (request.holders, request.others):
            best: tuple[float, int] | None = None
            for index in group:
                edge = self._edges[index]
                if index in request.tried or index in request.copies or not self._usable(edge, request.priority, now):
                    continue
                if skip_busy and not self._room(edge, request.priority, fallback):
                    continue
                ends = self._finish(edge, request.size, fallback)
                if best is None or (ends, index) < best:
                    best = (ends, index)
            if best is not None:
                return self._edges[best[1]]
        return None

    def _retry(self, request: Request, now: float) -> _Edge | None:
        """An edge that is down and was never asked for this request: asked once more (it may be back)."""
        for index in itertools.chain(request.holders, request.others):
            edge = self._edges[index]
            if index in request.tried or index in request.copies or edge.gone or now >= edge.down_until:
                continue
            return edge
        return None

    def _exhausted(self, request: Request) -> bool:
        """Whether every edge that might serve the request failed it or is gone."""
        return all(i in request.tried or self._edges[i].gone for i in itertools.chain(request.holders, request.others))

    def _today(self, edge: _Edge, now: float) -> int:
        return edge.today(self._calendar(now)[0])

    def allows(self, key: bytes, priority: int, now: float) -> bool:
        """Whether the edge's limits let a request of ``priority`` use it now (up or not)."""
        edge = self._by_key.get(key)
        return edge is None or edge.limits.allows(priority, self._calendar(now)[1], self._today(edge, now))

    def day(self, now: float) -> int:
        return self._calendar(now)[0]

    def moved_here(self, day: int) -> dict[bytes, int]:
        """Bytes this process moved with each edge on ``day``."""
        return {edge.key: edge.own_today(day) for edge in self._edges}

    def elsewhere(self, key: bytes, day: int, size: int) -> None:
        """The device's other processes moved ``size`` bytes with the edge on ``day`` (its daily cap is shared)."""
        edge = self._by_key.get(key)
        if edge is not None:
            edge.others = (day, size)

    def capped(self) -> bool:
        """Whether any edge has a daily cap."""
        return any(edge.limits.daily_cap is not None for edge in self._edges)

    def counted(self, key: bytes, size: int, now: float) -> None:
        """``size`` more bytes moved with the edge today (an upload: they count toward its daily cap too)."""
        edge = self._by_key.get(key)
        if edge is not None:
            edge.moved(self._calendar(now)[0], size)

    def statistics(self) -> dict[str, Any]:
        """Figures for a person: what is left (requests, bytes), the rate the edges now deliver at (the sum of
        the estimates of those with copies in flight), the seconds left at that rate, and per edge its bytes
        and estimated rate."""
        left = sum(r.size for r in self._unsent) + sum(r.size for r in self._in_flight)
        rate = sum(e.rate(self._fallback_rate()) for e in self._edges if e.in_flight)
        return {
            "pending_requests": len(self._unsent) + len(self._in_flight),
            "pending_bytes": left,
            "bytes_per_second": rate,
            "eta_seconds": left / rate if rate and left else None,
            "asked_bytes": self.asked_bytes,
            "duplicate_bytes": self.duplicate_bytes,
            "wasted_bytes": self.wasted_bytes,
            "sends": dict(self.sends),
            "edges": {
                e.key: {"bytes": e.bytes, "bytes_per_second": e.estimate.throughput.bytes_per_second}
                for e in self._edges
            },
        }
