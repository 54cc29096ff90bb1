"""One tick of the chunk scheduler's plan over struct-of-arrays state (docs/design.md, section 14, "The chunk
scheduler"), with NumPy; ``gpu.py`` gives the same steps as CUDA kernels (kernels/*.cu), bit for bit.

A tick plans one priority class at a time, the most urgent first:

1. ``shares``: per edge, how many of the class's requests it should take so that every edge finishes as
   early as it can (earliest-finish-time water filling over the edges' ready times and rates; host, tiny).
2. ``rank``: the cost matrix, chunk x candidate edge: ready + size / rate (seconds), and per chunk its
   ``choices`` best edges by cost, ties to the lower edge index.
3. ``assign``: each chunk's primary edge among its candidates in proportion to their shares, by a
   low-discrepancy point of its sequence number; the choices without it are its backups, in order.
4. ``edge_bytes``: the bytes each edge got, which move its ready time on for the next class.

Arrays: ``cand`` int32 (n, r), edge indices, -1 for none; ``size`` uint32 (n,); ``seq`` uint32 (n,);
per edge ``ready`` and ``inv_rate`` float32, ``usable`` uint8, ``weight`` uint32.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "Backend",
    "NumpyBackend",
    "ChunkArrays",
    "EdgeArrays",
    "Tick",
    "shares",
    "plan",
    "rank_then_assign",
    "MAX_CHOICES",
]

MAX_CHOICES = 4  # a primary and up to three backups per chunk (PORTAL_MAX_CHOICES in kernels/rank.cu)
GOLDEN = np.uint32(0x9E3779B9)  # the golden ratio in 32-bit fixed point (kernels/assign.cu)
WEIGHT_LIMIT = 1 << 24  # shares are scaled below this, so that x * total stays within 64 bits
MAX_READY = np.float32(1e9)  # seconds
MAX_INV_RATE = np.float32(1e6)  # seconds per byte
NO_KEY = np.uint64(0xFFFFFFFFFFFFFFFF)
INFINITE_KEY = np.uint64(0x7F800000 << 32)  # keys from here on have an infinite cost: no choice

Array = npt.NDArray[Any]


@dataclass(slots=True)
class ChunkArrays:
    """Pending requests of one priority class, in their backend's memory (NumPy, or CuPy on the GPU)."""

    cand: Any  # int32 (n, r)
    size: Any  # uint32 (n,)
    seq: Any  # uint32 (n,)

    @property
    def n(self) -> int:
        return int(self.cand.shape[0])


@dataclass(slots=True)
class EdgeArrays:
    """What the plan knows of each edge, on the host: seconds until it could start a new request (round trip
    and queue), seconds per byte, and whether this class may use it (up, and its constraints allow)."""

    ready: Array  # float32 (e,)
    inv_rate: Array  # float32 (e,)
    usable: Array  # uint8 (e,)

    @classmethod
    def of(cls, ready: Any, inv_rate: Any, usable: Any) -> EdgeArrays:
        # Bounded, so that every cost (ready + size * inv_rate, size < 2^32) is finite.
        return cls(
            np.clip(np.asarray(ready, np.float32), 0, MAX_READY),
            np.clip(np.asarray(inv_rate, np.float32), 0, MAX_INV_RATE),
            np.asarray(usable, np.uint8).copy(),
        )

    @property
    def e(self) -> int:
        return int(self.ready.shape[0])


@dataclass(slots=True)
class Tick:
    """A tick's plan of one class: ``order`` (n, choices) int32, the primary then backups (-1: none), in the
    backend's memory; ``best`` float32 (n,), the fastest cost; ``weight``, the shares; ``bytes`` per edge."""

    order: Any
    best: Any
    weight: Array
    bytes: Array


class Backend(Protocol):
    name: str

    def asarray(self, a: Array) -> Any: ...

    def tohost(self, a: Any) -> Array: ...

    def rank(self, chunks: ChunkArrays, edges: EdgeArrays, choices: int) -> tuple[Any, Any]: ...

    def assign(self, chunks: ChunkArrays, edges: EdgeArrays, weight: Array, choice: Any) -> Any: ...

    def rank_assign(self, chunks: ChunkArrays, edges: EdgeArrays, weight: Array, choices: int) -> tuple[Any, Any]:
        """(``assign``'s order, ``rank``'s best) of one class."""
        ...

    def edge_bytes(self, order: Any, size: Any, edges: int) -> Array: ...


