"""One error root for everything Portal reports to a user.

Every subclass carries a stable exit code (the table lives in docs/design.md,
section "Exit codes") and a message written for the person reading it. The CLI
prints ``portalctl: <message>`` on one line and exits with ``exit_code``; it
never shows a traceback for a ``PortalError``.
"""

from __future__ import annotations

__all__ = [
    "PortalError",
    "UsageError",
    "NotFound",
    "AlreadyExists",
    "NotInitialized",
    "BadRecoveryPhrase",
    "BadPassphrase",
    "IntegrityError",
    "CorruptObject",
    "BadSignature",
    "MissingObject",
    "StorageError",
    "StoreFull",
    "DirectoryTooLarge",
    "SourceError",
    "PortalBusy",
    "MountError",
    "Unreachable",
    "Refused",
    "Conflict",
    "error_for_exit_code",
    "shown",
    "os_error_text",
]


def os_error_text(exc: OSError) -> str:
    """An OSError as a command says it: the file it concerns, then the system's words."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def shown(text: str, limit: int = 64) -> str:
    """``text`` quoted for a message, cut short when it is long: an error never echoes a whole input back."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"… ({len(text)} characters)"


class PortalError(Exception):
    """Root of every error Portal reports to a user."""

    exit_code = 1


class UsageError(PortalError):
    """The command line or an argument is wrong."""

    exit_code = 2


class RootNotKept(UsageError):
    """The command signs for the identity, and this device does not keep its root: the 24 words are needed."""


class NotFound(PortalError):
    """A portal, version or path that does not exist."""

    exit_code = 3


class AlreadyExists(PortalError):
    """Something that must be new already exists."""

    exit_code = 4


class NotInitialized(PortalError):
    """This device has no identity yet (run `portalctl init` or `portalctl recover`)."""

    exit_code = 5


class BadRecoveryPhrase(PortalError):
    """The recovery words are not a valid BIP-39 phrase."""

    exit_code = 6


class BadPassphrase(PortalError):
    """The passphrase does not unlock the key file."""

    exit_code = 7


class IntegrityError(PortalError):
    """Stored or received bytes failed verification."""

    exit_code = 8


class CorruptObject(IntegrityError):
    """An object's bytes do not match its id, tag or plaintext hash."""


class BadSignature(IntegrityError):
    """A signed record does not verify."""


class MissingObject(PortalError):
    """An object a version refers to is not in the store."""

    exit_code = 9


class StorageError(PortalError):
    """The local store could not be written or read."""

    exit_code = 10


class StoreFull(StorageError):
    """No space left on the device that holds the store."""


class DirectoryTooLarge(StorageError):
    """A directory's entries take more than one directory node holds (``sealing.MAX_PLAINTEXT``)."""


class SourceError(PortalError):
    """A source path given to `put` cannot be read."""

    exit_code = 11


class PortalBusy(PortalError):
    """The portal is held by another writer (a read-write mount, or a put)."""

    exit_code = 12


class MountError(PortalError):
    """The mount point or the mount itself is not usable."""

    exit_code = 13


class Unreachable(PortalError):
    """A hub or edge did not answer (down, unreachable, or the connection broke)."""

    exit_code = 14


class Refused(PortalError):
    """A hub or edge refused the request (unknown or revoked device, quota, an expired link, policy)."""

    exit_code = 15


class Conflict(PortalError):
    """The hub holds a newer version than the one this device built on."""

    exit_code = 16


def error_for_exit_code(code: int, message: str) -> PortalError:
    """The error that another Portal process reported as ``code`` and ``message`` (its base class for the code)."""
    classes: list[type[PortalError]] = [PortalError, *_subclasses(PortalError)]
    for cls in classes:
        if cls.exit_code == code:
            return cls(message)
    return PortalError(message)


def _subclasses(cls: type[PortalError]) -> list[type[PortalError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found
