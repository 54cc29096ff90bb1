"""The hub's state (SQLite) and every rule it enforces. No HTTP here: the app translates.

Each method takes the already-authenticated caller and raises a ``HubRefusal``
with an HTTP status and a stable code. Stored values are public keys, ids,
signatures, sealed root records, wrapped keys and policy numbers; nothing the
hub stores opens a byte of content (docs/design.md, "Threat model").
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadSignature, CorruptObject, IntegrityError
from ..generations import GenerationRecord
from ..keys import (
    DOMAIN_AGREEMENT,
    DOMAIN_DEVICE_BOX,
    DOMAIN_LINK_REDEEM,
    DOMAIN_REVOKE,
    DeviceCertificate,
    verify_signature,
)
from ..provisioning import new_request_id
from ..root import RootRecord
from ..sqlite import open_db, transaction
from .auth import CLOCK_SKEW_NS

__all__ = ["HubState", "HubRefusal", "Caller", "EDGE_LIVE_NS", "DEFAULT_GRACE_NS", "CLOSED_STATES"]

EDGE_LIVE_NS = 60 * 10**9  # an edge without a heartbeat for this long leaves the directory
MAX_LOCATIONS = 10_000  # ids in one locations request
DEFAULT_GRACE_NS = 7 * 86400 * 10**9  # a deleted or expired portal's objects are kept this long (restorable)
MAX_SUSPECTS = 1000  # damaged copies handed to an edge in one answer
MAX_WAITING = 1000  # edges waiting for admission the hub remembers (the most recent)
MAX_PROVISIONING = 1000  # requests of new devices waiting for approval, at once
PROVISIONING_NS = 600 * 10**9  # a new device's request waits this long for an approval, then is forgotten
CLOSED_STATES = ("expired", "deactivated", "deleted")  # no reads, no writes; the data stays (section 13)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS identities (identity BLOB PRIMARY KEY, agreement BLOB, agreement_sig BLOB,
    created_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS devices (device BLOB PRIMARY KEY, identity BLOB NOT NULL, cert BLOB NOT NULL,
    name TEXT NOT NULL, enrolled_ns INTEGER NOT NULL, revoked_ns INTEGER);
CREATE TABLE IF NOT EXISTS nonces (nonce BLOB PRIMARY KEY, time_ns INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS nonces_by_time ON nonces (time_ns);
CREATE TABLE IF NOT EXISTS keyrings (identity BLOB PRIMARY KEY, version INTEGER NOT NULL, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS portals (id BLOB PRIMARY KEY, owner BLOB NOT NULL, created_ns INTEGER NOT NULL,
    expires_ns INTEGER, deactivated_ns INTEGER, deleted_ns INTEGER);
CREATE TABLE IF NOT EXISTS members (portal BLOB NOT NULL, identity BLOB NOT NULL, wrapped BLOB NOT NULL,
    write INTEGER NOT NULL, write_sig BLOB, PRIMARY KEY (portal, identity));
CREATE TABLE IF NOT EXISTS roots (portal BLOB NOT NULL, version INTEGER NOT NULL, record BLOB NOT NULL,
    record_id BLOB NOT NULL, PRIMARY KEY (portal, version));
CREATE TABLE IF NOT EXISTS links (id BLOB PRIMARY KEY, portal BLOB NOT NULL, wrapped BLOB NOT NULL,
    expires_ns INTEGER, max_downloads INTEGER, window TEXT, downloads INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0, redeem_key BLOB);
CREATE TABLE IF NOT EXISTS edges (key BLOB PRIMARY KEY, address TEXT NOT NULL, transports TEXT NOT NULL,
    capacity INTEGER NOT NULL, used INTEGER NOT NULL, objects INTEGER NOT NULL, last_seen_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS locations (cid BLOB NOT NULL, edge BLOB NOT NULL, portal BLOB NOT NULL,
    PRIMARY KEY (cid, edge, portal)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS locations_portal ON locations (portal);
CREATE TABLE IF NOT EXISTS suspects (cid BLOB NOT NULL, edge BLOB NOT NULL, reported_ns INTEGER NOT NULL,
    PRIMARY KEY (cid, edge)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS waiting (key BLOB PRIMARY KEY, address TEXT NOT NULL, first_ns INTEGER NOT NULL,
    last_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS provisioning (id BLOB PRIMARY KEY, device BLOB NOT NULL, box BLOB NOT NULL,
    created_ns INTEGER NOT NULL, cert BLOB, sealed BLOB);
CREATE TABLE IF NOT EXISTS readers (portal BLOB NOT NULL, identity BLOB NOT NULL, PRIMARY KEY (portal, identity))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS generations (identity BLOB PRIMARY KEY, number INTEGER NOT NULL, record BLOB NOT NULL,
    recovery BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS generation_seals (identity BLOB NOT NULL, device BLOB NOT NULL, sealed BLOB NOT NULL,
    PRIMARY KEY (identity, device)) WITHOUT ROWID;
"""
# Edges the hub's operator admitted (`portal-hub edge approve`); created apart, so that a hub from before
# admission existed can admit the edges it already had registered (section 13, "Admission").
_ADMITTED = """CREATE TABLE admitted (key BLOB PRIMARY KEY, operator TEXT NOT NULL, admitted_ns INTEGER NOT NULL,
    removed_ns INTEGER)"""