def shares(edges: EdgeArrays, count: int, mean_size: float) -> Array:
    """How many of ``count`` requests of ``mean_size`` bytes each edge should take so that the last one
    finishes as early as it can: edge e's k-th request would end at ready[e] + k * size * inv_rate[e]; the
    ``count`` earliest of those ends, found by water filling (the fluid level, then whole requests, the rest
    one each to the edges whose next one ends first). One request goes to the edge that ends it first."""
    e = edges.e
    weight = np.zeros(e, np.int64)
    live = np.flatnonzero(edges.usable != 0)
    if count <= 0 or live.size == 0:
        return weight.astype(np.uint32)
    ready = edges.ready[live].astype(np.float64)
    slot = np.maximum(edges.inv_rate[live].astype(np.float64) * max(mean_size, 1.0), 1e-12)
    by_ready = np.argsort(ready, kind="stable")
    r, s = ready[by_ready], slot[by_ready]
    # With the m earliest edges active, the level T solves sum((T - r) / s) = count.
    level = (count + np.cumsum(r / s)) / np.cumsum(1.0 / s)
    nxt = np.append(r[1:], np.inf)
    m = int(np.argmax(level <= nxt))  # the first m whose level stays below the next edge's ready time
    whole = np.floor(np.maximum(level[m] - ready, 0.0) / slot).astype(np.int64)
    while whole.sum() > count:  # rounding: take back from the edges whose last request ends last
        last = ready + whole * slot
        whole[int(np.argmax(np.where(whole > 0, last, -np.inf)))] -= 1
    rest = count - int(whole.sum())
    while rest > 0:
        ends = ready + (whole + 1) * slot
        take = np.argsort(ends, kind="stable")[:rest]
        whole[take] += 1
        rest -= take.size
    weight[live] = whole
    top = int(weight.max())
    if top >= WEIGHT_LIMIT:
        scaled = weight * (WEIGHT_LIMIT - 1) // top
        weight = np.where(weight > 0, np.maximum(scaled, 1), 0)
    return weight.astype(np.uint32)


def plan(backend: Backend, chunks: ChunkArrays, edges: EdgeArrays, choices: int = 3) -> Tick:
    """Plan one class; ``edges.ready`` is not changed (``advance`` moves it on for the next class)."""
    if not 1 <= choices <= MAX_CHOICES:
        raise ValueError(f"choices must be 1 to {MAX_CHOICES}, not {choices}")
    total = int(backend.tohost(chunks.size.sum())) if chunks.n else 0
    weight = shares(edges, chunks.n, total / chunks.n if chunks.n else 0.0)
    order, best = backend.rank_assign(chunks, edges, weight, choices)
    return Tick(order, best, weight, backend.edge_bytes(order, chunks.size, edges.e))


def rank_then_assign(
    backend: Backend, chunks: ChunkArrays, edges: EdgeArrays, weight: Array, choices: int
) -> tuple[Any, Any]:
    """``rank_assign`` as two steps, each over every chunk (the kernels: one launch each)."""
    choice, best = backend.rank(chunks, edges, choices)
    return backend.assign(chunks, edges, weight, choice), best


def advance(edges: EdgeArrays, tick: Tick) -> EdgeArrays:
    """The edges as the next class sees them: each one's ready time moved on by the bytes this class gave it."""
    ready = (edges.ready.astype(np.float64) + tick.bytes.astype(np.float64) * edges.inv_rate).astype(np.float32)
    return EdgeArrays(ready, edges.inv_rate, edges.usable)


