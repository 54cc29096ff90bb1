"""kernels/*.cu against the NumPy plan (portalfs/sched/plan.py): each kernel's own source, compiled with g++
against kernels/cpu.h and run on the CPU over several launch shapes; compiled with nvcc for sm_80 and sm_90
without register spills; and run with CuPy where a GPU is. Every comparison is bit for bit."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from portalfs.sched.gpu import KERNELS, kernel_dir
from portalfs.sched.plan import ChunkArrays, EdgeArrays, NumpyBackend, plan, rank_then_assign, shares

SHAPES = [(1, 1), (1, 32), (3, 7), (5, 64), (64, 256)]  # (grid, block): fewer threads than chunks, and more


def inputs(seed: int, n: int, r: int, e: int, ties: bool) -> tuple[ChunkArrays, EdgeArrays]:
    """Random chunks and edges; with ``ties``, few distinct costs, shares and sizes, so that ties decide."""
    rng = np.random.default_rng(seed)
    cand = np.full((n, r), -1, np.int32)
    for i in range(n):
        k = int(rng.integers(0, r + 1))
        cand[i, :k] = rng.choice(e, size=k, replace=False)
        rng.shuffle(cand[i])
    if ties:
        size = rng.choice(np.array([1 << 20, 1 << 18], np.uint32), n)
        ready = rng.choice(np.array([0.0, 0.02, 0.5], np.float32), e)
        inv_rate = rng.choice(np.array([1e-8, 2e-8], np.float32), e)
    else:
        size = rng.integers(1, 4 << 20, n, dtype=np.uint32)
        ready = rng.uniform(0, 2, e).astype(np.float32)
        inv_rate = (1 / rng.uniform(1e6, 1e9, e)).astype(np.float32)
    usable = (rng.random(e) < 0.85).astype(np.uint8)
    seq = rng.integers(0, 1 << 32, n, dtype=np.uint32) if not ties else np.arange(n, dtype=np.uint32)
    return ChunkArrays(cand, size, seq), EdgeArrays.of(ready, inv_rate, usable)


CASES = [
    (seed, n, r, e, ties)
    for seed, (n, r, e) in enumerate([(1, 1, 1), (97, 3, 5), (700, 8, 100)])
    for ties in (False, True)
]


@pytest.fixture(scope="module")
def cpu_kernels(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed: the kernels' sources cannot be run on the CPU here")
    out = tmp_path_factory.mktemp("kernels")
    source = kernel_dir()
    flags = ["-O2", "-std=c++17", "-ffp-contract=off", "-Wall", "-Werror", "-Wno-unknown-pragmas", "-fPIC"]
    objects = []
    for name in KERNELS:  # each kernel file its own translation unit, as with nvcc
        obj = out / f"{name}.o"
        cmd = [gxx, *flags, "-c", "-x", "c++", "-include", str(source / "cpu.h"), str(source / name), "-o", str(obj)]
        subprocess.run(cmd, check=True)
        objects.append(str(obj))
    host = out / "host.o"
    subprocess.run([gxx, *flags, "-c", str(source / "host.cpp"), "-o", str(host)], check=True)
    library = out / "kernels.so"
    subprocess.run([gxx, "-shared", *objects, str(host), "-o", str(library)], check=True)
    return ctypes.CDLL(str(library))


def ptr(a: np.ndarray[Any, Any]) -> ctypes.c_void_p:
    assert a.flags.c_contiguous
    return ctypes.c_void_p(a.ctypes.data)


class CpuBackend(NumpyBackend):
    """The kernels' own source, run by kernels/host.cpp's launch loop, with one launch shape."""

    name = "cpu-kernels"

    def __init__(self, lib: ctypes.CDLL, grid: int, block: int) -> None:
        self.lib, self.grid, self.block = lib, grid, block

    def rank(self, chunks: ChunkArrays, edges: EdgeArrays, choices: int) -> tuple[Any, Any]:
        n, r = chunks.cand.shape
        choice = np.full((n, choices), 7, np.int32)  # garbage a kernel must overwrite
        best = np.full(n, 7, np.float32)
        self.lib.launch_rank_chunks(
            self.grid, self.block, ptr(chunks.cand), ptr(chunks.size), ptr(edges.ready), ptr(edges.inv_rate),
            ptr(edges.usable), n, r, choices, ptr(choice), ptr(best),
        )  # fmt: skip
        return choice, best

    def assign(self, chunks: ChunkArrays, edges: EdgeArrays, weight: Any, choice: Any) -> Any:
        n, r = chunks.cand.shape
        k1 = choice.shape[1]
        order = np.full((n, k1), 7, np.int32)
        self.lib.launch_assign_chunks(
            self.grid, self.block, ptr(chunks.cand), ptr(edges.usable), ptr(np.ascontiguousarray(weight)),
            ptr(chunks.seq), ptr(choice), n, r, k1, ptr(order),
        )  # fmt: skip
        return order

    def rank_assign(self, chunks: ChunkArrays, edges: EdgeArrays, weight: Any, choices: int) -> tuple[Any, Any]:
        return rank_then_assign(self, chunks, edges, weight, choices)  # the kernels, not NumPy's fused pass

    def edge_bytes(self, order: Any, size: Any, edges: int) -> Any:
        got = np.zeros(edges, np.uint64)
        self.lib.launch_edge_bytes(
            self.grid, self.block, ptr(order), ptr(size), order.shape[0], order.shape[1], ptr(got)
        )
        return got


def same(a: Any, b: Any) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()  # bit for bit (float costs too)


def compare(backend: Any, chunks: ChunkArrays, edges: EdgeArrays, choices: int, to: Any = None) -> None:
    reference = plan(NumpyBackend(), chunks, edges, choices)
    if to is not None:  # the device's own memory
        chunks = ChunkArrays(to(chunks.cand), to(chunks.size), to(chunks.seq))
    got = plan(backend, chunks, edges, choices)
    tohost = backend.tohost
    same(tohost(got.order), reference.order)
    same(tohost(got.best), reference.best)
    same(got.weight, reference.weight)
    same(got.bytes, reference.bytes)


@pytest.mark.parametrize("grid,block", SHAPES)
@pytest.mark.parametrize("seed,n,r,e,ties", CASES)
def test_kernels_on_the_cpu_match_numpy(
    cpu_kernels: ctypes.CDLL, grid: int, block: int, seed: int, n: int, r: int, e: int, ties: bool
) -> None:
    chunks, edges = inputs(seed, n, r, e, ties)
    for choices in (1, 3, 4):
        compare(CpuBackend(cpu_kernels, grid, block), chunks, edges, choices)


def test_numpy_plan_is_what_the_rules_say() -> None:
    """The reference itself, checked against the rules written out by hand for one small case."""
    cand = np.array([[0, 1, 2], [2, 1, -1], [-1, -1, -1], [3, 0, -1]], np.int32)
    size = np.array([1000, 1000, 1000, 1000], np.uint32)
    edges = EdgeArrays.of([0.5, 0.0, 0.0, 0.1], [1e-3, 1e-3, 2e-3, 1e-3], [1, 1, 1, 0])
    choice, best = NumpyBackend().rank(ChunkArrays(cand, size, np.arange(4, dtype=np.uint32)), edges, 3)
    # costs: edge 0: 1.5, edge 1: 1.0, edge 2: 2.0, edge 3 unusable
    assert choice.tolist() == [[1, 0, 2], [1, 2, -1], [-1, -1, -1], [0, -1, -1]]
    assert best.tolist() == [1.0, 1.0, np.inf, 1.5]


def test_a_tie_goes_to_the_lower_edge() -> None:
    cand = np.array([[5, 3, 4]], np.int32)
    edges = EdgeArrays.of([0.25] * 6, [1e-6] * 6, [1] * 6)
    choice, _ = NumpyBackend().rank(ChunkArrays(cand, np.array([4096], np.uint32), np.zeros(1, np.uint32)), edges, 3)
    assert choice.tolist() == [[3, 4, 5]]


def test_numpy_in_blocks_on_threads_plans_what_one_pass_does() -> None:
    """Blocks on several threads, each in scratch arrays kept from tick to tick (and grown, and reused at
    other shapes), give the bits that one block on one thread gives."""

    class Blocked(NumpyBackend):
        BLOCK, SMALLEST = 256, 64

    blocked, whole = Blocked(threads=3), NumpyBackend(threads=1)
    for seed, n, r, e, ties in [(11, 2000, 8, 100, False), (12, 1100, 3, 5, True), (13, 2000, 8, 100, True)]:
        chunks, edges = inputs(seed, n, r, e, ties)
        for choices in (1, 3, 4):
            assert -(-n // blocked.BLOCK) > blocked.threads  # several blocks per thread
            got, reference = plan(blocked, chunks, edges, choices), plan(whole, chunks, edges, choices)
            same(got.order, reference.order)
            same(got.best, reference.best)
            same(got.bytes, reference.bytes)
            again = rank_then_assign(blocked, chunks, edges, got.weight, choices)
            same(again[0], reference.order)


def test_shares_put_one_request_where_it_ends_first_and_many_in_proportion() -> None:
    # ready 20 ms each; 100, 60 and 20 MB/s
    edges = EdgeArrays.of([0.02, 0.02, 0.02], [1e-8, 1 / 6e7, 5e-8], [1, 1, 1])
    assert shares(edges, 1, 1 << 20).tolist() == [1, 0, 0]
    many = shares(edges, 1800, 1 << 20)
    assert many.sum() == 1800
    assert np.allclose(many / 1800, [100 / 180, 60 / 180, 20 / 180], atol=0.01)
    # an edge with a long queue takes none of a short burst; an unusable one never
    busy = EdgeArrays.of([5.0, 0.02, 0.02], [1e-8, 1 / 6e7, 5e-8], [1, 1, 0])
    assert shares(busy, 10, 1 << 20).tolist() == [0, 10, 0]


def test_primaries_follow_the_shares() -> None:
    """Every chunk on every edge: the primaries split in the shares' proportion, evenly interleaved."""
    n = 1000
    cand = np.tile(np.arange(3, dtype=np.int32), (n, 1))
    chunks = ChunkArrays(cand, np.full(n, 1 << 20, np.uint32), np.arange(n, dtype=np.uint32))
    edges = EdgeArrays.of([0.02] * 3, [1e-8, 2e-8, 4e-8], [1, 1, 1])
    tick = plan(NumpyBackend(), chunks, edges)
    counts = np.bincount(tick.order[:, 0], minlength=3)
    assert np.abs(counts - tick.weight).max() <= 2, (counts, tick.weight)
    first = np.bincount(tick.order[:70, 0], minlength=3)  # any stretch is in proportion, not only the whole
    assert np.abs(first - 70 * tick.weight / n).max() <= 2, first


