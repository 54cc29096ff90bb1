"""Transports for the edge protocol: QUIC (aioquic or qh3) and TLS over TCP. Thin trio adapters."""

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import trio

__all__ = ["one_error", "stop_signal"]


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