class NumpyBackend:
    """The reference, and the default: the same arithmetic as kernels/*.cu, in the same order, over blocks of
    BLOCK chunks (a block's columns stay in the CPU's cache) on up to ``threads`` threads (NumPy lets go of
    the GIL inside each operation). Each thread works in its own scratch arrays, kept from tick to tick: a
    tick that allocated them afresh spent as long in page faults as in arithmetic (the allocator hands
    arrays of this size back to the kernel when they are freed). So a backend plans one tick at a time."""

    name = "numpy"
    BLOCK = 16384
    SMALLEST = 12288  # a block smaller than this costs more in thread hand-offs than it saves (measured)

    def __init__(self, threads: int | None = None) -> None:
        self.threads = max(1, min(threads or os.cpu_count() or 1, 4))  # more measured slower (hand-offs)
        self._pool: ThreadPoolExecutor | None = None
        self._scratch = [_Scratch() for _ in range(self.threads)]

    def _blocks(self, n: int, work: Callable[[slice, _Scratch], None]) -> None:
        size = min(self.BLOCK, max(self.SMALLEST, -(-n // self.threads)))  # every thread busy, even on a small n
        blocks = [slice(i, min(i + size, n)) for i in range(0, n, size)]
        if len(blocks) < 2 or self.threads < 2:
            for block in blocks:
                work(block, self._scratch[0])
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="plan")

        def run(portion: list[slice], scratch: _Scratch) -> None:
            for block in portion:
                work(block, scratch)

        # A portion of the blocks for each thread, the calling thread's among them: a hand-off fewer to wait for.
        portions = [blocks[i :: self.threads] for i in range(self.threads)]
        others = [
            self._pool.submit(run, portion, scratch)
            for portion, scratch in zip(portions[1:], self._scratch[1:], strict=True)
            if portion
        ]
        run(portions[0], self._scratch[0])
        for done in others:
            done.result()

    def asarray(self, a: Array) -> Array:
        return np.ascontiguousarray(a)

    def tohost(self, a: Any) -> Array:
        return np.asarray(a)

    def rank(self, chunks: ChunkArrays, edges: EdgeArrays, choices: int) -> tuple[Array, Array]:
        choice, best = np.empty((chunks.n, choices), np.int32), np.empty(chunks.n, np.float32)
        costs = _Costs(edges)

        def work(rows: slice, scratch: _Scratch) -> None:
            _rank(chunks, costs, rows, _columns(chunks, rows, scratch), choice, best, scratch)

        self._blocks(chunks.n, work)
        return choice, best

    def assign(self, chunks: ChunkArrays, edges: EdgeArrays, weight: Array, choice: Array) -> Array:
        order = np.empty(choice.shape, np.int32)
        share = _share(edges, weight)

        def work(rows: slice, scratch: _Scratch) -> None:
            _assign(chunks, share, rows, _columns(chunks, rows, scratch), choice, order, scratch)

        self._blocks(chunks.n, work)
        return order

    def rank_assign(self, chunks: ChunkArrays, edges: EdgeArrays, weight: Array, choices: int) -> tuple[Array, Array]:
        """``rank``, then ``assign``, a block at a time: one hand-off to the threads, not two, and each block's
        candidates read once."""
        choice, best = np.empty((chunks.n, choices), np.int32), np.empty(chunks.n, np.float32)
        order = np.empty((chunks.n, choices), np.int32)
        costs, share = _Costs(edges), _share(edges, weight)

        def work(rows: slice, scratch: _Scratch) -> None:
            cand = _columns(chunks, rows, scratch)
            _rank(chunks, costs, rows, cand, choice, best, scratch)
            _assign(chunks, share, rows, cand, choice, order, scratch)

        self._blocks(chunks.n, work)
        return order, best

    def edge_bytes(self, order: Array, size: Array, edges: int) -> Array:
        primary = order[:, 0]
        mine = primary >= 0
        got = np.bincount(primary[mine], weights=size[mine].astype(np.float64), minlength=edges)
        return got.astype(np.uint64)


class _Scratch:
    """One thread's working arrays, by name, kept between blocks and ticks and grown when a block needs more."""

    def __init__(self) -> None:
        self._arrays: dict[str, Array] = {}

    def __call__(self, name: str, shape: tuple[int, ...], dtype: Any) -> Array:
        count = math.prod(shape)
        array = self._arrays.get(name)
        if array is None or array.size < count:
            array = self._arrays[name] = np.empty(count, dtype)
        return array[:count].reshape(shape)


def _columns(chunks: ChunkArrays, rows: slice, scratch: _Scratch) -> Array:
    """The candidates of a block of chunks, one row per candidate (each a contiguous column of the block)."""
    block = chunks.cand[rows]
    cand = scratch("cand", block.shape[::-1], np.int32)
    np.copyto(cand, block.T)
    return cand


class _Costs:
    """Per edge, ready time and seconds per byte, with a sentinel edge appended for index -1 (no candidate):
    an unusable edge's cost, and the sentinel's, is infinite, and a key whose cost is infinite is no choice."""

    def __init__(self, edges: EdgeArrays) -> None:
        usable = np.append(edges.usable != 0, False)
        self.ready = np.where(usable, np.append(edges.ready, np.float32(0)), np.float32(np.inf)).astype(np.float32)
        self.inv_rate = np.where(usable, np.append(edges.inv_rate, np.float32(0)), np.float32(0)).astype(np.float32)


def _share(edges: EdgeArrays, weight: Array) -> Array:
    return np.append(np.where(edges.usable != 0, weight, 0), 0).astype(np.uint32)  # sentinel: no share


def _rank(
    chunks: ChunkArrays, costs: _Costs, rows: slice, cand: Array, choice: Array, best: Array, scratch: _Scratch
) -> None:
    """kernels/rank.cu over one block: the cost of each candidate, and the ``choice.shape[1]`` best keys."""
    choices, (r, b) = choice.shape[1], cand.shape
    # Index -1 (no candidate) is the sentinel, the last entry: "wrap" reads it so, and skips the bounds check.
    cost = np.take(costs.ready, cand, mode="wrap", out=scratch("cost", (r, b), np.float32))
    slope = np.take(costs.inv_rate, cand, mode="wrap", out=scratch("slope", (r, b), np.float32))
    slope *= chunks.size[rows].astype(np.float32)  # float32, each operation rounded on its own
    cost += slope
    # The key: the cost's bits (non-negative floats order as their bits do) above the edge index.
    key = np.left_shift(cost.view(np.uint32), np.uint64(32), out=scratch("key", (r, b), np.uint64))
    key |= cand.view(np.uint32)
    top = scratch("top", (choices, b), np.uint64)
    top.fill(NO_KEY)
    carry = scratch("carry", (b,), np.uint64)
    for j, k in enumerate(key):  # the kernel's insertion: keep the smaller, carry the larger on
        for t in range(min(choices, j + 1)):  # (below row j, top holds no key yet)
            if t + 1 < choices:
                np.maximum(k, top[t], out=carry)
            np.minimum(k, top[t], out=top[t])
            k, carry = carry, k
    found = top < INFINITE_KEY
    choice[rows] = np.where(found, (top & np.uint64(0xFFFFFFFF)).astype(np.int32), -1).T
    best[rows] = (top[0] >> np.uint64(32)).astype(np.uint32).view(np.float32)


def _assign(
    chunks: ChunkArrays, share: Array, rows: slice, cand: Array, choice: Array, order: Array, scratch: _Scratch
) -> None:
    """kernels/assign.cu over one block: the primary among the candidates by their shares, then the backups."""
    k1, (r, b) = choice.shape[1], cand.shape
    mine = choice[rows]
    if r == 0:
        order[rows] = mine
        return
    running = np.take(share, cand, mode="wrap", out=scratch("running", (r, b), np.uint32))
    for j in range(1, r):  # shares are below 2^24: sums of up to 255 fit in 32 bits
        running[j] += running[j - 1]
    total = running[-1].astype(np.uint64)
    x = (chunks.seq[rows] * GOLDEN).astype(np.uint64)  # uint32 arithmetic wraps, as in the kernel
    target = (x * total) >> np.uint64(32)
    # The first candidate whose running sum passes the target: the sums only grow, so it is the count of
    # those that do not.
    passed = np.less_equal(running, target, out=scratch("passed", (r, b), np.bool_))
    first = np.minimum(passed.sum(axis=0), r - 1)
    picked = cand.ravel()[first * b + np.arange(b)]
    primary = np.where(total > 0, picked, mine[:, 0])
    out = order[rows]
    out[:, 0] = primary
    # The backups: choice without the primary, in order (-1 entries are never the primary of a chunk that has
    # one, and a chunk without one has only -1 entries).
    skip = np.full(primary.shape, k1)
    for t in range(k1 - 1, -1, -1):
        skip[mine[:, t] == primary] = t
    for t in range(k1 - 1):
        out[:, t + 1] = np.where(t < skip, mine[:, t], mine[:, t + 1])
