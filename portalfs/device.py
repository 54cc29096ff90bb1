"""One device: its home directory, state database, object store and (once unlocked) secrets.

This is the composition root the CLI (and later the daemon) builds on.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import encoding
from .errors import AlreadyExists, IntegrityError, NotInitialized, PortalBusy, UsageError, shown
from .generations import Generation, GenerationRecord, PurposeKeys
from .keyfile import KeyFileSecrets, keyfile_is_locked, read_keyfile, write_keyfile
from .keys import DeviceCertificate, DeviceKey, Identity, IdentityKeys, fingerprint, root_from_words
from .paths import DeviceHome
from .root import PortalKeys
from .state import PortalRow, StateDB
from .store import LocalStore
from .tree import FileObjects

__all__ = ["Device", "Unlocked", "validate_portal_name"]

_PORTAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEYRING_AAD = b"portal keyring v1\x00"
_GENERATION = "generation"  # meta: {"record", "seed" sealed under the device's local key}: the newest one held
_RECOVERY = "recovery"  # meta: the identity's recovery key, sealed likewise, until the device's first hub round
_HANDED = "generation-handed"  # meta: {"number", "seed" sealed likewise}: what the approving device handed over


def validate_portal_name(name: str) -> str:
    if not _PORTAL_NAME.fullmatch(name):
        raise UsageError(
            f"invalid portal name {shown(name)}: "
            "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


@dataclass(slots=True)
class Unlocked:
    """The device's secrets, in memory while a command runs: the key file's, and the newest key generation of
    the identity this device holds (docs/design.md, section 2), which a sync may advance in place."""

    identity: IdentityKeys
    device: DeviceKey
    generation: Generation | None = None  # None: generation 0, the keys the root derives

    @property
    def generation_number(self) -> int:
        return 0 if self.generation is None else self.generation.number

    @property
    def purpose_keys(self) -> tuple[PurposeKeys, ...]:
        """The keyring and agreement keys of every generation held, newest first."""
        if self.generation is None:
            return (PurposeKeys(self.identity.keyring_key, self.identity.agreement),)
        return (self.generation.keys, *self.generation.older)

    @property
    def keyring_keys(self) -> tuple[bytes, ...]:
        return tuple(k.keyring for k in self.purpose_keys)

    @property
    def agreement_keys(self) -> tuple[X25519PrivateKey, ...]:
        return tuple(k.agreement_key for k in self.purpose_keys)

    def seal(self, plain: bytes, aad: bytes) -> bytes:
        """``nonce(12) || AES-256-GCM`` under the keyring key of the newest generation held."""
        nonce = os.urandom(12)
        return nonce + AESGCM(self.keyring_keys[0]).encrypt(nonce, plain, aad)

    def open(self, sealed: bytes, aad: bytes) -> tuple[bytes, bool] | None:
        """What ``seal`` made under any generation's keyring key held, newest first: (plaintext, whether under
        the newest); None where none opens it."""
        for i, key in enumerate(self.keyring_keys):
            try:
                return AESGCM(key).decrypt(sealed[:12], sealed[12:], aad), i == 0
            except (InvalidTag, ValueError):
                continue
        return None

    def wrap_portal_key(self, portal_id: bytes, keys: PortalKeys) -> bytes:
        return self.seal(keys.to_bytes(), _KEYRING_AAD + portal_id)

    def unwrap_portal_key(self, row: PortalRow) -> PortalKeys:
        """Opened with the newest keyring key that opens it (one wrapped before a generation was learnt)."""
        opened = self.open(row.wrapped_key, _KEYRING_AAD + row.id)
        if opened is None:
            raise IntegrityError(f"portal {row.name!r}: its key does not open with this identity")
        return PortalKeys.from_bytes(opened[0])


class Closable(Protocol):
    def close(self) -> None: ...


class Device:
    def __init__(self, home: DeviceHome, frees_space: bool = False) -> None:
        """``frees_space``: this device object is made for a command that frees space (DeviceHome.mind_reserve)."""
        self.home = home
        home.ensure()
        home.mind_reserve(give_back=frees_space)
        self.state = StateDB(home.state_db)
        self._local: LocalStore | None = None
        self._held: list[Closable] = []  # what lives as long as the device object (its fabric, for a command)
        self.file_objects = FileObjects()  # what the files this process built or read reach (a publish's list)

    def close(self) -> None:
        for resource in reversed(self._held):
            resource.close()
        if self._local is not None:
            self._local.close()
        self.state.close()

    def hold(self, resource: Closable) -> None:
        """Close ``resource`` with the device (before its store and state)."""
        self._held.append(resource)

    @property
    def store_local(self) -> LocalStore:
        if self._local is None:
            self._local = LocalStore(self.home.store)
        return self._local

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the device lock: one writer (put, gc, create) at a time."""
        with open(self.home.lock_file, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextmanager
    def portal_writer(self, portal_id: bytes, what: str) -> Iterator[None]:
        """Be the one writer of a portal (a read-write mount or a put), or raise PortalBusy."""
        with open(self.home.locks / f"{portal_id.hex()}.lock", "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PortalBusy(f"{what}: the portal is being written elsewhere (is it mounted read-write?)") from None
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextmanager
    def portal_syncer(self, portal_id: bytes, wait: bool) -> Iterator[bool]:
        """Be the one process that syncs a portal (portald, a command, or the read-write mount that writes it).

        Yields whether this process holds the claim: with ``wait``, always (it
        waits for the holder to let go); without, False when another holds it.
        The claim ends with the process that held it, however it ends.
        """
        with open(self.home.locks / f"{portal_id.hex()}.sync", "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # identity

    @property
    def initialized(self) -> bool:
        return self.home.secrets_file.exists() and self.state.get_meta("identity") is not None

    def require_initialized(self) -> None:
        if not self.initialized:
            raise NotInitialized(f"no identity in {self.home.data}: run `portalctl init` or `portalctl recover`")

    def require_uninitialized(self) -> None:
        if self.initialized:
            raise AlreadyExists(f"{self.home.data} already holds identity {self.whoami()['fingerprint']}")

    def create_identity(
        self,
        words: str,
        bip39_passphrase: str,
        key_passphrase: str | None,
        device_name: str | None,
        now_ns: int,
        keep_root: bool = False,
    ) -> Identity:
        """Derive the identity from ``words`` and enroll a fresh device key for this home. The key file keeps
        the identity's purpose keys and, only with ``keep_root`` (which needs ``key_passphrase``), its root."""
        self.require_uninitialized()
        if keep_root and not key_passphrase:
            raise UsageError("--keep-root keeps the identity's root under a passphrase: give one")
        identity = Identity(root_from_words(words, bip39_passphrase))
        device = DeviceKey(os.urandom(32))
        name = device_name or socket.gethostname()
        cert = identity.enroll(device.public, name, now_ns)
        with self.state.transaction():
            self.state.set_meta("identity", identity.public)
            self.state.set_meta("agreement", identity.agreement_public)
            self.state.set_meta("device", device.public)
            self.state.add_device(device.public, name, cert.to_bytes(), now_ns)
            # made from the words: it opens the identity's newest key generation at the hub, then forgets it
            recovery = identity.recovery_key.private_bytes_raw()
            self.state.set_meta(_RECOVERY, device.seal_local(_RECOVERY.encode(), recovery))
            # The key file last: `initialized` is true only once everything is written.
            keys = IdentityKeys.of(identity, keep_root)
            write_keyfile(self.home.secrets_file, KeyFileSecrets(keys, device.private), key_passphrase)
        return identity

    def create_approved(
        self,
        keys: IdentityKeys,
        device: DeviceKey,
        cert: bytes,
        key_passphrase: str | None,
        now_ns: int,
        handed: tuple[int, bytes] | None = None,
    ) -> None:
        """Become a device of the identity whose ``keys`` another of its devices sealed to this one, with the
        certificate it signed for ``device`` (``portalctl join``; the caller checked both), and ``handed``, the
        identity's newest key generation (number, seed) that device held, which the first hub round checks."""
        self.require_uninitialized()
        name = keys.device_name(DeviceCertificate.from_bytes(cert).fields())
        with self.state.transaction():
            self.state.set_meta("identity", keys.public)
            self.state.set_meta("agreement", keys.agreement_public)
            self.state.set_meta("device", device.public)
            self.state.add_device(device.public, name, cert, now_ns)
            if handed is not None:
                sealed = device.seal_local(_HANDED.encode(), handed[1])
                self.state.set_meta(_HANDED, encoding.encode({"number": handed[0], "seed": sealed}))
            write_keyfile(self.home.secrets_file, KeyFileSecrets(keys, device.private), key_passphrase)

    def needs_passphrase(self) -> bool:
        self.require_initialized()
        return keyfile_is_locked(self.home.secrets_file)

    def unlock(self, passphrase: str | None) -> Unlocked:
        self.require_initialized()
        secrets = read_keyfile(self.home.secrets_file, passphrase)
        identity, device = secrets.identity, DeviceKey(secrets.device)
        if identity.public != self.state.get_meta("identity") or device.public != self.state.get_meta("device"):
            raise IntegrityError("the key file does not belong to this device's state")
        return Unlocked(identity, device, self._generation(device))

    def _generation(self, device: DeviceKey) -> Generation | None:
        raw = self.state.get_meta(_GENERATION)
        if raw is None:
            return None
        kept = encoding.decode(raw)
        try:
            seed = device.open_local(_GENERATION.encode(), kept["seed"])
        except InvalidTag:
            raise IntegrityError("this device's key generation does not open with its key") from None
        return Generation.open(GenerationRecord.from_bytes(kept["record"]), seed)

    def adopt_generation(self, secrets: Unlocked, generation: Generation) -> None:
        """Hold ``generation`` from now on: kept (sealed under the device's key), every portal key here rewrapped
        under its keyring key, and ``secrets`` advanced."""
        old = secrets.generation
        secrets.generation = generation
        sealed = secrets.device.seal_local(_GENERATION.encode(), generation.seed)
        try:
            with self.state.transaction():
                for row in self.state.portals():
                    self.state.set_portal_key(row.id, secrets.wrap_portal_key(row.id, secrets.unwrap_portal_key(row)))
                self.state.set_meta(_GENERATION, encoding.encode({"record": generation.record.to_bytes(),
                                                                  "seed": sealed}))  # fmt: skip
        except BaseException:
            secrets.generation = old
            raise

    def recovery_key(self, secrets: Unlocked) -> X25519PrivateKey | None:
        """The identity's recovery key, where the device was made from the words and has not met its hub yet."""
        if secrets.identity.root is not None:
            return Identity(secrets.identity.root).recovery_key
        raw = self.state.get_meta(_RECOVERY)
        if raw is None:
            return None
        return X25519PrivateKey.from_private_bytes(secrets.device.open_local(_RECOVERY.encode(), raw))

    def handed_seed(self, secrets: Unlocked, number: int) -> bytes | None:
        """The seed of key generation ``number`` the device that approved this one handed over, if it did."""
        raw = self.state.get_meta(_HANDED)
        if raw is None:
            return None
        handed = encoding.decode(raw)
        return secrets.device.open_local(_HANDED.encode(), handed["seed"]) if handed["number"] == number else None

    def forget_generation_hints(self) -> None:
        """After the device's first round with its hub: the recovery key and a handed seed are not kept."""
        for key in (_RECOVERY, _HANDED):
            if self.state.get_meta(key) is not None:
                self.state.delete_meta(key)

    def forget_root(self, passphrase: str | None) -> bool:
        """Rewrite the key file without the identity's root (under the same passphrase); False: it had none."""
        secrets = read_keyfile(self.home.secrets_file, passphrase)
        if secrets.identity.root is None:
            return False
        write_keyfile(self.home.secrets_file, KeyFileSecrets(secrets.identity.without_root(), secrets.device),
                      passphrase)  # fmt: skip
        return True

    def whoami(self) -> dict[str, str]:
        self.require_initialized()
        identity = self.state.get_meta("identity") or b""
        device = self.state.get_meta("device") or b""
        names = self.state.device_names()
        return {
            "fingerprint": fingerprint(identity),
            "identity": identity.hex(),
            "device": device.hex(),
            "device_name": names.get(device, ""),
            "home": str(self.home.data),
        }

    # portals

    def create_portal(self, name: str, secrets: Unlocked, now_ns: int) -> PortalRow:
        validate_portal_name(name)
        portal_id = os.urandom(16)
        row = PortalRow(portal_id, name, secrets.wrap_portal_key(portal_id, PortalKeys(os.urandom(32))), now_ns)
        self.state.add_portal(row)
        return row
