"""What a transport asks of the server's side of one connection: the answer to each request.

The edge's ``EdgeSession`` is the implementation; transports (``portalfs.net``)
know only this shape, so they sit below the edge and never import it.
"""

from __future__ import annotations

from typing import Protocol

from .edge import Message

__all__ = ["Session"]


class Session(Protocol):
    peer: str

    def handle(self, request: Message, now_ns: int) -> Message:
        """The answer to ``request``; blocking (it may touch a disk), called on a worker thread."""
        ...

    def handle_nowait(self, request: Message) -> Message | None:
        """The answer if it needs neither a disk nor much CPU (for the event loop), else None."""
        ...
