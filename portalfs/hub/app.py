"""The hub's HTTP API: JSON under /v1/, every request signed (auth.py), rules in state.py.

Each route is one line of the table ``ROUTES``; the OpenAPI document at
/v1/openapi.json is generated from the same table, so the two cannot drift.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..errors import BadSignature
from .auth import ClockSkew, check_signature, check_time, parse_headers
from .state import WINDOW, Caller, HubRefusal, HubState

__all__ = ["make_app", "LongPolls", "ROUTES"]

log = logging.getLogger("portal.hub")

MAX_BODY = 4 * 1024 * 1024
INT64_MAX = 2**63 - 1
MAX_SEALS = 1000  # devices one key generation is sealed to in one request
LONG_POLL_SECONDS = 25.0
MAX_POLLS_PER_KEY = 256  # event streams one key may hold open at once (a device follows each portal with one)
MAX_REQUESTS_PER_KEY = 64  # other requests one key may have in progress at once

Handler = Callable[[HubState, Caller, dict[str, Any], dict[str, Any], int], Any]


def _hex(value: Any, size: int | None = None, what: str = "value") -> bytes:
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError):
        raise HubRefusal(400, "malformed", f"{what} is not hex") from None
    if size is not None and len(raw) != size:
        raise HubRefusal(400, "malformed", f"{what} must be {size} bytes")
    return raw


def _ids(values: Any) -> list[bytes]:
    if not isinstance(values, list):
        raise HubRefusal(400, "malformed", "expected a list of ids")
    return [_hex(v, 32, "object id") for v in values]


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    summary: str
    handler: Handler


def _seals(body: dict[str, Any]) -> dict[bytes, bytes]:
    """A key generation's seed sealed to devices: {device key hex: sealed hex}."""
    seals = body.get("seals", {})
    if not isinstance(seals, dict) or len(seals) > MAX_SEALS:
        raise HubRefusal(400, "malformed", f"seals must be an object of at most {MAX_SEALS} devices")
    return {_hex(device, 32, "device key"): _hex(sealed, 80, "seal") for device, sealed in seals.items()}


def _portal(p: dict[str, Any]) -> bytes:
    return _hex(p["portal"], 16, "portal id")


def _uint(value: Any, what: str) -> int:
    """A count or a time in nanoseconds: an integer SQLite can hold, not negative."""
    try:
        number = int(value) if isinstance(value, str) else value
    except ValueError:
        raise HubRefusal(400, "malformed", f"{what} is not a number") from None
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= INT64_MAX:
        raise HubRefusal(400, "malformed", f"{what} must be a whole number from 0 to {INT64_MAX}")
    return number