def ptxas_report(nvcc: str, source: Path, arch: str, tmp: Path) -> str:
    cmd = [nvcc, f"-arch={arch}", "-std=c++17", "-Xptxas", "-v", "-c", str(source), "-o", str(tmp / f"{arch}.o")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", KERNELS)
def test_kernels_compile_with_nvcc_without_spills(name: str, arch: str, tmp_path: Path) -> None:
    nvcc = shutil.which("nvcc") or next((p for p in Path("/usr/local").glob("cuda*/bin/nvcc")), None)
    if nvcc is None:
        pytest.skip("nvcc is not installed here: the CUDA kernels were not compiled (they still ran on the CPU)")
    report = ptxas_report(str(nvcc), kernel_dir() / name, arch, tmp_path)
    functions = re.findall(r"Compiling entry function '(\w+)'", report)
    assert functions, report
    spills = [int(b) for b in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
    assert spills and not any(spills), f"{name} spills registers on {arch}:\n{report}"


def cupy_or_skip() -> Any:
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no device")
    except Exception as exc:  # noqa: BLE001 - any reason there is no GPU here
        pytest.skip(f"no GPU with CuPy here ({type(exc).__name__}): the CuPy backend was not run")
    return cupy


@pytest.mark.parametrize("seed,n,r,e,ties", CASES + [(9, 200_000, 8, 100, False), (10, 200_000, 8, 100, True)])
def test_cupy_matches_numpy(seed: int, n: int, r: int, e: int, ties: bool) -> None:
    cp = cupy_or_skip()
    from portalfs.sched.gpu import CupyBackend

    backend = CupyBackend()
    chunks, edges = inputs(seed, n, r, e, ties) if n < 10_000 else fast_inputs(seed, n, r, e, ties)
    for choices in (1, 3, 4):
        compare(backend, chunks, edges, choices, to=cp.asarray)


def fast_inputs(seed: int, n: int, r: int, e: int, ties: bool) -> tuple[ChunkArrays, EdgeArrays]:
    """Like ``inputs``, vectorized for large n: r distinct edges per chunk, some rows cut short."""
    rng = np.random.default_rng(seed)
    cand = np.argsort(rng.random((n, e)), axis=1)[:, :r].astype(np.int32)
    cand[rng.random((n, r)) < 0.1] = -1
    _, edges = inputs(seed, 1, 1, e, ties)
    size = rng.choice(np.array([1 << 20, 1 << 18], np.uint32), n) if ties else rng.integers(1, 4 << 20, n, np.uint32)
    seq = np.arange(n, dtype=np.uint32) if ties else rng.integers(0, 1 << 32, n, dtype=np.uint32)
    return ChunkArrays(cand, size, seq), edges
