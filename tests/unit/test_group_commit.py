"""Group commit of journal records (portalfs/worktree/groupcommit.py): closes that come together share one
transaction, each returns once its own record is written, in the order they came."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from portalfs.worktree.groupcommit import GroupCommit


class Journal:
    """A journal whose flush lasts until the test lets it finish."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, bytes]] = []
        self.transactions: list[list[bytes]] = []
        self.fail_next = False
        self.flushing = threading.Event()  # set: a flush may finish
        self.flushing.set()
        self.started = threading.Event()  # a flush has begun
        self._lock = threading.Lock()

    def write(self, records: list[tuple[int, bytes]]) -> list[int]:
        with self._lock:
            self.started.set()
            assert self.flushing.wait(timeout=10)
            if self.fail_next:
                self.fail_next = False
                raise OSError(28, "No space left on device")
            self.transactions.append([record for _, record in records])
            start = len(self.rows)
            self.rows.extend(records)
            return list(range(start + 1, len(self.rows) + 1))


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def _closes(commit: GroupCommit, journal: Journal, names: list[bytes], queued: int) -> dict[bytes, int | str]:
    """Close ``names`` on threads of their own, in order, while the first one's flush is held until ``queued``
    records wait behind it; return each close's record number or error."""
    outcomes: dict[bytes, int | str] = {}

    def close(name: bytes) -> None:
        try:
            outcomes[name] = commit.append(7, name)
            assert (7, name) in journal.rows  # durable when it returns
        except OSError as exc:
            outcomes[name] = exc.strerror or ""

    journal.flushing.clear()
    threads = []
    for i, name in enumerate(names):
        threads.append(threading.Thread(target=close, args=(name,)))
        threads[-1].start()
        if i == 0:
            _until(journal.started.is_set)  # the first close flushes, held there
        else:
            _until(lambda count=i: commit.queued == count)
    _until(lambda: commit.queued == queued)
    journal.flushing.set()
    for thread in threads:
        thread.join(timeout=10)
    return outcomes


def test_closes_that_come_together_share_a_transaction_and_keep_their_order() -> None:
    journal = Journal()
    commit = GroupCommit(journal.write)
    names = [b"file%02d" % i for i in range(20)]
    outcomes = _closes(commit, journal, names, queued=19)
    assert [record for _, record in journal.rows] == names
    assert [outcomes[name] for name in names] == list(range(1, 21))
    # the first close writes alone; the nineteen that came while it was flushing go in one transaction
    assert commit.batches == len(journal.transactions) == 2
    assert [len(t) for t in journal.transactions] == [1, 19]


def test_one_close_alone_is_written_at_once() -> None:
    journal = Journal()
    commit = GroupCommit(journal.write)
    assert commit.append(1, b"a") == 1
    assert commit.append(1, b"b") == 2
    assert commit.batches == 2 and journal.rows == [(1, b"a"), (1, b"b")]


def test_a_failed_transaction_fails_every_close_in_it_and_the_next_ones_go_on() -> None:
    journal = Journal()
    commit = GroupCommit(journal.write)
    journal.fail_next = True
    outcomes = _closes(commit, journal, [b"x", b"y", b"z"], queued=2)
    # x's transaction failed (x alone: y and z came while it was flushing); theirs, the next, was written
    assert outcomes == {b"x": "No space left on device", b"y": 1, b"z": 2}
    assert journal.rows == [(7, b"y"), (7, b"z")] and commit.batches == 1
