"""Sessions, sans-I/O: what a transport asks of the server's side of one connection (``Session``: the
answer to each request), and how a client matches answers to its requests (``Outstanding``).

The edge's ``EdgeSession`` is the server's implementation; transports
(``portalfs.net``) know only these shapes, so they sit below the edge.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from .edge import LocalProtocolError, Message, RemoteProtocolError

__all__ = ["Session", "Outstanding"]


class Session(Protocol):
    peer: str

    def handle(self, request: Message, now_ns: int) -> Message:
        """The answer to ``request``; blocking (it may touch a disk), called on a worker thread."""
        ...

    def handle_nowait(self, request: Message) -> Message | None:
        """The answer if it needs neither a disk nor much CPU (for the event loop), else None."""
        ...

    def close(self) -> None:
        """The connection ended (what the session holds for it is given back)."""
        ...


W = TypeVar("W")


class Outstanding(Generic[W]):
    """One connection's requests that await their answers, and which answer is whose: the one place a client
    matches answers to requests, for every transport.

    ``ordered``: answers come in the order of the requests (TLS over TCP, which
    may pipeline); otherwise each answer names its request (a QUIC stream id).
    A waiter is whatever the transport wakes with the answer.
    """

    def __init__(self, ordered: bool) -> None:
        self.ordered = ordered
        self._waiting: dict[int, W] = {}  # in the order sent
        self._next = 0

    def sent(self, waiter: W, key: int | None = None) -> None:
        """A request went out (with ``key``, its stream, unless answers are ordered)."""
        if self.ordered:
            key, self._next = self._next, self._next + 1
        elif key is None or key in self._waiting:
            raise LocalProtocolError(f"a request needs a key of its own, not {key!r}")
        self._waiting[key] = waiter

    def answered(self, key: int | None = None) -> W:
        """The waiter an answer (on ``key``, unless ordered) is for; RemoteProtocolError if nobody asked."""
        if self.ordered:
            if not self._waiting:
                raise RemoteProtocolError("an answer nobody asked for")
            key = next(iter(self._waiting))
        if key not in self._waiting:
            raise RemoteProtocolError(f"an answer on {key!r}, which no request is waiting on")
        return self._waiting.pop(key)

    def __contains__(self, key: int) -> bool:
        return key in self._waiting

    def failed(self) -> list[W]:
        """Every waiter left, in the order sent: the connection is gone."""
        waiters = list(self._waiting.values())
        self._waiting.clear()
        return waiters

    def __len__(self) -> int:
        return len(self._waiting)
