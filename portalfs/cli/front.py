"""The portalctl command's entry point: put and get go to the device's portald where it runs (``handoff``,
which loads only the standard library and the control socket's client); the engine is imported only for
what this process runs itself (``portalctl``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .handoff import run

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    def here(args: Sequence[str]) -> int:
        from .portalctl import run_here

        return run_here(args)

    return run(sys.argv[1:] if argv is None else argv, here)


if __name__ == "__main__":
    sys.exit(main())
