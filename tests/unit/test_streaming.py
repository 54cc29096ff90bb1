"""Sealing a file while it is written (portalfs/worktree/streaming.py): the refs are those of the whole file."""

from __future__ import annotations

import io
import os
import random
import threading
import time
from pathlib import Path

import pytest

from portalfs import chunking
from portalfs.chunking import CDC_MAX, cdc_cut_points
from portalfs.pipeline import ChunkPipeline
from portalfs.store import MemoryStore
from portalfs.worktree import streaming
from portalfs.worktree.streaming import StreamingSeal

SECRET = bytes(range(32))


def _whole(data: bytes) -> list[bytes]:
    with ChunkPipeline(MemoryStore(), SECRET) as pipeline:
        return [future.result().cid for future in list(pipeline.seal_stream(io.BytesIO(data)))]


@pytest.mark.parametrize("window", [CDC_MAX + 1, 3 * CDC_MAX])
def test_a_file_sealed_as_it_grows_has_the_chunks_of_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    """The writer appends in uneven pieces and says how far the file has grown; the sealer waits for the
    bytes it reads (a read past what was written would cut the file short)."""
    monkeypatch.setattr(chunking, "WINDOW", window)
    rng = random.Random(11)
    data = rng.randbytes(5 * window + 777)
    staging = tmp_path / "staging"
    staging.write_bytes(b"")
    store = MemoryStore()
    stream = StreamingSeal(store, SECRET, staging)
    written = 0
    with open(staging, "r+b", buffering=0) as f:
        while written < len(data):
            piece = data[written : written + rng.randrange(1, 3 * 1024 * 1024)]
            os.pwrite(f.fileno(), piece, written)
            written += len(piece)
            stream.grow(written)
    refs = stream.finish(written)
    assert [ref.cid for ref in refs] == _whole(data)
    assert all(store.has([ref.cid])[0] for ref in refs)


def test_chunks_are_sealed_while_the_file_is_still_being_written(tmp_path: Path) -> None:
    """A cut point is taken as soon as the bytes that decide it are written: a file closed after 3 MiB of its
    10 MiB has its first chunks stored already, and the close seals the rest (the refs are the whole file's)."""
    data = random.Random(12).randbytes(10 * 1024 * 1024)
    assert cdc_cut_points(data)[0] < 2 * 1024 * 1024  # the first cut point falls in what is written first
    staging = tmp_path / "staging"
    staging.write_bytes(data[: 3 * 1024 * 1024])
    store = MemoryStore()
    stream = StreamingSeal(store, SECRET, staging)
    stream.grow(3 * 1024 * 1024)
    deadline = time.monotonic() + 10
    while not store.stat().objects and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.stat().objects >= 1
    staging.write_bytes(data)
    assert [ref.cid for ref in stream.finish(len(data))] == _whole(data)


def test_an_abandoned_stream_stops_waiting_for_bytes(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.write_bytes(b"x" * 1000)
    stream = StreamingSeal(MemoryStore(), SECRET, staging)
    stream.grow(1000)  # far less than a window: the sealer waits for more
    assert stream.stop() is False  # nothing was given back: the staging file is whole
    waiter = threading.Thread(target=stream._thread.join, daemon=True)
    waiter.start()
    waiter.join(timeout=10)
    assert not waiter.is_alive()


@pytest.fixture
def staging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty staging file, whose stream gives back its front 2 MiB at a time."""
    monkeypatch.setattr(streaming, "PUNCH_STEP", 2 * 1024 * 1024)
    path = tmp_path / "staging"
    path.write_bytes(b"")
    return path


def _given_back(stream: StreamingSeal, at_least: int) -> None:
    deadline = time.monotonic() + 20
    while stream.punched < at_least and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.punched >= at_least


def _write_growing(staging: Path, stream: StreamingSeal, data: bytes, start: int = 0) -> None:
    with open(staging, "r+b", buffering=0) as f:
        for offset in range(start, len(data), 1024 * 1024):
            os.pwrite(f.fileno(), data[offset : offset + 1024 * 1024], offset)
            stream.grow(min(len(data), offset + 1024 * 1024))


def test_the_staging_file_gives_back_its_stored_front_and_the_chunks_are_those_of_the_whole_file(
    staging: Path,
) -> None:
    data = random.Random(13).randbytes(20 * 1024 * 1024 + 99)
    store = MemoryStore()
    stream = StreamingSeal(store, SECRET, staging)
    _write_growing(staging, stream, data[: 16 * 1024 * 1024])
    _given_back(stream, 8 * 1024 * 1024)
    assert stream.punched % streaming.PAGE == 0
    assert staging.stat().st_blocks * 512 <= 16 * 1024 * 1024 - stream.punched  # the blocks went back
    with open(staging, "rb") as f:
        assert f.read(4096) == bytes(4096)  # a hole: the front is in the store only
    _write_growing(staging, stream, data, start=16 * 1024 * 1024)
    assert [ref.cid for ref in stream.finish(len(data))] == _whole(data)


@pytest.mark.parametrize("how", ["stopped", "failed"])
def test_a_stream_that_gave_back_its_front_restores_it_from_the_store(
    staging: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A write elsewhere (or a sealing error) ends the stream: the staging file is made whole again."""
    data = random.Random(14).randbytes(16 * 1024 * 1024)
    store = MemoryStore()
    stream = StreamingSeal(store, SECRET, staging)
    _write_growing(staging, stream, data)
    _given_back(stream, 4 * 1024 * 1024)
    if how == "stopped":
        assert stream.stop() is True
    else:

        def put(
            cid: bytes, sealed: bytes | bytearray, durable: bool = True, verify: bool = True, cache: bool = True
        ) -> bool:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(store, "put", put)  # the last chunk, cut only once the file is complete, fails
        with pytest.raises(OSError, match="No space"):
            stream.finish(len(data))
    stream.restore()
    assert staging.read_bytes() == data


def test_a_stream_goes_on_after_an_fsync_from_its_last_cut_with_the_chunks_of_the_whole_file(staging: Path) -> None:
    """The fsync seals the file as it then ends; the next stream takes all its chunks but the last and seals
    on from that chunk's start, neither reading the front again nor needing it (it was given back)."""
    data = random.Random(15).randbytes(30 * 1024 * 1024 + 5)
    store = MemoryStore()
    first = StreamingSeal(store, SECRET, staging)
    _write_growing(staging, first, data[: 12 * 1024 * 1024 + 1])
    _given_back(first, 4 * 1024 * 1024)
    assert [ref.cid for ref in first.finish(12 * 1024 * 1024 + 1)] == _whole(data[: 12 * 1024 * 1024 + 1])
    second = StreamingSeal(store, SECRET, staging, after=first)
    assert second.punched == first.punched
    _write_growing(staging, second, data, start=12 * 1024 * 1024)
    _given_back(second, first.punched + 4 * 1024 * 1024)  # and it goes on giving back
    assert [ref.cid for ref in second.finish(len(data))] == _whole(data)
