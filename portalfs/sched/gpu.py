"""The scheduler's plan on a GPU: the CUDA kernels of kernels/*.cu through CuPy ``RawModule``, with the same
API and the same results as ``plan.NumpyBackend``. CuPy is optional (``pip install 'portalfs[gpu]'``);
``choose`` uses it only where it imports and sees a device, and logs which backend it took and why."""

from __future__ import annotations

import logging
import os
import sys
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from .plan import MAX_CHOICES, Array, Backend, ChunkArrays, EdgeArrays, NumpyBackend, rank_then_assign

__all__ = ["CupyBackend", "choose", "kernel_dir", "KERNELS"]

log = logging.getLogger("portal.sched")

KERNELS = ("rank.cu", "assign.cu")
BLOCK = 256


def kernel_dir() -> Path:
    """Where kernels/*.cu are: $PORTAL_KERNELS, the source tree this package sits in, or an installed copy."""
    here = Path(__file__).resolve().parents[2] / "kernels"
    for place in (os.environ.get("PORTAL_KERNELS"), here, Path(sys.prefix) / "share" / "portal" / "kernels"):
        if place and all((Path(place) / name).is_file() for name in KERNELS):
            return Path(place)
    raise FileNotFoundError(f"the CUDA sources ({', '.join(KERNELS)}) are not in {here} nor under {sys.prefix}")


def source() -> str:
    directory = kernel_dir()
    return "\n".join((directory / name).read_text() for name in KERNELS)


class CupyBackend:
    """Chunk arrays live in GPU memory between ticks; a tick sends the few edge arrays and the shares, and
    brings back only the bytes per edge."""

    name = "cupy"

    def __init__(self) -> None:
        import cupy  # noqa: PLC0415 - optional: only where a GPU is

        self.cp = cupy
        module = cupy.RawModule(code=source(), options=("-std=c++17", f"-DPORTAL_MAX_CHOICES={MAX_CHOICES}"))
        self._rank = module.get_function("rank_chunks")
        self._assign = module.get_function("assign_chunks")
        self._bytes = module.get_function("edge_bytes")
        self._grid_cap = cupy.cuda.Device().attributes["MultiProcessorCount"] * 16

    def _grid(self, n: int) -> tuple[int]:
        return (max(1, min((n + BLOCK - 1) // BLOCK, self._grid_cap)),)

    def asarray(self, a: Array) -> Any:
        return self.cp.ascontiguousarray(self.cp.asarray(a))

    def tohost(self, a: Any) -> Array:
        return np.asarray(self.cp.asnumpy(a))

    def _edges(self, edges: EdgeArrays) -> tuple[Any, Any, Any]:
        cp = self.cp
        return cp.asarray(edges.ready), cp.asarray(edges.inv_rate), cp.asarray(edges.usable)

    def rank(self, chunks: ChunkArrays, edges: EdgeArrays, choices: int) -> tuple[Any, Any]:
        cp = self.cp
        n, r = chunks.cand.shape
        ready, inv_rate, usable = self._edges(edges)
        choice = cp.empty((n, choices), cp.int32)
        best = cp.empty(n, cp.float32)
        if n:
            args = (chunks.cand, chunks.size, ready, inv_rate, usable, np.int32(n), np.int32(r), np.int32(choices))
            self._rank(self._grid(n), (BLOCK,), (*args, choice, best))
        return choice, best

    def assign(self, chunks: ChunkArrays, edges: EdgeArrays, weight: Array, choice: Any) -> Any:
        cp = self.cp
        n, r = chunks.cand.shape
        k1 = choice.shape[1]
        usable = cp.asarray(edges.usable)
        order = cp.empty((n, k1), cp.int32)
        if n:
            args = (chunks.cand, usable, cp.asarray(weight), chunks.seq, choice, np.int32(n), np.int32(r))
            self._assign(self._grid(n), (BLOCK,), (*args, np.int32(k1), order))
        return order

    def rank_assign(self, chunks: ChunkArrays, edges: EdgeArrays, weight: Array, choices: int) -> tuple[Any, Any]:
        return rank_then_assign(self, chunks, edges, weight, choices)

    def edge_bytes(self, order: Any, size: Any, edges: int) -> Array:
        cp = self.cp
        got = cp.zeros(edges, cp.uint64)
        n = int(order.shape[0])
        if n:
            self._bytes(self._grid(n), (BLOCK,), (order, size, np.int32(n), np.int32(order.shape[1]), got))
        return self.tohost(got)


@cache
def choose(prefer: str = "auto") -> Backend:
    """The backend a process plans with: ``numpy``, ``cupy``, or ``auto`` (CuPy where it imports, compiles
    the kernels and sees a GPU; else NumPy). The choice is logged once."""
    if prefer not in ("auto", "numpy", "cupy"):
        raise ValueError(f"scheduler backend must be auto, numpy or cupy, not {prefer!r}")
    if prefer != "numpy":
        try:
            backend = CupyBackend()
        except Exception as exc:  # noqa: BLE001 - no CuPy, no GPU, no driver, no kernels: each means NumPy
            if prefer == "cupy":
                raise RuntimeError(f"the CuPy scheduler backend cannot start: {exc}") from exc
            log.info("scheduler: NumPy (no GPU backend: %s)", str(exc).splitlines()[0] if str(exc) else repr(exc))
        else:
            log.info("scheduler: CuPy on %s", backend.cp.cuda.runtime.getDeviceProperties(0)["name"].decode())
            return backend
    else:
        log.info("scheduler: NumPy (asked for)")
    return NumpyBackend()