def _policy(body: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    """The policy fields of ``body`` that a route takes, each checked; those absent stay absent."""
    policy: dict[str, Any] = {}
    for name in allowed:
        if name not in body:
            continue
        value = body[name]
        if name == "active":
            if not isinstance(value, bool):
                raise HubRefusal(400, "malformed", "active must be true or false")
        elif name == "window":
            if value is not None and not (isinstance(value, str) and WINDOW.fullmatch(value)):
                raise HubRefusal(400, "malformed", "window must be HH:MM-HH:MM (UTC) or null")
        elif value is not None:
            value = _uint(value, name)
        policy[name] = value
    return policy


ROUTES: list[RouteSpec] = [
    RouteSpec("POST", "/v1/devices", "Enroll the calling device with its identity-signed certificate",
              lambda s, c, p, b, now: s.enroll(c, _hex(b["cert"]), now)),
    RouteSpec("GET", "/v1/devices", "List the devices of the caller's identity",
              lambda s, c, p, b, now: s.devices(c)),
    RouteSpec("POST", "/v1/devices/{device}/revoke", "Revoke a device (the body carries an identity signature)",
              lambda s, c, p, b, now: s.revoke(c, _hex(p["device"], 32), _hex(b["sig"], 64), now)),
    RouteSpec("PUT", "/v1/devices/box", "Publish the calling device's box key, signed by the device",
              lambda s, c, p, b, now: s.set_box(c, _hex(b["box"], 32, "box key"), _hex(b["sig"], 64))),
    RouteSpec("GET", "/v1/generation", "The caller identity's newest key generation, sealed to the calling device",
              lambda s, c, p, b, now: s.generation(c)),
    RouteSpec("PUT", "/v1/generation", "Publish the identity's next key generation and its seals",
              lambda s, c, p, b, now: s.put_generation(
                  c, _hex(b["record"]), _hex(b["recovery"], 80, "recovery seal"), _seals(b))),
    RouteSpec("POST", "/v1/generation/seals", "Seal the newest key generation to devices that lack it",
              lambda s, c, p, b, now: s.add_seals(c, _uint(b["number"], "number"), _seals(b))),
    RouteSpec("PUT", "/v1/identity", "Publish the caller identity's agreement key, signed by the identity",
              lambda s, c, p, b, now: s.set_agreement(c, _hex(b["agreement"], 32), _hex(b["sig"], 64))),
    RouteSpec("GET", "/v1/identities/{identity}", "An identity's signed agreement key, for sharing",
              lambda s, c, p, b, now: s.identity(_hex(p["identity"], 32))),
    RouteSpec("GET", "/v1/identities/{identity}/devices",
              "An identity's device certificates (to itself and to who shares a portal with it)",
              lambda s, c, p, b, now: s.identity_devices(c, _hex(p["identity"], 32))),
    RouteSpec("POST", "/v1/provisioning", "A new device asks to be approved by one of its identity's devices",
              lambda s, c, p, b, now: s.request_provisioning(c, _hex(b["box"], 32, "box key"), now)),
    RouteSpec("GET", "/v1/provisioning/{request}", "A new device's keys, to the device about to approve it",
              lambda s, c, p, b, now: s.provisioning(c, _hex(p["request"], 5, "request id"), now)),
    RouteSpec("POST", "/v1/provisioning/{request}/approve",
              "Approve: the new device's certificate and the identity's keys sealed to it",
              lambda s, c, p, b, now: s.approve_provisioning(
                  c, _hex(p["request"], 5, "request id"), _hex(b["cert"]), _hex(b["sealed"]), now)),
    RouteSpec("GET", "/v1/provisioning/{request}/answer", "The approval of the calling device's request, or null",
              lambda s, c, p, b, now: s.provisioning_answer(c, _hex(p["request"], 5, "request id"), now)),
    RouteSpec("GET", "/v1/keyring", "The caller identity's encrypted keyring",
              lambda s, c, p, b, now: s.keyring(c)),
    RouteSpec("PUT", "/v1/keyring", "Replace the encrypted keyring (compare-and-swap on its version)",
              lambda s, c, p, b, now: s.put_keyring(c, _uint(b["version"], "version"), _hex(b["blob"]))),
    RouteSpec("GET", "/v1/portals", "Portals the caller owns or is a member of",
              lambda s, c, p, b, now: s.portals(c, now)),
    RouteSpec("PUT", "/v1/portals/{portal}", "Create a portal owned by the caller's identity",
              lambda s, c, p, b, now: s.create_portal(
                  c, _portal(p), _policy(b, ("expires_ns",)).get("expires_ns"), now)),
    RouteSpec("GET", "/v1/portals/{portal}", "A portal's policy, state and head version",
              lambda s, c, p, b, now: s.portal_info(c, _portal(p), now)),
    RouteSpec("PATCH", "/v1/portals/{portal}", "Set a portal's expiry or (de)activate it (owner only)",
              lambda s, c, p, b, now: s.set_policy(c, _portal(p), _policy(b, ("expires_ns", "active")), now)),
    RouteSpec("DELETE", "/v1/portals/{portal}", "Delete a portal (owner only): closed at once, restorable "
              "until its grace period ends, when its objects are released",
              lambda s, c, p, b, now: s.delete_portal(c, _portal(p), now)),
    RouteSpec("POST", "/v1/portals/{portal}/restore", "Undo a deletion or an expiry within the grace period",
              lambda s, c, p, b, now: s.restore_portal(c, _portal(p), now)),
    RouteSpec("POST", "/v1/portals/{portal}/roots", "Publish a root record: compare-and-swap on its parent",
              lambda s, c, p, b, now: s.publish(c, _portal(p), _hex(b["record"]), now)),
    RouteSpec("GET", "/v1/portals/{portal}/roots", "Root records after version ?after=N, oldest first",
              lambda s, c, p, b, now: s.roots(c, _portal(p), _uint(p.get("after", 0), "after"), now)),
    RouteSpec("GET", "/v1/portals/{portal}/members", "The portal's members and their wrapped read keys",
              lambda s, c, p, b, now: s.members(c, _portal(p), now)),
    RouteSpec("PUT", "/v1/portals/{portal}/members/{identity}", "Share: store a member's wrapped read key",
              lambda s, c, p, b, now: s.set_member(
                  c, _portal(p), _hex(p["identity"], 32), _hex(b["wrapped"]), bool(b.get("write")),
                  _hex(b["write_sig"], 64, "write grant") if b.get("write_sig") else None, now)),
    RouteSpec("DELETE", "/v1/portals/{portal}/members/{identity}", "Unshare: remove a member",
              lambda s, c, p, b, now: s.remove_member(c, _portal(p), _hex(p["identity"], 32))),
    RouteSpec("POST", "/v1/portals/{portal}/links",
              "Create a link (its key wrapped under the link secret; redeem_key: the key the secret derives)",
              lambda s, c, p, b, now: s.create_link(
                  c, _portal(p), _hex(b["link"], 16), _hex(b["wrapped"]), _hex(b["redeem_key"], 32, "redeem key"),
                  _policy(b, ("expires_ns", "max_downloads", "window")))),
    RouteSpec("DELETE", "/v1/links/{link}", "Revoke a link",
              lambda s, c, p, b, now: s.revoke_link(c, _hex(p["link"], 16))),
    RouteSpec("POST", "/v1/links/{link}/redeem",
              "Redeem a link while its policy holds, proving its secret (proof): wrapped key and roots",
              lambda s, c, p, b, now: s.redeem(
                  c, _hex(p["link"], 16), _hex(b["proof"], 64, "proof") if "proof" in b else None, now)),
    RouteSpec("POST", "/v1/portals/{portal}/locations", "Record that an edge holds these object ids",
              lambda s, c, p, b, now: s.add_locations(c, _portal(p), _hex(b["edge"], 32), _ids(b["cids"]), now)),
    RouteSpec("POST", "/v1/locations", "Which edges hold these object ids, for the portals the caller may read",
              lambda s, c, p, b, now: s.locations(c, _ids(b["cids"]))),
    RouteSpec("POST", "/v1/edges", "Register or heartbeat the calling edge (admitted edges only)",
              lambda s, c, p, b, now: s.register_edge(
                  c, str(b["address"]), [str(t) for t in b["transports"]], b["stat"], now)),
    RouteSpec("GET", "/v1/edges", "The directory of live admitted edges (devices and admitted edges only)",
              lambda s, c, p, b, now: s.edges(c, now)),
    RouteSpec("GET", "/v1/directory/devices", "Every enrolled device and whether it is revoked (admitted edges only)",
              lambda s, c, p, b, now: s.device_directory(c)),
    RouteSpec("POST", "/v1/damage", "Report copies on an edge whose bytes did not match their ids",
              lambda s, c, p, b, now: s.report_damage(c, _hex(b["edge"], 32, "edge key"), _ids(b["cids"]), now)),
    RouteSpec("GET", "/v1/edges/garbage", "Ids this edge holds only for portals whose grace period has ended",
              lambda s, c, p, b, now: s.garbage(c, now)),
    RouteSpec("POST", "/v1/edges/forget", "The calling edge deleted these ids",
              lambda s, c, p, b, now: s.forget_locations(c, _ids(b["cids"]), now)),
    RouteSpec("GET", "/v1/edges/suspects", "Copies on this edge that readers reported damaged (each handed once)",
              lambda s, c, p, b, now: s.take_suspects(c)),
]  # fmt: skip


def openapi() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for spec in ROUTES:
        params = [
            {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for part in spec.path.split("/")
            if part.startswith("{")
        ]
        paths.setdefault(spec.path, {})[spec.method.lower()] = {
            "summary": spec.summary,
            "parameters": params,
            "security": [{"portalSignature": []}],
            "responses": {
                "200": {"description": "JSON result"},
                "400": {"description": "malformed request", "content": {"application/json": {"schema": _ERROR}}},
                "401": {"description": "unsigned, forged, replayed, clock-skew, or an unknown or revoked key"},
                "403": {"description": "not allowed to this identity, or an edge not admitted"},
                "404": {"description": "not found"},
                "409": {"description": "stale parent or version: the body carries the head"},
                "410": {"description": "expired, deactivated, deleted, released, revoked or used up"},
                "413": {"description": "the body is over 4 MiB (refused before it is read)"},
                "429": {"description": "this key has too many requests in progress"},
            },
        }
    paths["/v1/portals/{portal}/events"] = {
        "get": {
            "summary": "Long-poll: root records after ?after=N, waiting up to 25 s for one",
            "security": [{"portalSignature": []}],
            "responses": {"200": {"description": "list of root records (hex), possibly empty"}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Portal hub", "version": __version__},
        "components": {
            "securitySchemes": {
                "portalSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Portal-Signature",
                    "description": "Ed25519 over the request (docs/design.md, Hub API), with Portal-Key, "
                    "Portal-Time and Portal-Nonce",
                }
            }
        },
        "paths": paths,
    }


_ERROR = {"type": "object", "properties": {"error": {"type": "string"}, "message": {"type": "string"}}}


async def _capped_body(request: Request) -> bytes:
    """The request's body, refused (413) once it passes MAX_BODY bytes: never held whole beyond that."""
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_BODY:
            raise HubRefusal(413, "too-large", f"request body over {MAX_BODY} bytes")
        parts.append(part)
    return b"".join(parts)


class LongPolls:
    """The event streams' waits in progress, so that a hub that stops answers them at once: each then gets
    what has come for it so far (nothing, most likely), as at the end of its wait. Otherwise the server
    waits for each to end, up to its graceful timeout, before it stops."""

    def __init__(self) -> None:
        self._waits: set[trio.CancelScope] = set()
        self.ended = False

    @contextmanager
    def waiting(self, seconds: float) -> Iterator[trio.CancelScope]:
        """A wait of up to ``seconds`` that ``end`` cuts short (none at all once it has been called)."""
        with trio.move_on_after(0 if self.ended else seconds) as scope:
            self._waits.add(scope)
            try:
                yield scope
            finally:
                self._waits.discard(scope)

    def end(self) -> None:
        self.ended = True
        for scope in self._waits:
            scope.cancel()


def make_app(state: HubState, polls: LongPolls | None = None) -> Starlette:
    """The hub's API over ``state``; ``polls``: its event streams' waits, for the server to end when it stops."""
    polls = LongPolls() if polls is None else polls
    new_version: dict[bytes, trio.Event] = {}
    in_progress: Counter[tuple[str, bytes]] = Counter()  # (what, key): requests running now

    @asynccontextmanager
    async def bounded(what: str, key: bytes, limit: int) -> AsyncIterator[None]:
        """At most ``limit`` of ``what`` for one key at a time: one client cannot hold the hub's memory."""
        if in_progress[(what, key)] >= limit:
            raise HubRefusal(429, "busy", f"at most {limit} {what} at once per key")
        in_progress[(what, key)] += 1
        try:
            yield
        finally:
            in_progress[(what, key)] -= 1
            if not in_progress[(what, key)]:
                del in_progress[(what, key)]

    async def authenticate(request: Request) -> tuple[Caller, dict[str, Any], int]:
        # Limits before work: the signature headers and the declared size are checked before a byte of the
        # body is read, and the body is read with a cap whatever it declared.
        signed = parse_headers(dict(request.headers))
        now = time.time_ns()
        check_time(signed, now)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            raise HubRefusal(413, "too-large", f"request body over {MAX_BODY} bytes")
        body = await _capped_body(request)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")

        def check() -> Caller:
            check_signature(signed, request.method, target, body, now)
            state.remember_nonce(signed.nonce, now)
            return state.caller(signed.key)

        caller = await trio.to_thread.run_sync(check)
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            raise HubRefusal(400, "malformed", "the body is not JSON") from None
        if not isinstance(payload, dict):
            raise HubRefusal(400, "malformed", "the body is not a JSON object")
        return caller, payload, now

    def refusal(request: Request, exc: HubRefusal) -> JSONResponse:
        log.warning("%s %s: %d %s: %s", request.method, request.url.path, exc.status, exc.code, exc)
        return JSONResponse({"error": exc.code, "message": str(exc), **exc.extra}, status_code=exc.status)

    async def answer(request: Request, work: Callable[[], Awaitable[Any]]) -> Response:
        """Run ``work``: its result is the JSON answer; every refusal becomes an error answer here, and only here."""
        try:
            result = await work()
        except HubRefusal as exc:
            return refusal(request, exc)
        except ClockSkew as exc:
            return refusal(request, HubRefusal(401, "clock-skew", str(exc)))
        except BadSignature as exc:
            return refusal(request, HubRefusal(401, "bad-signature", str(exc)))
        except (KeyError, ValueError, TypeError) as exc:
            return refusal(request, HubRefusal(400, "malformed", f"malformed request: {exc!r}"))
        return JSONResponse({"ok": True} if result is None else {"result": result})

    def endpoint(spec: RouteSpec) -> Callable[[Request], Any]:
        async def work(request: Request) -> Any:
            caller, payload, now = await authenticate(request)
            params = {**request.path_params, **request.query_params}
            async with bounded("requests", caller.key, MAX_REQUESTS_PER_KEY):
                result = await trio.to_thread.run_sync(spec.handler, state, caller, params, payload, now)
            if spec.path.endswith("/roots") and spec.method == "POST":
                new_version.pop(bytes.fromhex(request.path_params["portal"]), trio.Event()).set()
            return result

        async def run(request: Request) -> Response:
            return await answer(request, lambda: work(request))

        return run

    async def wait_for_records(request: Request) -> list[str]:
        caller, _, _ = await authenticate(request)
        portal = _portal(dict(request.path_params))
        after = _uint(request.query_params.get("after", 0), "after")
        async with bounded("event streams", caller.key, MAX_POLLS_PER_KEY):
            return await _wait(caller, portal, after)

    async def _wait(caller: Caller, portal: bytes, after: int) -> list[str]:
        records: list[str] = []
        with polls.waiting(LONG_POLL_SECONDS) as waited:
            while not records:
                event = new_version.setdefault(portal, trio.Event())
                records = await trio.to_thread.run_sync(state.roots, caller, portal, after, time.time_ns())
                if not records:
                    await event.wait()
        if waited.cancelled_caught:  # one last look: a record may have come as the wait ended
            records = await trio.to_thread.run_sync(state.roots, caller, portal, after, time.time_ns())
        return records

    async def events(request: Request) -> Response:
        return await answer(request, lambda: wait_for_records(request))

    async def openapi_document(request: Request) -> Response:
        return JSONResponse(openapi())

    routes = [Route("/v1/openapi.json", openapi_document, methods=["GET"])]
    routes.append(Route("/v1/portals/{portal}/events", events, methods=["GET"]))
    routes += [Route(spec.path, endpoint(spec), methods=[spec.method]) for spec in ROUTES]
    return Starlette(routes=routes)
