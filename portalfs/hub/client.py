"""Clients of the hub API (docs/design.md, section 13): ``HubClient`` for a device (blocking) and
``EdgeHubClient`` for an edge (trio).

Each method is one route of the hub's table (``hub/app.py``), named by the
``@route`` it carries, with typed arguments and results; a test holds the two
clients and the table to each other. No hub request is built anywhere else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from ..errors import Conflict, NotFound, PortalError, Refused, Unreachable
from ..keys import DeviceKey
from .auth import sign_request

log = logging.getLogger("portal.hub")

__all__ = [
    "HubClient",
    "EdgeHubClient",
    "pinned",
    "fetch_certificate",
    "certificate_fingerprint",
    "HubConflict",
    "HubRefused",
    "DeviceInfo",
    "GenerationAnswer",
    "DeviceCert",
    "IdentityKey",
    "Keyring",
    "PortalInfo",
    "Member",
    "Listed",
    "Redeemed",
    "EdgeInfo",
    "route",
    "LOCATION_BATCH",
]

TIMEOUT = httpx.Timeout(10.0, read=40.0)  # reads cover the 25 s long-poll
CONNECT_SECONDS = 10.0  # to fetch an https hub's certificate for pinning
LOCATION_BATCH = 5000  # ids in one locations request (the hub takes up to 10,000)

F = TypeVar("F", bound=Callable[..., Any])


def route(method: str, path: str) -> Callable[[F], F]:
    """Mark a client method as the one that calls ``method path`` (checked against the hub's table)."""

    def mark(fn: F) -> F:
        fn.route = (method, path)  # type: ignore[attr-defined]
        return fn

    return mark


class HubConflict(Conflict):
    def __init__(self, message: str, extra: dict[str, Any]) -> None:
        super().__init__(message)
        self.extra = extra


class HubRefused(Refused):
    """The hub refused (401, 403, 410): ``code`` is its stable error code, e.g. ``deleted`` or ``revoked``."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


# results


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    device: bytes
    name: str
    enrolled_ns: int
    revoked_ns: int | None
    cert: bytes
    box: bytes | None = None  # its box key (X25519) and the device's signature of it, once published
    box_sig: bytes | None = None


@dataclass(frozen=True, slots=True)
class GenerationAnswer:
    """The identity's newest key generation at the hub (section 2): None when it has none past 0."""

    record: bytes
    sealed: bytes | None  # the seed sealed to the calling device, once one was
    recovery: bytes  # the seed sealed to the identity's recovery key
    unsealed: frozenset[bytes]  # the identity's devices with a box key it is not sealed to yet


@dataclass(frozen=True, slots=True)
class DeviceCert:
    device: bytes
    cert: bytes
    revoked_ns: int | None


@dataclass(frozen=True, slots=True)
class IdentityKey:
    identity: bytes
    agreement: bytes
    sig: bytes  # by the identity, over generations.agreement_message(generation, agreement)
    generation: int = 0


@dataclass(frozen=True, slots=True)
class Keyring:
    version: int
    blob: bytes  # empty before the first


@dataclass(frozen=True, slots=True)
class PortalInfo:
    id: bytes
    owner: bytes
    created_ns: int
    expires_ns: int | None
    state: str  # created, active, expired, deactivated, deleted
    deleted_ns: int | None
    release_ns: int | None  # when a deleted or expired portal's objects are released
    head: int
    role: str  # owner, writer, reader

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> PortalInfo:
        return cls(
            bytes.fromhex(v["id"]), bytes.fromhex(v["owner"]), v["created_ns"], v.get("expires_ns"), v["state"],
            v.get("deleted_ns"), v.get("release_ns"), v["head"], v["role"],
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id.hex(), "owner": self.owner.hex(), "created_ns": self.created_ns,
            "expires_ns": self.expires_ns, "state": self.state, "deleted_ns": self.deleted_ns,
            "release_ns": self.release_ns, "head": self.head, "role": self.role,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Listed:
    """A device in the hub's directory, as an edge sees it."""

    status: str  # "active" or "revoked"
    identity: bytes


@dataclass(frozen=True, slots=True)
class Member:
    identity: bytes
    wrapped: bytes
    write: bool
    write_sig: bytes = b""  # the owner's signature of the write grant (empty: none)


@dataclass(frozen=True, slots=True)
class Redeemed:
    portal: bytes
    wrapped: bytes
    roots: list[bytes]


@dataclass(frozen=True, slots=True)
class EdgeInfo:
    key: bytes
    address: str  # HOST:PORT
    transports: list[str]
    capacity: int
    used: int
    objects: int
    operator: str = ""  # who runs it, as the hub's operator admitted it: placement spreads copies across them


# the wire


def _error(url: str, response: httpx.Response) -> PortalError:
    try:
        body = response.json()
        code, message = body.get("error", "error"), body.get("message", response.text)
    except ValueError:
        body, code, message = {}, "error", response.text[:200]
    text = f"hub {url}: {message}"
    if response.status_code == 409:
        return HubConflict(text, body)
    if response.status_code == 404:
        return NotFound(text)
    if response.status_code in (401, 403, 410):
        return HubRefused(text, str(code))
    return Refused(f"{text} ({code}, HTTP {response.status_code})")


class _Signer:
    def __init__(self, url: str, public: bytes, sign: Callable[[bytes], bytes]) -> None:
        self.url = url.rstrip("/")
        self.public = public
        self.sign = sign

    def prepare(self, method: str, path: str, payload: dict[str, Any] | None) -> tuple[str, bytes, dict[str, str]]:
        body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        headers = sign_request(self.sign, self.public, method, path, body)
        headers["Content-Type"] = "application/json"
        return self.url + path, body, headers

    def result(self, response: httpx.Response) -> Any:
        if response.status_code != 200:
            raise _error(self.url, response)
        return response.json().get("result")


def _batches(cids: list[bytes]) -> list[list[str]]:
    return [[c.hex() for c in cids[i : i + LOCATION_BATCH]] for i in range(0, len(cids), LOCATION_BATCH)]


def pinned(pem: str | None, url: str = "https:") -> ssl.SSLContext | bool:
    """How a client checks an https hub: against exactly the certificate pinned at `hub add` (``pem``), or, with
    none pinned, the system's authorities (loaded once here: a client made per request would load them each
    time). A plain http hub (on a trusted network) has no certificate to check: its requests are signed."""
    if not url.startswith("https:"):
        return False
    if pem is None:
        return ssl.create_default_context()
    context = ssl.create_default_context(cadata=pem)
    context.check_hostname = False  # the pinned certificate is the trust anchor itself, whatever names it holds
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a leaf an authority issued counts alone too
    return context


def fetch_certificate(url: str) -> str:
    """The certificate an https hub presents now (PEM), to pin on first use; Unreachable if it does not answer."""
    parts = urlsplit(url)
    try:
        return ssl.get_server_certificate((parts.hostname or "", parts.port or 443), timeout=CONNECT_SECONDS)
    except (OSError, ValueError) as exc:
        raise Unreachable(f"hub {url}: no TLS certificate to pin ({exc})") from exc


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def certificate_public_key(pem: str) -> bytes:
    """The certificate's public key (DER SubjectPublicKeyInfo): what a device pins of an https hub."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = x509.load_pem_x509_certificate(pem.encode()).public_key()
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def certificate_fingerprint(pem: str) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


class HubClient:
    """A device's blocking client: one method per route of the API. ``pin``: an https hub's certificate (PEM),
    pinned at `hub add`: no other is accepted."""

    def __init__(self, url: str, device: DeviceKey, pin: str | None = None) -> None:
        self._signer = _Signer(url, device.public, device.sign)
        self._pin = pin
        self.url = self._signer.url
        self._http = httpx.Client(timeout=TIMEOUT, verify=pinned(pin, self.url))

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        url, body, headers = self._signer.prepare(method, path, payload)
        try:
            try:
                response = self._http.request(method, url, content=body, headers=headers)
            except httpx.ConnectError as exc:
                if not (self._pin and _caused_by(exc, ssl.SSLCertVerificationError)):
                    raise
                self._renewed()  # a certificate the pin does not name: a renewal of the same key passes
                response = self._http.request(method, url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise Unreachable(f"hub {self.url}: {exc}") from exc
        return self._signer.result(response)

    def _renewed(self) -> None:
        """What is pinned is the hub's key: a certificate renewed for the same key (an ACME renewal that keeps
        its key) is taken in the pinned one's place for this client's life; one of another key is refused."""
        assert self._pin is not None
        presented = fetch_certificate(self.url)
        if certificate_public_key(presented) != certificate_public_key(self._pin):
            raise Unreachable(
                f"hub {self.url}: its certificate has another key than the one pinned at `hub add` (sha256 "
                f"{certificate_fingerprint(presented)}): someone else answers there, or the hub has a new key "
                "(then `portalctl hub add` it again)"
            )
        log.info("hub %s: a renewed certificate of the pinned key (sha256 %s)", self.url,
                 certificate_fingerprint(presented))  # fmt: skip
        self._http.close()
        self._pin = presented
        self._http = httpx.Client(timeout=TIMEOUT, verify=pinned(presented))

    # identities and devices

    @route("POST", "/v1/devices")
    def enroll(self, cert: bytes) -> None:
        self._call("POST", "/v1/devices", {"cert": cert.hex()})

    @route("GET", "/v1/devices")
    def devices(self) -> list[DeviceInfo]:
        def raw(value: str | None) -> bytes | None:
            return None if value is None else bytes.fromhex(value)

        return [
            DeviceInfo(
                bytes.fromhex(r["device"]),
                r["name"],
                r["enrolled_ns"],
                r["revoked_ns"],
                bytes.fromhex(r["cert"]),
                raw(r.get("box")),
                raw(r.get("box_sig")),
            )  # fmt: skip
            for r in self._call("GET", "/v1/devices")
        ]

    @route("PUT", "/v1/devices/box")
    def set_box(self, box: bytes, sig: bytes) -> None:
        self._call("PUT", "/v1/devices/box", {"box": box.hex(), "sig": sig.hex()})

    @route("GET", "/v1/generation")
    def generation(self) -> GenerationAnswer | None:
        r = self._call("GET", "/v1/generation")
        if r["record"] is None:
            return None
        sealed = None if r["sealed"] is None else bytes.fromhex(r["sealed"])
        return GenerationAnswer(bytes.fromhex(r["record"]), sealed, bytes.fromhex(r["recovery"]),
                                frozenset(bytes.fromhex(d) for d in r["unsealed"]))  # fmt: skip

    @route("PUT", "/v1/generation")
    def put_generation(self, record: bytes, recovery: bytes, seals: dict[bytes, bytes]) -> None:
        self._call("PUT", "/v1/generation", {"record": record.hex(), "recovery": recovery.hex(),
                                             "seals": {d.hex(): s.hex() for d, s in seals.items()}})  # fmt: skip

    @route("POST", "/v1/generation/seals")
    def add_seals(self, number: int, seals: dict[bytes, bytes]) -> None:
        self._call("POST", "/v1/generation/seals", {"number": number,
                                                    "seals": {d.hex(): s.hex() for d, s in seals.items()}})  # fmt: skip

    @route("POST", "/v1/devices/{device}/revoke")
    def revoke_device(self, device: bytes, sig: bytes) -> None:
        self._call("POST", f"/v1/devices/{device.hex()}/revoke", {"sig": sig.hex()})

    @route("PUT", "/v1/identity")
    def set_agreement(self, agreement: bytes, sig: bytes) -> None:
        self._call("PUT", "/v1/identity", {"agreement": agreement.hex(), "sig": sig.hex()})

    @route("GET", "/v1/identities/{identity}")
    def identity(self, identity: bytes) -> IdentityKey:
        r = self._call("GET", f"/v1/identities/{identity.hex()}")
        return IdentityKey(bytes.fromhex(r["identity"]), bytes.fromhex(r["agreement"]), bytes.fromhex(r["sig"]),
                           r.get("generation", 0))  # fmt: skip

    @route("GET", "/v1/identities/{identity}/devices")
    def identity_devices(self, identity: bytes) -> list[DeviceCert]:
        return [
            DeviceCert(bytes.fromhex(r["device"]), bytes.fromhex(r["cert"]), r["revoked_ns"])
            for r in self._call("GET", f"/v1/identities/{identity.hex()}/devices")
        ]

    # approving a new device

    @route("POST", "/v1/provisioning")
    def request_provisioning(self, box: bytes) -> bytes:
        """Ask to be approved (this client's key is the new device's); the request's id."""
        return bytes.fromhex(self._call("POST", "/v1/provisioning", {"box": box.hex()})["id"])

    @route("GET", "/v1/provisioning/{request}")
    def provisioning(self, request: bytes) -> tuple[bytes, bytes]:
        """(device key, box key) the new device asked with."""
        r = self._call("GET", f"/v1/provisioning/{request.hex()}")
        return bytes.fromhex(r["device"]), bytes.fromhex(r["box"])

    @route("POST", "/v1/provisioning/{request}/approve")
    def approve_provisioning(self, request: bytes, cert: bytes, sealed: bytes) -> None:
        self._call("POST", f"/v1/provisioning/{request.hex()}/approve", {"cert": cert.hex(), "sealed": sealed.hex()})

    @route("GET", "/v1/provisioning/{request}/answer")
    def provisioning_answer(self, request: bytes) -> tuple[bytes, bytes] | None:
        """(certificate, sealed keys) once approved; None while the request waits."""
        r = self._call("GET", f"/v1/provisioning/{request.hex()}/answer")
        return None if r is None else (bytes.fromhex(r["cert"]), bytes.fromhex(r["sealed"]))

    # keyring

    @route("GET", "/v1/keyring")
    def keyring(self) -> Keyring:
        r = self._call("GET", "/v1/keyring")
        return Keyring(r["version"], bytes.fromhex(r["blob"]))

    @route("PUT", "/v1/keyring")
    def put_keyring(self, version: int, blob: bytes) -> None:
        """Compare-and-swap: ``version`` is the stored one plus one (HubConflict otherwise)."""
        self._call("PUT", "/v1/keyring", {"version": version, "blob": blob.hex()})

    # portals

    @route("GET", "/v1/portals")
    def portals(self) -> list[PortalInfo]:
        return [PortalInfo.from_json(r) for r in self._call("GET", "/v1/portals")]

    @route("PUT", "/v1/portals/{portal}")
    def create_portal(self, portal: bytes, expires_ns: int | None = None) -> None:
        """Create the portal for this identity (nothing happens if it exists and is this identity's)."""
        self._call("PUT", f"/v1/portals/{portal.hex()}", {} if expires_ns is None else {"expires_ns": expires_ns})

    @route("GET", "/v1/portals/{portal}")
    def portal(self, portal: bytes) -> PortalInfo:
        return PortalInfo.from_json(self._call("GET", f"/v1/portals/{portal.hex()}"))

    @route("PATCH", "/v1/portals/{portal}")
    def set_policy(self, portal: bytes, policy: dict[str, int | bool | None]) -> PortalInfo:
        """``policy``: ``expires_ns`` (None: never) and/or ``active``."""
        return PortalInfo.from_json(self._call("PATCH", f"/v1/portals/{portal.hex()}", dict(policy)))

    @route("DELETE", "/v1/portals/{portal}")
    def delete_portal(self, portal: bytes) -> PortalInfo:
        return PortalInfo.from_json(self._call("DELETE", f"/v1/portals/{portal.hex()}"))

    @route("POST", "/v1/portals/{portal}/restore")
    def restore_portal(self, portal: bytes) -> PortalInfo:
        return PortalInfo.from_json(self._call("POST", f"/v1/portals/{portal.hex()}/restore"))

    # root records

    @route("POST", "/v1/portals/{portal}/roots")
    def publish(self, portal: bytes, record: bytes) -> int:
        """Publish a root record on top of the head (HubConflict when it is not); return its version."""
        return int(self._call("POST", f"/v1/portals/{portal.hex()}/roots", {"record": record.hex()})["version"])

    @route("GET", "/v1/portals/{portal}/roots")
    def roots(self, portal: bytes, after: int = 0) -> list[bytes]:
        return [bytes.fromhex(r) for r in self._call("GET", f"/v1/portals/{portal.hex()}/roots?after={after}")]

    @route("GET", "/v1/portals/{portal}/events")
    def wait_roots(self, portal: bytes, after: int) -> list[bytes]:
        """The root records after ``after``, waiting up to 25 s for one (long-poll)."""
        return [bytes.fromhex(r) for r in self._call("GET", f"/v1/portals/{portal.hex()}/events?after={after}")]

    # members and links

    @route("GET", "/v1/portals/{portal}/members")
    def members(self, portal: bytes) -> list[Member]:
        return [
            Member(
                bytes.fromhex(r["identity"]),
                bytes.fromhex(r["wrapped"]),
                bool(r["write"]),
                bytes.fromhex(r.get("write_sig", "")),
            )
            for r in self._call("GET", f"/v1/portals/{portal.hex()}/members")
        ]

    @route("PUT", "/v1/portals/{portal}/members/{identity}")
    def set_member(
        self, portal: bytes, identity: bytes, wrapped: bytes, write: bool, write_sig: bytes | None = None
    ) -> None:
        """``write_sig``: with ``write``, the owner identity's Ed25519 over DOMAIN_WRITE_GRANT || portal ||
        identity."""
        body = {"wrapped": wrapped.hex(), "write": write, "write_sig": (write_sig or b"").hex()}
        self._call("PUT", f"/v1/portals/{portal.hex()}/members/{identity.hex()}", body)

    @route("DELETE", "/v1/portals/{portal}/members/{identity}")
    def remove_member(self, portal: bytes, identity: bytes) -> None:
        self._call("DELETE", f"/v1/portals/{portal.hex()}/members/{identity.hex()}")

    @route("POST", "/v1/portals/{portal}/links")
    def create_link(
        self, portal: bytes, link: bytes, wrapped: bytes, redeem_key: bytes, policy: dict[str, int | str]
    ) -> None:
        """``redeem_key``: the public key the link's secret derives. ``policy``: ``expires_ns``, ``max_downloads``
        and ``window`` (HH:MM-HH:MM UTC), each optional."""
        body = {"link": link.hex(), "wrapped": wrapped.hex(), "redeem_key": redeem_key.hex(), **policy}
        self._call("POST", f"/v1/portals/{portal.hex()}/links", body)

    @route("DELETE", "/v1/links/{link}")
    def revoke_link(self, link: bytes) -> None:
        self._call("DELETE", f"/v1/links/{link.hex()}")

    @route("POST", "/v1/links/{link}/redeem")
    def redeem(self, link: bytes, proof: bytes) -> Redeemed:
        """``proof``: the link's redeem key's signature of the link and this device (``grants.redeem_proof``)."""
        r = self._call("POST", f"/v1/links/{link.hex()}/redeem", {"proof": proof.hex()})
        return Redeemed(bytes.fromhex(r["portal"]), bytes.fromhex(r["wrapped"]), [bytes.fromhex(x) for x in r["roots"]])

    # edges, locations, damage

    @route("GET", "/v1/edges")
    def edges(self) -> list[EdgeInfo]:
        return [
            EdgeInfo(
                bytes.fromhex(r["key"]),
                r["address"],
                list(r["transports"]),
                r["capacity"],
                r["used"],
                r["objects"],
                str(r.get("operator") or r["key"]),
            )
            for r in self._call("GET", "/v1/edges")
        ]

    @route("POST", "/v1/portals/{portal}/locations")
    def add_locations(self, portal: bytes, edge: bytes, cids: list[bytes]) -> None:
        for batch in _batches(cids):
            self._call("POST", f"/v1/portals/{portal.hex()}/locations", {"edge": edge.hex(), "cids": batch})

    @route("POST", "/v1/locations")
    def locations(self, cids: list[bytes]) -> dict[bytes, list[bytes]]:
        found: dict[bytes, list[bytes]] = {}
        for batch in _batches(cids):
            answer = self._call("POST", "/v1/locations", {"cids": batch})
            found.update({bytes.fromhex(k): [bytes.fromhex(e) for e in v] for k, v in answer.items()})
        return found

    @route("POST", "/v1/damage")
    def report_damage(self, edge: bytes, cids: list[bytes]) -> None:
        for batch in _batches(cids):
            self._call("POST", "/v1/damage", {"edge": edge.hex(), "cids": batch})


class EdgeHubClient:
    """An edge's client (trio): its routes of the API, signed with the edge's key."""

    def __init__(self, url: str, public: bytes, sign: Callable[[bytes], bytes], pin: str | None = None) -> None:
        self._signer = _Signer(url, public, sign)
        self.url = self._signer.url
        self._verify = pinned(pin, self.url)

    async def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        url, body, headers = self._signer.prepare(method, path, payload)
        try:  # a connection per request: an edge asks a few times a minute
            async with httpx.AsyncClient(timeout=TIMEOUT, verify=self._verify) as http:
                response = await http.request(method, url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise Unreachable(f"hub {self.url}: {exc}") from exc
        return self._signer.result(response)

    @route("POST", "/v1/edges")
    async def register(self, address: str, transports: tuple[str, ...], used: int, objects: int) -> None:
        """Register, or heartbeat: the directory lists an edge seen in the last 60 s."""
        stat = {"capacity": 0, "used": used, "objects": objects}
        await self._call("POST", "/v1/edges", {"address": address, "transports": list(transports), "stat": stat})

    @route("GET", "/v1/directory/devices")
    async def device_directory(self) -> dict[bytes, Listed]:
        """Every enrolled device: "active" or "revoked", and the identity that enrolled it."""
        answer = await self._call("GET", "/v1/directory/devices")
        return {bytes.fromhex(k): Listed(v["status"], bytes.fromhex(v["identity"])) for k, v in answer.items()}

    @route("GET", "/v1/edges/garbage")
    async def garbage(self) -> list[bytes]:
        return [bytes.fromhex(c) for c in await self._call("GET", "/v1/edges/garbage")]

    @route("POST", "/v1/edges/forget")
    async def forget(self, cids: list[bytes]) -> None:
        for batch in _batches(cids):
            await self._call("POST", "/v1/edges/forget", {"cids": batch})

    @route("GET", "/v1/edges/suspects")
    async def suspects(self) -> list[bytes]:
        return [bytes.fromhex(c) for c in await self._call("GET", "/v1/edges/suspects")]