class HubRefusal(Exception):
    def __init__(self, status: int, code: str, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.extra = extra or {}


@dataclass(frozen=True, slots=True)
class Caller:
    key: bytes
    identity: bytes | None  # None: the caller is an edge (or an unenrolled device)


log = logging.getLogger("portal.hub")

WINDOW = re.compile(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d")  # a link's daily window, UTC


def _window_allows(window: str | None, now_ns: int) -> bool:
    """``HH:MM-HH:MM`` in UTC; a window that wraps midnight is allowed."""
    if not window:
        return True
    start, end = (int(p[:2]) * 60 + int(p[3:]) for p in window.split("-"))
    minute = (now_ns // 60_000_000_000) % (24 * 60)
    return start <= minute < end if start <= end else minute >= start or minute < end


def _certificate(cert_bytes: bytes, identity: bytes | None, what: str) -> dict[str, Any]:
    """The fields of a device certificate signed by ``identity`` (None: by the identity it names itself), or
    400 bad-certificate."""
    try:
        cert = DeviceCertificate.from_bytes(cert_bytes)
        return cert.verify(cert.fields()["identity"] if identity is None else identity)
    except (BadSignature, CorruptObject, KeyError, TypeError, ValueError) as exc:
        raise HubRefusal(400, "bad-certificate", f"{what} does not verify: {exc}") from None


class HubState:
    """``grace_ns``: how long a deleted or expired portal can be restored; its objects are released after."""

    def __init__(self, path: Path, grace_ns: int = DEFAULT_GRACE_NS, edge_live_ns: int = EDGE_LIVE_NS) -> None:
        self.grace_ns = grace_ns
        self.edge_live_ns = edge_live_ns  # an edge without a heartbeat for this long leaves the directory
        self._db = open_db(path, durability="full")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(portals)")}
        if "deleted_ns" not in columns:  # a hub database from before deletion existed
            self._db.execute("ALTER TABLE portals ADD COLUMN deleted_ns INTEGER")
        if "write_sig" not in {row[1] for row in self._db.execute("PRAGMA table_info(members)")}:
            self._db.execute("ALTER TABLE members ADD COLUMN write_sig BLOB")  # members from before revision 3
        if "redeem_key" not in {row[1] for row in self._db.execute("PRAGMA table_info(links)")}:
            self._db.execute("ALTER TABLE links ADD COLUMN redeem_key BLOB")  # links from before revision 3
        if "box" not in {row[1] for row in self._db.execute("PRAGMA table_info(devices)")}:  # before revision 5
            self._db.execute("ALTER TABLE devices ADD COLUMN box BLOB")
            self._db.execute("ALTER TABLE devices ADD COLUMN box_sig BLOB")
            self._db.execute("ALTER TABLE identities ADD COLUMN generation INTEGER NOT NULL DEFAULT 0")
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'admitted'").fetchone() is None:
            with transaction(self._db, threading.Lock()) as db:  # a hub from before revision 4
                db.execute(_ADMITTED)
                kept = db.execute(
                    "INSERT INTO admitted (key, operator, admitted_ns) SELECT key, '', last_seen_ns FROM edges"
                ).rowcount
            if kept:
                log.warning("admitted the %d edges registered before admission existed: see `portal-hub edge ls`",
                            kept)  # fmt: skip
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def _txn(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db, self._lock)

    def _update_one(self, sql: str, args: tuple[Any, ...], refusal: HubRefusal) -> None:
        """Run an UPDATE in its own transaction; raise ``refusal`` if it changed no row."""
        with self._txn() as db:
            if db.execute(sql, args).rowcount == 0:
                raise refusal

    def _one(self, sql: str, *args: Any) -> Any:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def _all(self, sql: str, *args: Any) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # authentication

    def remember_nonce(self, nonce: bytes, now_ns: int) -> None:
        with self._txn() as db:
            db.execute("DELETE FROM nonces WHERE time_ns < ?", (now_ns - 2 * CLOCK_SKEW_NS,))
            if db.execute("INSERT OR IGNORE INTO nonces VALUES (?, ?)", (nonce, now_ns)).rowcount == 0:
                raise HubRefusal(401, "replayed", "this request was already received")

    def caller(self, key: bytes) -> Caller:
        row = self._one("SELECT identity, revoked_ns FROM devices WHERE device = ?", key)
        if row is None:
            return Caller(key, None)
        if row[1] is not None:
            raise HubRefusal(401, "revoked", "this device has been revoked")
        return Caller(key, row[0])

    @staticmethod
    def require_device(caller: Caller) -> bytes:
        if caller.identity is None:
            raise HubRefusal(401, "unknown-device", "this device is not enrolled at the hub: run `portalctl hub add`")
        return caller.identity

    def require_edge(self, caller: Caller) -> None:
        """The caller is an edge the operator admitted (and did not remove since)."""
        if self._one("SELECT 1 FROM admitted WHERE key = ? AND removed_ns IS NULL", caller.key) is None:
            raise HubRefusal(403, "not-admitted", "this edge is not admitted at the hub")

    def require_member_of_fabric(self, caller: Caller) -> None:
        """The caller is an enrolled device or an admitted edge: a stranger's key learns nothing."""
        if caller.identity is None:
            self.require_edge(caller)

    # identities and devices

    def enroll(self, caller: Caller, cert_bytes: bytes, now_ns: int) -> dict[str, Any]:
        """A device enrolls itself with the certificate its identity signed."""
        fields = _certificate(cert_bytes, None, "enrollment certificate")
        identity = fields["identity"]
        if fields.get("device") != caller.key:
            raise HubRefusal(403, "bad-certificate", "the certificate enrolls another device")
        with self._txn() as db:
            row = db.execute("SELECT revoked_ns FROM devices WHERE device = ?", (caller.key,)).fetchone()
            if row is not None and row[0] is not None:
                raise HubRefusal(401, "revoked", "this device has been revoked")
            db.execute("INSERT OR IGNORE INTO identities (identity, created_ns) VALUES (?, ?)", (identity, now_ns))
            db.execute(
                "INSERT OR IGNORE INTO devices (device, identity, cert, name, enrolled_ns) VALUES (?, ?, ?, ?, ?)",
                (caller.key, identity, cert_bytes, str(fields.get("name", "")), now_ns),
            )
        return {"identity": identity.hex(), "device": caller.key.hex()}

    @staticmethod
    def _signed_by(key: bytes, sig: bytes, message: bytes, what: str) -> None:
        """``sig`` is ``key``'s signature of ``message`` (an identity's, a device's), or 400 bad-signature."""
        try:
            verify_signature(key, sig, message, what)
        except BadSignature as exc:
            raise HubRefusal(400, "bad-signature", str(exc)) from None

    def set_agreement(self, caller: Caller, agreement: bytes, sig: bytes) -> None:
        """The identity's generation-0 agreement key; once it has a newer key generation, that one's stays."""
        identity = self.require_device(caller)
        self._signed_by(identity, sig, DOMAIN_AGREEMENT + agreement, "agreement key")
        with self._txn() as db:
            db.execute(
                "UPDATE identities SET agreement = ?, agreement_sig = ? WHERE identity = ? AND generation = 0",
                (agreement, sig, identity),
            )

    def identity(self, identity: bytes) -> dict[str, Any]:
        row = self._one("SELECT agreement, agreement_sig, generation FROM identities WHERE identity = ?", identity)
        if row is None or row[0] is None:
            raise HubRefusal(404, "not-found", f"no identity {identity.hex()[:16]}… at this hub")
        return {"identity": identity.hex(), "agreement": row[0].hex(), "sig": row[1].hex(), "generation": row[2]}

    def devices(self, caller: Caller) -> list[dict[str, Any]]:
        identity = self.require_device(caller)
        return [
            {
                "device": d.hex(),
                "name": name,
                "enrolled_ns": enrolled,
                "revoked_ns": revoked,
                "cert": cert.hex(),
                "box": box and box.hex(),
                "box_sig": box_sig and box_sig.hex(),
            }  # fmt: skip
            for d, name, enrolled, revoked, cert, box, box_sig in self._all(
                "SELECT device, name, enrolled_ns, revoked_ns, cert, box, box_sig FROM devices "
                "WHERE identity = ? ORDER BY enrolled_ns",
                identity,
            )
        ]

    def set_box(self, caller: Caller, box: bytes, sig: bytes) -> None:
        """The calling device's box key (X25519), signed by its own key: its identity's generations seal to it."""
        self.require_device(caller)
        self._signed_by(caller.key, sig, DOMAIN_DEVICE_BOX + box, "box key")
        with self._txn() as db:
            db.execute("UPDATE devices SET box = ?, box_sig = ? WHERE device = ?", (box, sig, caller.key))

    # key generations (section 2, "Key generations")

    def generation(self, caller: Caller) -> dict[str, Any]:
        """The identity's newest key generation, its seed sealed to the calling device (null: not yet) and to the
        recovery key, and the identity's devices with a box key it is not sealed to yet."""
        identity = self.require_device(caller)
        row = self._one("SELECT record, recovery FROM generations WHERE identity = ?", identity)
        if row is None:
            return {"record": None, "sealed": None, "recovery": None, "unsealed": []}
        mine = self._one("SELECT sealed FROM generation_seals WHERE identity = ? AND device = ?", identity, caller.key)
        unsealed = self._all(
            "SELECT device FROM devices WHERE identity = ? AND revoked_ns IS NULL AND box IS NOT NULL AND device "
            "NOT IN (SELECT device FROM generation_seals WHERE identity = ?)", identity, identity)  # fmt: skip
        return {"record": row[0].hex(), "sealed": mine and mine[0].hex(), "recovery": row[1].hex(),
                "unsealed": sorted(d.hex() for (d,) in unsealed)}  # fmt: skip

    def put_generation(self, caller: Caller, record_bytes: bytes, recovery: bytes, seals: dict[bytes, bytes]) -> None:
        """Publish the identity's next key generation (the one after the hub's, or the hub's again: idempotent);
        its agreement key becomes the one the hub gives for sharing."""
        identity = self.require_device(caller)
        try:
            record = GenerationRecord.from_bytes(record_bytes)
        except IntegrityError as exc:
            raise HubRefusal(400, "bad-generation", str(exc)) from None
        if record.identity != identity:
            raise HubRefusal(403, "forbidden", "a key generation of another identity")
        with self._txn() as db:
            row = db.execute("SELECT number, record FROM generations WHERE identity = ?", (identity,)).fetchone()
            current = 0 if row is None else row[0]
            if record.number != current + 1 and (row is None or row[1] != record_bytes):
                raise HubRefusal(409, "conflict", f"the hub holds key generation {current}, not {record.number - 1}")
            if record.number == current + 1:
                db.execute("INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?)",
                           (identity, record.number, record_bytes, recovery))  # fmt: skip
                db.execute("DELETE FROM generation_seals WHERE identity = ?", (identity,))
                db.execute("UPDATE identities SET agreement = ?, agreement_sig = ?, generation = ? WHERE identity = ?",
                           (record.agreement, record.sig, record.number, identity))  # fmt: skip
            self._add_seals(db, identity, seals)

    def add_seals(self, caller: Caller, number: int, seals: dict[bytes, bytes]) -> None:
        """Seals of the newest generation for devices of the identity that had none (one approved since)."""
        identity = self.require_device(caller)
        with self._txn() as db:
            row = db.execute("SELECT number FROM generations WHERE identity = ?", (identity,)).fetchone()
            if row is None or row[0] != number:
                raise HubRefusal(409, "conflict", f"key generation {number} is not the identity's newest")
            self._add_seals(db, identity, seals)

    @staticmethod
    def _add_seals(db: sqlite3.Connection, identity: bytes, seals: dict[bytes, bytes]) -> None:
        active = {d for (d,) in db.execute(
            "SELECT device FROM devices WHERE identity = ? AND revoked_ns IS NULL", (identity,))}  # fmt: skip
        db.executemany("INSERT OR IGNORE INTO generation_seals VALUES (?, ?, ?)",
                       [(identity, d, sealed) for d, sealed in seals.items() if d in active])  # fmt: skip

    def identity_devices(self, caller: Caller, identity: bytes) -> list[dict[str, Any]]:
        """An identity's device certificates, so that readers can check who signed a version: only for the
        identity itself and for those who share a portal with it (owner, member, or reader by a link)."""
        own = self.require_device(caller)
        if own != identity and not self._share_a_portal(own, identity):
            raise HubRefusal(403, "forbidden", "this identity shares no portal with that one")
        return [
            {"device": d.hex(), "cert": cert.hex(), "revoked_ns": revoked}
            for d, cert, revoked in self._all(
                "SELECT device, cert, revoked_ns FROM devices WHERE identity = ? ORDER BY enrolled_ns", identity
            )
        ]

    def _share_a_portal(self, one: bytes, other: bytes) -> bool:
        return (
            self._one(
                "WITH parties (portal, who) AS (SELECT id, owner FROM portals UNION ALL SELECT portal, identity "
                "FROM members UNION ALL SELECT portal, identity FROM readers) "
                "SELECT 1 FROM parties a JOIN parties b ON a.portal = b.portal WHERE a.who = ? AND b.who = ? LIMIT 1",
                one,
                other,
            )
            is not None
        )

    def revoke(self, caller: Caller, device: bytes, sig: bytes, now_ns: int) -> None:
        identity = self.require_device(caller)
        self._signed_by(identity, sig, DOMAIN_REVOKE + device, "revocation")
        with self._txn() as db:
            if db.execute("UPDATE devices SET revoked_ns = coalesce(revoked_ns, ?) WHERE device = ? AND identity = ?",
                          (now_ns, device, identity)).rowcount == 0:  # fmt: skip
                raise HubRefusal(404, "not-found", "no such device of this identity")
            db.execute("DELETE FROM generation_seals WHERE identity = ? AND device = ?", (identity, device))

    def device_directory(self, caller: Caller) -> dict[str, dict[str, str]]:
        """Every enrolled device: its status and the identity that enrolled it (an edge checks a HELLO's
        certificate against it, so that a device cannot claim another identity's quota)."""
        self.require_edge(caller)
        return {
            d.hex(): {"status": "revoked" if revoked is not None else "active", "identity": i.hex()}
            for d, i, revoked in self._all("SELECT device, identity, revoked_ns FROM devices")
        }

    # approving a new device from one the identity has (section 15, "Approving a device")

    def request_provisioning(self, caller: Caller, box: bytes, now_ns: int) -> dict[str, str]:
        """A new device (its key not enrolled) asks to be approved: the hub holds its key and box key, under a
        random id, for PROVISIONING_NS."""
        if caller.identity is not None:
            raise HubRefusal(409, "exists", "this device is enrolled already")
        request = new_request_id()
        with self._txn() as db:
            db.execute("DELETE FROM provisioning WHERE created_ns < ?", (now_ns - PROVISIONING_NS,))
            if db.execute("SELECT count(*) FROM provisioning").fetchone()[0] >= MAX_PROVISIONING:
                raise HubRefusal(429, "busy", "too many devices wait for approval: try again in minutes")
            db.execute(
                "INSERT INTO provisioning (id, device, box, created_ns) VALUES (?, ?, ?, ?)",
                (request, caller.key, box, now_ns),
            )
        return {"id": request.hex()}

    def _provisioning(self, request: bytes, now_ns: int) -> tuple[bytes, bytes, bytes | None, bytes | None]:
        row = self._one(
            "SELECT device, box, cert, sealed FROM provisioning WHERE id = ? AND created_ns >= ?",
            request,
            now_ns - PROVISIONING_NS,
        )
        if row is None:
            raise HubRefusal(404, "not-found", "no such device request (it lasts 10 minutes)")
        return row  # type: ignore[no-any-return]

    def provisioning(self, caller: Caller, request: bytes, now_ns: int) -> dict[str, str]:
        """The keys a new device showed, to an enrolled device about to approve it (which checks them against
        the code the new device shows, not the hub's word)."""
        self.require_device(caller)
        device, box, cert, _ = self._provisioning(request, now_ns)
        if cert is not None:
            raise HubRefusal(409, "exists", "this device request was approved already")
        return {"device": device.hex(), "box": box.hex()}

    def approve_provisioning(
        self, caller: Caller, request: bytes, cert_bytes: bytes, sealed: bytes, now_ns: int
    ) -> None:
        """Store the certificate the caller's identity signed for the requesting device, and the keys sealed to
        it; once only."""
        identity = self.require_device(caller)
        device, _, _, _ = self._provisioning(request, now_ns)
        fields = _certificate(cert_bytes, identity, "the approval's certificate")
        if fields.get("device") != device:
            raise HubRefusal(400, "bad-certificate", "the approval's certificate enrolls another device")
        self._update_one(
            "UPDATE provisioning SET cert = ?, sealed = ? WHERE id = ? AND cert IS NULL",
            (cert_bytes, sealed, request),
            HubRefusal(409, "exists", "this device request was approved already"),
        )

    def provisioning_answer(self, caller: Caller, request: bytes, now_ns: int) -> dict[str, str] | None:
        """The approval of the caller's own request (None while it waits): only the device that asked reads it."""
        device, _, cert, sealed = self._provisioning(request, now_ns)
        if device != caller.key:
            raise HubRefusal(403, "forbidden", "this request is another device's")
        if cert is None or sealed is None:
            return None
        return {"cert": cert.hex(), "sealed": sealed.hex()}

    # keyring

    def keyring(self, caller: Caller) -> dict[str, Any]:
        identity = self.require_device(caller)
        row = self._one("SELECT version, blob FROM keyrings WHERE identity = ?", identity)
        return {"version": 0, "blob": ""} if row is None else {"version": row[0], "blob": row[1].hex()}

    def put_keyring(self, caller: Caller, version: int, blob: bytes) -> None:
        """Compare-and-swap: ``version`` must be the stored version plus one."""
        identity = self.require_device(caller)
        with self._txn() as db:
            row = db.execute("SELECT version FROM keyrings WHERE identity = ?", (identity,)).fetchone()
            current = 0 if row is None else row[0]
            if version != current + 1:
                raise HubRefusal(409, "stale", f"the keyring is at version {current}", {"version": current})
            db.execute("INSERT OR REPLACE INTO keyrings VALUES (?, ?, ?)", (identity, version, blob))

    # portals

    def _portal(self, portal: bytes) -> tuple[bytes, int, int | None, int | None, int | None]:
        row = self._one(
            "SELECT owner, created_ns, expires_ns, deactivated_ns, deleted_ns FROM portals WHERE id = ?", portal
        )
        if row is None:
            raise HubRefusal(404, "not-found", f"no portal {portal.hex()} at this hub")
        return row  # type: ignore[no-any-return]

    def portal_state(self, portal: bytes, now_ns: int) -> str:
        _, _, expires, deactivated, deleted = self._portal(portal)
        if deleted is not None:
            return "deleted"
        if deactivated is not None:
            return "deactivated"
        if expires is not None and now_ns >= expires:
            return "expired"
        has_root = self._one("SELECT 1 FROM roots WHERE portal = ? LIMIT 1", portal) is not None
        return "active" if has_root else "created"

    def release_ns(self, portal: bytes) -> int | None:
        """When the portal's objects are released to the edges' garbage collection: the end of the grace
        period after its deletion or expiry; None while neither is set. Deactivation never releases them."""
        _, _, expires, _, deleted = self._portal(portal)
        ends = [t + self.grace_ns for t in (expires, deleted) if t is not None]
        return min(ends) if ends else None

    def _released(self, now_ns: int) -> list[bytes]:
        """Portals whose grace period has ended."""
        rows = self._all(
            "SELECT id FROM portals WHERE (deleted_ns IS NOT NULL AND deleted_ns <= ?) "
            "OR (expires_ns IS NOT NULL AND expires_ns <= ?)",
            now_ns - self.grace_ns,
            now_ns - self.grace_ns,
        )
        return [r[0] for r in rows]

    def _access(self, caller: Caller, portal: bytes, now_ns: int, write: bool = False) -> bytes:
        """The portal's owner; raise unless the caller may read (or write) it now."""
        identity = self.require_device(caller)
        owner = self._portal(portal)[0]
        if identity != owner:
            row = self._one("SELECT write FROM members WHERE portal = ? AND identity = ?", portal, identity)
            if row is None or (write and not row[0]):
                raise HubRefusal(
                    403, "forbidden", "this identity may not " + ("write" if write else "read") + " the portal"
                )
        state = self.portal_state(portal, now_ns)
        if state in CLOSED_STATES:
            raise HubRefusal(410, state, f"the portal is {state}")
        return bytes(owner)

    def _require_owner(self, caller: Caller, portal: bytes, what: str) -> None:
        if self._portal(portal)[0] != self.require_device(caller):
            raise HubRefusal(403, "forbidden", f"only the portal's owner {what}")

    def create_portal(self, caller: Caller, portal: bytes, expires_ns: int | None, now_ns: int) -> None:
        identity = self.require_device(caller)
        with self._txn() as db:
            if (
                db.execute(
                    "INSERT OR IGNORE INTO portals (id, owner, created_ns, expires_ns) VALUES (?, ?, ?, ?)",
                    (portal, identity, now_ns, expires_ns),
                ).rowcount
                == 0
            ):
                owner = db.execute("SELECT owner FROM portals WHERE id = ?", (portal,)).fetchone()[0]
                if owner != identity:
                    raise HubRefusal(409, "exists", "a portal with this id already exists")

    def set_policy(self, caller: Caller, portal: bytes, fields: dict[str, Any], now_ns: int) -> dict[str, Any]:
        self._require_owner(caller, portal, "sets its policy")
        if self.portal_state(portal, now_ns) == "deleted":
            raise HubRefusal(410, "deleted", "the portal is deleted: restore it first")
        with self._txn() as db:
            if "expires_ns" in fields:
                db.execute("UPDATE portals SET expires_ns = ? WHERE id = ?", (fields["expires_ns"], portal))
            if "active" in fields:
                db.execute(
                    "UPDATE portals SET deactivated_ns = ? WHERE id = ?",
                    (None if fields["active"] else now_ns, portal),
                )
        return self.portal_info(caller, portal, now_ns)

    def delete_portal(self, caller: Caller, portal: bytes, now_ns: int) -> dict[str, Any]:
        """Close the portal to everyone and release its objects once the grace period ends (restorable until)."""
        self._require_owner(caller, portal, "deletes it")
        with self._txn() as db:
            db.execute("UPDATE portals SET deleted_ns = coalesce(deleted_ns, ?) WHERE id = ?", (now_ns, portal))
        return self.portal_info(caller, portal, now_ns)

    def restore_portal(self, caller: Caller, portal: bytes, now_ns: int) -> dict[str, Any]:
        """Undo a deletion, and an expiry that passed, while the grace period lasts."""
        self._require_owner(caller, portal, "restores it")
        expires = self._portal(portal)[2]
        release = self.release_ns(portal)
        if release is not None and now_ns >= release:
            raise HubRefusal(410, "released", "the portal's grace period is over: its objects were released")
        with self._txn() as db:
            db.execute("UPDATE portals SET deleted_ns = NULL WHERE id = ?", (portal,))
            if expires is not None and now_ns >= expires:
                db.execute("UPDATE portals SET expires_ns = NULL WHERE id = ?", (portal,))
        return self.portal_info(caller, portal, now_ns)

    def portal_info(self, caller: Caller, portal: bytes, now_ns: int) -> dict[str, Any]:
        identity = self.require_device(caller)
        owner, created, expires, _, deleted = self._portal(portal)
        member = self._one("SELECT write FROM members WHERE portal = ? AND identity = ?", portal, identity)
        if owner != identity and member is None:
            raise HubRefusal(403, "forbidden", "this identity may not read the portal")
        head = self._one("SELECT max(version) FROM roots WHERE portal = ?", portal)[0]
        return {
            "id": portal.hex(),
            "owner": owner.hex(),
            "created_ns": created,
            "expires_ns": expires,
            "state": self.portal_state(portal, now_ns),
            "deleted_ns": deleted,
            "release_ns": self.release_ns(portal),
            "head": head or 0,
            "role": "owner" if owner == identity else ("writer" if member[0] else "reader"),
        }

    def portals(self, caller: Caller, now_ns: int) -> list[dict[str, Any]]:
        identity = self.require_device(caller)
        ids = self._all(
            "SELECT id FROM portals WHERE owner = ? UNION SELECT portal FROM members WHERE identity = ?",
            identity,
            identity,
        )
        return [self.portal_info(caller, row[0], now_ns) for row in ids]

    # root records

    def publish(self, caller: Caller, portal: bytes, record_bytes: bytes, now_ns: int) -> dict[str, Any]:
        owner = self._access(caller, portal, now_ns, write=True)
        try:
            record = RootRecord.from_bytes(record_bytes)
        except (BadSignature, CorruptObject) as exc:
            raise HubRefusal(400, "bad-record", str(exc)) from None
        if record.portal != portal:
            raise HubRefusal(400, "bad-record", "the record names another portal")
        if record.device != caller.key:
            raise HubRefusal(403, "forbidden", "a record must be signed by the device that publishes it")
        writer = self._one("SELECT identity FROM devices WHERE device = ? AND revoked_ns IS NULL", record.device)
        if writer is None:
            raise HubRefusal(403, "forbidden", "the record's device may not write")
        with self._txn() as db:
            head = db.execute(
                "SELECT version, record_id, record FROM roots WHERE portal = ? ORDER BY version DESC LIMIT 1", (portal,)
            ).fetchone()
            head_version, head_id = (0, None) if head is None else (head[0], head[1])
            if record.version != head_version + 1 or record.parent != head_id:
                raise HubRefusal(
                    409,
                    "stale-parent",
                    f"the portal is at version {head_version}; this record builds on another",
                    {"head": head_version, "record": head[2].hex() if head else None},
                )
            db.execute(
                "INSERT INTO roots VALUES (?, ?, ?, ?)", (portal, record.version, record_bytes, record.record_id)
            )
        del owner
        return {"version": record.version}

    def roots(self, caller: Caller, portal: bytes, after: int, now_ns: int) -> list[str]:
        self._access(caller, portal, now_ns)
        return [
            r[0].hex()
            for r in self._all(
                "SELECT record FROM roots WHERE portal = ? AND version > ? ORDER BY version", portal, after
            )
        ]

    # members

    def set_member(
        self,
        caller: Caller,
        portal: bytes,
        member: bytes,
        wrapped: bytes,
        write: bool,
        write_sig: bytes | None,
        now_ns: int,
    ) -> None:
        """``write_sig``: the owner identity's signature that ``member`` may write (devices check it, not the
        hub's word)."""
        self._require_owner(caller, portal, "shares it")
        with self._txn() as db:
            db.execute(
                "INSERT OR REPLACE INTO members (portal, identity, wrapped, write, write_sig) VALUES (?, ?, ?, ?, ?)",
                (portal, member, wrapped, int(write), write_sig if write else None),
            )

    def remove_member(self, caller: Caller, portal: bytes, member: bytes) -> None:
        self._require_owner(caller, portal, "unshares it")
        with self._txn() as db:
            if db.execute("DELETE FROM members WHERE portal = ? AND identity = ?", (portal, member)).rowcount == 0:
                raise HubRefusal(404, "not-found", "that identity is not a member")

    def members(self, caller: Caller, portal: bytes, now_ns: int) -> list[dict[str, Any]]:
        self._access(caller, portal, now_ns)
        return [
            {"identity": i.hex(), "wrapped": w.hex(), "write": bool(wr), "write_sig": (sig or b"").hex()}
            for i, w, wr, sig in self._all(
                "SELECT identity, wrapped, write, write_sig FROM members WHERE portal = ?", portal
            )
        ]

    # links

    def create_link(
        self, caller: Caller, portal: bytes, link: bytes, wrapped: bytes, redeem_key: bytes, policy: dict[str, Any]
    ) -> None:
        """``redeem_key``: the public key the link's secret derives; every redeem must be signed by it."""
        self._require_owner(caller, portal, "makes links")
        with self._txn() as db:
            db.execute(
                "INSERT INTO links (id, portal, wrapped, expires_ns, max_downloads, window, redeem_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (link, portal, wrapped, policy.get("expires_ns"), policy.get("max_downloads"), policy.get("window"),
                 redeem_key),
            )  # fmt: skip

    def revoke_link(self, caller: Caller, link: bytes) -> None:
        identity = self.require_device(caller)
        row = self._one("SELECT p.owner FROM links l JOIN portals p ON p.id = l.portal WHERE l.id = ?", link)
        if row is None or row[0] != identity:
            raise HubRefusal(404, "not-found", "no such link of this identity")
        with self._txn() as db:
            db.execute("UPDATE links SET revoked = 1 WHERE id = ?", (link,))

    def redeem(self, caller: Caller, link: bytes, proof: bytes | None, now_ns: int) -> dict[str, Any]:
        """Release a link's wrapped key and the portal's head, counting one download, while the policy holds and
        ``proof`` shows that the caller knows the link's secret (a link made before revision 3 has no redeem key,
        and needs none)."""
        identity = self.require_device(caller)
        with self._txn() as db:
            row = db.execute(
                "SELECT portal, wrapped, expires_ns, max_downloads, window, downloads, revoked, redeem_key "
                "FROM links WHERE id = ?",
                (link,),
            ).fetchone()
            if row is None:
                raise HubRefusal(404, "not-found", "no such link")
            portal, wrapped, expires, max_downloads, window, downloads, revoked, redeem_key = row
            if redeem_key is not None:  # before anything is counted: the link id alone redeems nothing
                try:
                    verify_signature(redeem_key, proof or b"", DOMAIN_LINK_REDEEM + link + caller.key, "redeem")
                except BadSignature:
                    raise HubRefusal(403, "bad-proof", "the redeem does not prove the link's secret") from None
            if revoked:
                raise HubRefusal(410, "revoked", "the link has been revoked")
            if expires is not None and now_ns >= expires:
                raise HubRefusal(410, "expired", "the link has expired")
            if max_downloads is not None and downloads >= max_downloads:
                raise HubRefusal(410, "exhausted", f"the link's {max_downloads} downloads are used up")
            if not _window_allows(window, now_ns):
                raise HubRefusal(403, "outside-window", f"the link opens only during {window} UTC")
            prow = db.execute(
                "SELECT expires_ns, deactivated_ns, deleted_ns FROM portals WHERE id = ?", (portal,)
            ).fetchone()
            if prow[1] is not None or prow[2] is not None or (prow[0] is not None and now_ns >= prow[0]):
                raise HubRefusal(410, "expired", "the portal is no longer available")
            db.execute("UPDATE links SET downloads = downloads + 1 WHERE id = ?", (link,))
            db.execute("INSERT OR IGNORE INTO readers VALUES (?, ?)", (portal, identity))
            records = db.execute("SELECT record FROM roots WHERE portal = ? ORDER BY version", (portal,)).fetchall()
        return {"portal": portal.hex(), "wrapped": wrapped.hex(), "roots": [r[0].hex() for r in records]}

    # edge admission (the operator's, through `portal-hub edge`: no route of the API admits an edge)

    def admit_edge(self, key: bytes, operator: str, now_ns: int) -> None:
        """Admit ``key`` as an edge run by ``operator`` ("": its own operator), or admit it again after removal."""
        with self._txn() as db:
            db.execute(
                "INSERT INTO admitted (key, operator, admitted_ns) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE "
                "SET operator = excluded.operator, admitted_ns = excluded.admitted_ns, removed_ns = NULL",
                (key, operator, now_ns),
            )
            db.execute("DELETE FROM waiting WHERE key = ?", (key,))

    def remove_edge(self, key: bytes, now_ns: int) -> bool:
        """Take an edge's admission back: it can no longer register or read the directory, and leaves the
        edges devices are given (what it holds is replaced by the devices' repair). False: it was not admitted."""
        with self._txn() as db:
            return bool(
                db.execute(
                    "UPDATE admitted SET removed_ns = ? WHERE key = ? AND removed_ns IS NULL", (now_ns, key)
                ).rowcount
            )

    def admissions(self, now_ns: int) -> list[dict[str, Any]]:
        """Every edge the operator admitted or removed, and those waiting to be admitted, with when each was
        last seen (for `portal-hub edge ls`)."""
        found = [
            {"key": k.hex(), "state": "removed" if removed is not None else "admitted", "operator": op,
             "address": a, "last_seen_ns": seen, "live": seen is not None and seen > now_ns - self.edge_live_ns}
            for k, op, removed, a, seen in self._all(
                "SELECT a.key, a.operator, a.removed_ns, e.address, e.last_seen_ns "
                "FROM admitted a LEFT JOIN edges e ON e.key = a.key ORDER BY a.admitted_ns"
            )
        ]  # fmt: skip
        found += [
            {"key": k.hex(), "state": "waiting", "operator": None, "address": a, "last_seen_ns": seen,
             "live": seen > now_ns - self.edge_live_ns}
            for k, a, seen in self._all("SELECT key, address, last_ns FROM waiting ORDER BY first_ns")
        ]  # fmt: skip
        return found

    # edges and locations

    def register_edge(
        self, caller: Caller, address: str, transports: list[str], stat: dict[str, int], now_ns: int
    ) -> None:
        """Register or heartbeat an admitted edge. Any other key is refused, and remembered as waiting (with
        the address it gave) so that the operator sees it in `portal-hub edge ls`."""
        with self._txn() as db:
            row = db.execute("SELECT removed_ns FROM admitted WHERE key = ?", (caller.key,)).fetchone()
            if row is None:  # never admitted: waiting (one the operator removed is not asked about again)
                db.execute(
                    "INSERT INTO waiting VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET address = excluded.address, last_ns = excluded.last_ns",
                    (caller.key, address[:200], now_ns, now_ns),
                )
                db.execute(
                    "DELETE FROM waiting WHERE key NOT IN (SELECT key FROM waiting ORDER BY last_ns DESC LIMIT ?)",
                    (MAX_WAITING,),
                )
            elif row[0] is None:
                db.execute(
                    "INSERT OR REPLACE INTO edges VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (caller.key, address, ",".join(transports), stat["capacity"], stat["used"], stat["objects"],
                     now_ns),
                )  # fmt: skip
                return
        raise HubRefusal(
            403, "not-admitted", f"this edge is not admitted at the hub: its operator runs "
            f"`portal-hub edge approve {caller.key.hex()}`"
        )  # fmt: skip

    def edges(self, caller: Caller, now_ns: int) -> list[dict[str, Any]]:
        """The admitted edges seen in the last ``edge_live_ns``, with their operators (devices and edges only)."""
        self.require_member_of_fabric(caller)
        return [
            {"key": k.hex(), "address": a, "transports": t.split(","), "capacity": c, "used": u, "objects": o,
             "operator": op or k.hex()}
            for k, a, t, c, u, o, op in self._all(
                "SELECT e.key, e.address, e.transports, e.capacity, e.used, e.objects, a.operator FROM edges e "
                "JOIN admitted a ON a.key = e.key AND a.removed_ns IS NULL WHERE e.last_seen_ns > ? ORDER BY e.key",
                now_ns - self.edge_live_ns,
            )
        ]  # fmt: skip

    def add_locations(self, caller: Caller, portal: bytes, edge: bytes, cids: list[bytes], now_ns: int) -> None:
        self._access(caller, portal, now_ns, write=True)
        if len(cids) > MAX_LOCATIONS:
            raise HubRefusal(413, "too-large", f"at most {MAX_LOCATIONS} ids per request")
        with self._txn() as db:
            db.executemany("INSERT OR IGNORE INTO locations VALUES (?, ?, ?)", [(c, edge, portal) for c in cids])

    def locations(self, caller: Caller, cids: list[bytes]) -> dict[str, list[str]]:
        """Where ``cids`` are, as recorded for the portals the caller may read: those its identity owns, is a
        member of, or opened a link to. A location recorded for any other portal (a stranger's record that
        names someone else's object at an edge of its choice) is not the caller's to believe."""
        identity = self.require_device(caller)
        if len(cids) > MAX_LOCATIONS:
            raise HubRefusal(413, "too-large", f"at most {MAX_LOCATIONS} ids per request")
        readable = [
            r[0]
            for r in self._all(  # once for the request, not once for each of up to MAX_LOCATIONS ids
                "SELECT id FROM portals WHERE owner = ? UNION SELECT portal FROM members WHERE identity = ? "
                "UNION SELECT portal FROM readers WHERE identity = ?",
                identity,
                identity,
                identity,
            )
        ]
        found: dict[str, list[str]] = {}
        if not readable:
            return found
        marks = ",".join("?" * len(readable))
        for cid in cids:
            edges = self._all(
                f"SELECT DISTINCT edge FROM locations WHERE cid = ? AND portal IN ({marks})", cid, *readable
            )
            if edges:
                found[cid.hex()] = [e[0].hex() for e in edges]
        return found

    def garbage(self, caller: Caller, now_ns: int) -> list[str]:
        """Ids this edge holds only for portals whose grace period after deletion or expiry has ended.

        An id that any other portal's locations name is never garbage, whatever
        that portal's state: a deactivated portal keeps every object. The edge
        deletes what it is told only after holding the ids condemned and asking
        again (section 13, "Garbage"), so a location recorded meanwhile saves it.
        """
        self.require_edge(caller)
        released = self._released(now_ns)
        if not released:
            return []
        marks = ",".join("?" * len(released))
        rows = self._all(
            f"SELECT DISTINCT cid FROM locations WHERE edge = ? AND portal IN ({marks}) AND cid NOT IN "
            f"(SELECT cid FROM locations WHERE portal NOT IN ({marks}))",
            caller.key,
            *released,
            *released,
        )
        return [r[0].hex() for r in rows]

    def forget_locations(self, caller: Caller, cids: list[bytes], now_ns: int) -> None:
        """The edge deleted ``cids``: forget where released portals had them there (other portals' rows stay)."""
        self.require_edge(caller)
        released = self._released(now_ns)
        if not released:
            return
        marks = ",".join("?" * len(released))
        with self._txn() as db:
            db.executemany(
                f"DELETE FROM locations WHERE cid = ? AND edge = ? AND portal IN ({marks})",
                [(c, caller.key, *released) for c in cids],
            )

    # damaged copies

    def report_damage(self, caller: Caller, edge: bytes, cids: list[bytes], now_ns: int) -> None:
        """A device read copies on ``edge`` that did not match their ids: the edge is asked to check them."""
        self.require_device(caller)
        if len(cids) > MAX_LOCATIONS:
            raise HubRefusal(413, "too-large", f"at most {MAX_LOCATIONS} ids per request")
        log.warning(
            "edge %s: %d damaged copies reported by device %s", edge.hex()[:16], len(cids), caller.key.hex()[:16]
        )
        with self._txn() as db:
            db.executemany("INSERT OR IGNORE INTO suspects VALUES (?, ?, ?)", [(c, edge, now_ns) for c in cids])

    def take_suspects(self, caller: Caller) -> list[str]:
        """The copies readers reported damaged on this edge, handed over once: the edge checks each itself."""
        self.require_edge(caller)
        with self._txn() as db:
            rows = db.execute(
                "SELECT cid FROM suspects WHERE edge = ? ORDER BY reported_ns LIMIT ?", (caller.key, MAX_SUSPECTS)
            ).fetchall()
            db.executemany("DELETE FROM suspects WHERE cid = ? AND edge = ?", [(r[0], caller.key) for r in rows])
        return [r[0].hex() for r in rows]
