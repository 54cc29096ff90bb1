from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest

from portalfs import chunking
from portalfs.chunking import CDC_AVG, CDC_MAX, CDC_MIN, cdc_chunks, cdc_cut_points, fixed_chunks
from portalfs.sealing import plaintext_hash


def _data(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def test_cdc_is_deterministic_and_lossless() -> None:
    data = _data(1, 12 * 1024 * 1024)
    first = list(cdc_chunks(io.BytesIO(data)))
    second = list(cdc_chunks(io.BytesIO(data)))
    assert first == second
    assert b"".join(first) == data
    assert all(CDC_MIN <= len(c) <= CDC_MAX for c in first[:-1])
    assert len(first) > 4


def test_stream_and_buffer_cut_at_the_same_places() -> None:
    data = _data(2, 9 * 1024 * 1024)
    ends, offset = [], 0
    for chunk in cdc_chunks(io.BytesIO(data)):
        offset += len(chunk)
        ends.append(offset)
    assert ends == cdc_cut_points(data)


def test_boundaries_survive_an_insertion_upstream() -> None:
    data = _data(3, 24 * 1024 * 1024)
    edited = data[:1000] + b"an insertion near the start" + data[1000:]
    before = {plaintext_hash(c) for c in cdc_chunks(io.BytesIO(data))}
    after = [plaintext_hash(c) for c in cdc_chunks(io.BytesIO(edited))]
    kept = sum(1 for h in after if h in before)
    assert kept >= len(after) - 2, (kept, len(after))


class _Trickle(io.RawIOBase):
    """A stream that returns at most 1000 bytes per read, like a pipe."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._data.read(min(n, 1000) if n > 0 else 1000)


def test_fixed_chunks_fill_each_chunk_even_from_short_reads() -> None:
    data = _data(4, 10_000)
    chunks = list(fixed_chunks(_Trickle(data), size=4096))
    assert [len(c) for c in chunks] == [4096, 4096, 1808]
    assert b"".join(chunks) == data


def test_a_file_read_from_its_descriptor_gives_the_chunks_of_its_bytes(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(3 * CDC_MAX + 12345)
    path = tmp_path / "f"
    path.write_bytes(b"head" + data)
    expected = list(cdc_chunks(io.BytesIO(data)))
    with open(path, "rb", buffering=0) as raw, open(path, "rb") as buffered:
        raw.seek(4)
        buffered.seek(4)  # chunked from where the stream stands, not from the file's start
        assert list(cdc_chunks(raw)) == list(cdc_chunks(buffered)) == expected


@pytest.mark.parametrize("window", [CDC_MAX + 1, 5 * 1024 * 1024])
def test_a_file_read_in_windows_is_cut_where_the_stream_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    """A regular file is read and cut a window at a time; the cut points are the stream chunker's, across
    window ends, on random and repetitive bytes."""
    monkeypatch.setattr(chunking, "WINDOW", window)
    rng = random.Random(7)
    for data in (rng.randbytes(4 * window + 1234), b"".join(b"line %d\n" % (i % 997) for i in range(2_500_000))):
        path = tmp_path / "f"
        path.write_bytes(data)
        with open(path, "rb", buffering=0) as f:
            chunks = list(cdc_chunks(f))
            assert f.tell() == 0  # read with pread: the position is where it was
        assert [bytes(c) for c in chunks] == list(cdc_chunks(io.BytesIO(data)))
        assert len(chunks) > 4


def test_a_file_is_read_for_what_it_holds_at_any_size_and_while_it_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each window reads what the file holds and a byte more (not a whole window for a small file); a file
    that grows between windows is read to its new end, cut where the stream chunker cuts it."""
    window = CDC_MAX + 1
    monkeypatch.setattr(chunking, "WINDOW", window)
    rng = random.Random(11)
    path = tmp_path / "f"
    pread = os.pread
    for size in (0, 1, 65536, CDC_AVG, window - 1, window, window + 1, 3 * window + 7):
        data = rng.randbytes(size)
        path.write_bytes(data)
        asked: list[int] = []

        def counted(fd: int, n: int, at: int, asked: list[int] = asked) -> bytes:
            asked.append(n)
            return pread(fd, n, at)

        monkeypatch.setattr(chunking.os, "pread", counted)
        with open(path, "rb", buffering=0) as f:
            assert [bytes(c) for c in cdc_chunks(f)] == list(cdc_chunks(io.BytesIO(data)))
        monkeypatch.setattr(chunking.os, "pread", pread)
        assert max(asked) <= min(window, size + 1), (size, asked)
    first, more = rng.randbytes(window + 99), rng.randbytes(2 * window)
    path.write_bytes(first)
    reads = 0

    def growing(fd: int, n: int, at: int) -> bytes:
        nonlocal reads
        reads += 1
        if reads == 2:  # after the first window: the writer appends
            with open(path, "ab") as out:
                out.write(more)
        return pread(fd, n, at)

    monkeypatch.setattr(chunking.os, "pread", growing)
    with open(path, "rb", buffering=0) as f:
        chunks = [bytes(c) for c in cdc_chunks(f)]
    assert b"".join(chunks) == first + more
    assert chunks == list(cdc_chunks(io.BytesIO(first + more)))
    # a file whose size says 0 and that holds more (/proc, /sys): read whole, in windows, not a byte at a time
    calls = 0

    def bounded(fd: int, n: int, at: int) -> bytes:
        nonlocal calls
        calls += 1
        assert calls < 100, "read a byte at a time"
        return pread(fd, n, at)

    fstat = os.fstat
    monkeypatch.setattr(chunking.os, "pread", bounded)
    monkeypatch.setattr(chunking.os, "fstat", lambda fd: os.stat_result((*fstat(fd)[:6], 0, *fstat(fd)[7:])))
    with open(path, "rb", buffering=0) as f:
        assert [bytes(c) for c in cdc_chunks(f)] == chunks
