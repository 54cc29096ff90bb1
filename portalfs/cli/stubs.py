"""Entry points for the programs that later parts of Portal fill in."""

from __future__ import annotations

import sys

__all__ = ["portald_main"]


def _not_yet(program: str, what: str) -> int:
    print(f"{program}: {what} is not available in this version of Portal", file=sys.stderr)
    return 69  # EX_UNAVAILABLE


def portald_main() -> int:
    return _not_yet("portald", "the sync daemon")
