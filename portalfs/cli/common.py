"""What every Portal command does around its work: open the device, and report errors in one line."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..device import Device, Unlocked
from ..errors import PortalError, UsageError, os_error_text
from ..memory import keep_freed_memory
from ..paths import DeviceHome
from ..portal import PortalView
from .handoff import emit, human

if TYPE_CHECKING:
    from ..fabric.store import FabricStore

__all__ = ["run_command", "unlock", "read_secret_file", "emit", "human"]


def run_command(prog: str, work: Callable[[Device], int], frees_space: bool = False) -> int:
    """Run ``work`` on this device; a ``PortalError`` becomes one line on stderr and its exit code. Closing the
    device flushes what its store holds back: a failure there (a full disk) is the command's, said once.
    ``frees_space``: the command frees space, and may use the device's reserve on a full disk."""
    keep_freed_memory()  # objects pass through by the megabyte: reuse their buffers warm
    device = None
    try:
        device = Device(DeviceHome.from_environ(), frees_space)
        code = int(work(device))
    except BaseException as exc:
        said = _said(prog, exc)
        if said is None:  # not an error of the user's: raised as it is, the device closed first
            if device is not None:
                with contextlib.suppress(Exception):
                    device.close()
            raise
        code = said
    if device is not None:
        try:
            device.close()
        except (PortalError, OSError) as exc:
            if code == 0:  # else the command's own error was said, most often of the same cause
                code = _said(prog, exc) or 1
    return code


def _said(prog: str, exc: BaseException) -> int | None:
    """Say ``exc`` in one line on stderr and give its exit code; None for what is not a user's error."""
    if isinstance(exc, PortalError):
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    if isinstance(exc, BrokenPipeError):
        return 141
    if isinstance(exc, OSError):
        print(f"{prog}: {os_error_text(exc)}", file=sys.stderr)
        return 10
    return None


def read_secret_file(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    except OSError as exc:
        raise UsageError(f"cannot read the {what} file {path}: {exc.strerror}") from exc


def unlock_passphrase(args: argparse.Namespace) -> str | None:
    """The key file's passphrase: from --passphrase-file, PORTAL_PASSPHRASE, or asked on a terminal."""
    if args.passphrase_file:
        return read_secret_file(args.passphrase_file, "passphrase")
    if os.environ.get("PORTAL_PASSPHRASE"):
        return os.environ["PORTAL_PASSPHRASE"]
    if sys.stdin.isatty():
        return getpass.getpass("Passphrase: ")
    return None


def unlock(device: Device, args: argparse.Namespace) -> Unlocked:
    return device.unlock(unlock_passphrase(args) if device.needs_passphrase() else None)


def with_root(secrets: Unlocked, args: argparse.Namespace) -> Unlocked:
    """``secrets`` with the identity's root, for a command that signs for the identity (revoke a device, grant
    write): kept on this device, or from the 24 words (asked on a terminal, else read from standard input)."""
    from ..errors import RootNotKept
    from ..keys import root_from_words

    if secrets.identity.root is not None:
        return secrets
    if sys.stdin.isatty():
        words = getpass.getpass("This device does not keep the identity's root. Recovery phrase (24 words): ")
    else:
        words = sys.stdin.read()
    if not words.strip():
        raise RootNotKept("this device does not keep the identity's root: give the 24 recovery words on stdin")
    bip39 = read_secret_file(args.bip39_passphrase_file, "BIP-39 passphrase") if args.bip39_passphrase_file else ""
    return Unlocked(secrets.identity.with_root(root_from_words(words, bip39)), secrets.device, secrets.generation)


def open_view(device: Device, secrets: Unlocked, name: str, keep: bool = True) -> PortalView:
    """Portal ``name``, through the device's fabric when it is on one (``fabric.sync.open_view``).

    The fabric, and what it loads (trio, the edge and hub clients), is imported only for a device on one:
    a `put` or `get` on a device of its own starts in half the time."""
    from ..fabric.config import load_config

    config = load_config(device)
    if config is None or not config.reaches_edges:
        return PortalView.open(device, name, secrets)
    from ..fabric.sync import open_view as through_fabric

    return through_fabric(device, secrets, name, keep)


def on_fabric(view: PortalView) -> FabricStore | None:
    """The view's store when it fetches from a fabric."""
    if not view.fetches:
        return None
    from ..fabric.store import FabricStore

    return view.store if isinstance(view.store, FabricStore) else None
