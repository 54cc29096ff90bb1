"""Transports for the edge protocol: QUIC (aioquic or qh3) and TLS over TCP. Thin trio adapters."""

import logging
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import trio

__all__ = ["one_error", "stop_signal", "Connections", "MAX_CONNECTIONS", "MAX_PER_ADDRESS"]

log = logging.getLogger("portal.net")

MAX_CONNECTIONS = 1024  # connections an edge holds at once, over both transports
MAX_PER_ADDRESS = 64  # ... from one network address, authenticated or not


class Connections:
    """The connections a server holds, bounded in all and per peer address, so that one client cannot take
    every slot (or the memory each costs). Transports ask ``admit`` before they spend anything on a new
    connection (a handshake, a session) and ``release`` when it ends. Used from the event loop only."""

    def __init__(self, total: int = MAX_CONNECTIONS, per_address: int = MAX_PER_ADDRESS) -> None:
        self.total = total
        self.per_address = per_address
        self._held: Counter[str] = Counter()
        self._count = 0  # the sum of _held
        self._refused = 0

    def admit(self, address: str) -> bool:
        if self._count >= self.total or self._held[address] >= self.per_address:
            self._refused += 1
            if self._refused & (self._refused - 1) == 0:  # said at the 1st, 2nd, 4th, 8th ... refusal
                log.warning("connection from %s refused: %d held (at most %d, %d per address); %d refused so far",
                            address, self._count, self.total, self.per_address, self._refused)  # fmt: skip
            return False
        self._held[address] += 1
        self._count += 1
        return True

    def release(self, address: str) -> None:
        self._count -= 1
        self._held[address] -= 1
        if self._held[address] <= 0:
            del self._held[address]


async def stop_signal() -> None:
    """Until SIGTERM or SIGINT: when a server run on its own stops."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


@contextmanager
def one_error() -> Iterator[None]:
    """Raise the exception itself, not a group of one, when a nursery inside a connection's context fails.

    A transport's ``open_*`` runs its reader in a nursery around the caller's
    block; without this, whatever the block or the reader raised would reach
    the caller wrapped in an ExceptionGroup, past every ``except`` that names it.
    Nested nurseries nest groups of one: they are unwrapped to the one inside.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        only: BaseException = group
        while isinstance(only, BaseExceptionGroup) and len(only.exceptions) == 1:
            only = only.exceptions[0]
        if only is group:
            raise
        raise only from only.__cause__  # itself, with its own cause and traceback
