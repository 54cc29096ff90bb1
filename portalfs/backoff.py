"""Exponential backoff, the one rule for every retry: a wait after a failure that doubles with each in a row."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """``first`` seconds after one failure, doubling with each failure in a row, at most ``most``."""

    first: float
    most: float

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failures in a row (none after none)."""
        if failures <= 0:
            return 0.0
        return min(self.most, self.first * 2.0 ** min(failures - 1, 64))
