"""Clients of the hub API: ``HubClient`` (a device, blocking) and ``EdgeDirectory`` (an edge, trio)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import trio

from ..errors import Conflict, NotFound, PortalError, Refused, Unreachable
from ..keys import DeviceKey
from ..store.base import ObjectStore
from .auth import sign_request

__all__ = ["HubClient", "EdgeDirectory", "HubConflict", "HubRefused"]

log = logging.getLogger("portal.hub")

TIMEOUT = httpx.Timeout(10.0, read=40.0)  # reads cover the 25 s long-poll
HEARTBEAT_SECONDS = 15.0
DIRECTORY_SECONDS = 10.0


class HubConflict(Conflict):
    def __init__(self, message: str, extra: dict[str, Any]) -> None:
        super().__init__(message)
        self.extra = extra


class HubRefused(Refused):
    """The hub refused (401, 403, 410): ``code`` is its stable error code, e.g. ``deleted`` or ``revoked``."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


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


class HubClient:
    """A device's blocking client; each method is one route of the API (hub/app.py)."""

    def __init__(self, url: str, device: DeviceKey) -> None:
        self._signer = _Signer(url, device.public, device.sign)
        self._http = httpx.Client(timeout=TIMEOUT)
        self.url = self._signer.url

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        url, body, headers = self._signer.prepare(method, path, payload)
        try:
            response = self._http.request(method, url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise Unreachable(f"hub {self.url}: {exc}") from exc
        return self._signer.result(response)

    # convenience wrappers used by the CLI and the sync engine

    def enroll(self, cert: bytes) -> Any:
        return self.call("POST", "/v1/devices", {"cert": cert.hex()})

    def edges(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/v1/edges"))

    def roots(self, portal: bytes, after: int = 0) -> list[bytes]:
        return [bytes.fromhex(r) for r in self.call("GET", f"/v1/portals/{portal.hex()}/roots?after={after}")]

    def wait_roots(self, portal: bytes, after: int) -> list[bytes]:
        return [bytes.fromhex(r) for r in self.call("GET", f"/v1/portals/{portal.hex()}/events?after={after}")]

    def publish(self, portal: bytes, record: bytes) -> Any:
        return self.call("POST", f"/v1/portals/{portal.hex()}/roots", {"record": record.hex()})

    def locations(self, cids: list[bytes]) -> dict[bytes, list[bytes]]:
        found: dict[bytes, list[bytes]] = {}
        for start in range(0, len(cids), 5000):
            batch = [c.hex() for c in cids[start : start + 5000]]
            answer = self.call("POST", "/v1/locations", {"cids": batch})
            found.update({bytes.fromhex(k): [bytes.fromhex(e) for e in v] for k, v in answer.items()})
        return found

    def report_damage(self, edge: bytes, cids: list[bytes]) -> None:
        for start in range(0, len(cids), 5000):
            self.call("POST", "/v1/damage", {"edge": edge.hex(), "cids": [c.hex() for c in cids[start : start + 5000]]})

    def add_locations(self, portal: bytes, edge: bytes, cids: list[bytes]) -> None:
        for start in range(0, len(cids), 5000):
            batch = [c.hex() for c in cids[start : start + 5000]]
            self.call("POST", f"/v1/portals/{portal.hex()}/locations", {"edge": edge.hex(), "cids": batch})


class EdgeDirectory:
    """An edge's view of the hub: it registers and heartbeats, and keeps the device directory fresh."""

    def __init__(self, url: str, key: Any) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        private = Ed25519PrivateKey.from_private_bytes(key.private)
        self._signer = _Signer(url, key.public, private.sign)
        self._devices: dict[bytes, str] = {}
        self._lock = threading.Lock()
        self._last_refresh = 0.0

    def _fetch_devices(self) -> dict[bytes, str]:
        url, body, headers = self._signer.prepare("GET", "/v1/directory/devices", None)
        with httpx.Client(timeout=TIMEOUT) as http:
            answer = self._signer.result(http.get(url, headers=headers))
        return {bytes.fromhex(k): v for k, v in answer.items()}

    def device_status(self, device: bytes) -> str | None:
        """Called from worker threads; an unknown device triggers one refresh (at most once a second)."""
        with self._lock:
            status = self._devices.get(device)
            stale = time.monotonic() - self._last_refresh > 1.0
        if status is None and stale:
            try:
                devices = self._fetch_devices()
            except (PortalError, httpx.HTTPError) as exc:
                log.warning("device directory: %s", exc)
                return None
            with self._lock:
                self._devices, self._last_refresh = devices, time.monotonic()
                status = devices.get(device)
        return status

    async def _call(self, http: httpx.AsyncClient, method: str, path: str, payload: dict[str, Any] | None) -> Any:
        url, body, headers = self._signer.prepare(method, path, payload)
        return self._signer.result(await http.request(method, url, content=body, headers=headers))

    async def request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        """One signed request as this edge (for the garbage pass: section 13, "Garbage")."""
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            try:
                return await self._call(http, method, path, payload)
            except httpx.HTTPError as exc:
                raise Unreachable(f"hub {self._signer.url}: {exc}") from exc

    async def run(
        self,
        address: str,
        transports: tuple[str, ...],
        store: ObjectStore,
        check: Callable[[list[bytes]], list[bool]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Register, then heartbeat, refresh the device directory and ``check`` the copies readers reported
        damaged, until cancelled."""
        started = False
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            while True:
                try:
                    stat = await trio.to_thread.run_sync(store.stat)
                    payload = {
                        "address": address,
                        "transports": list(transports),
                        "stat": {"capacity": 0, "used": stat.bytes, "objects": stat.objects},
                    }
                    await self._call(http, "POST", "/v1/edges", payload)
                    devices = await self._call(http, "GET", "/v1/directory/devices", None)
                    with self._lock:
                        self._devices = {bytes.fromhex(k): v for k, v in devices.items()}
                        self._last_refresh = time.monotonic()
                    suspects = [bytes.fromhex(c) for c in await self._call(http, "GET", "/v1/edges/suspects", None)]
                    if suspects:
                        intact = await trio.to_thread.run_sync(check, suspects)
                        log.info("checked %d copies readers reported damaged: %d were (removed)", len(suspects),
                                 intact.count(False))  # fmt: skip
                except (PortalError, httpx.HTTPError) as exc:
                    log.warning("hub: %s", exc)
                if not started:
                    started = True
                    task_status.started()
                await trio.sleep(min(HEARTBEAT_SECONDS, DIRECTORY_SECONDS))
