"""The typed hub clients against the hub's route table, and no hub request built anywhere else."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from portalfs.hub.app import ROUTES
from portalfs.hub.client import EdgeHubClient, HubClient

PACKAGE = Path(__file__).resolve().parents[2] / "portalfs"
ROUTE_PATH = re.compile(r"/v1/[a-z]")
EVENTS = ("GET", "/v1/portals/{portal}/events")  # the long-poll, served beside the table


def _client_routes() -> list[tuple[str, str]]:
    return [
        fn.route  # type: ignore[attr-defined]
        for cls in (HubClient, EdgeHubClient)
        for _, fn in inspect.getmembers(cls, inspect.isfunction)
        if hasattr(fn, "route")
    ]


def test_each_route_of_the_hub_has_exactly_one_client_method() -> None:
    table = sorted([(r.method, r.path) for r in ROUTES] + [EVENTS])
    assert sorted(_client_routes()) == table


def _v1_strings(path: Path) -> list[int]:
    """Lines of ``path`` with a string that starts a hub route's path (``/v1/...``), in f-strings too."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and ROUTE_PATH.match(node.value):
            lines.append(node.lineno)
    return lines


def test_no_hub_request_is_built_outside_the_clients() -> None:
    allowed = {PACKAGE / "hub" / "client.py", PACKAGE / "hub" / "app.py"}  # the clients, and the table itself
    found = {
        str(path.relative_to(PACKAGE)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in allowed and (lines := _v1_strings(path))
    }
    assert found == {}


def test_only_a_write_grant_the_owner_signed_makes_a_writer() -> None:
    import os

    from portalfs.fabric.trust import writers
    from portalfs.hub.client import Member
    from portalfs.keys import DOMAIN_WRITE_GRANT, Identity

    owner, honest, forged, reader = (Identity(os.urandom(32)) for _ in range(4))
    portal = os.urandom(16)

    class Hub:  # what the hub relays: it may add members and signatures of its own
        def members(self, asked: bytes) -> list[Member]:
            assert asked == portal
            return [
                Member(honest.public, b"w", True, owner.signing_key.sign(DOMAIN_WRITE_GRANT + portal + honest.public)),
                Member(forged.public, b"w", True, forged.signing_key.sign(DOMAIN_WRITE_GRANT + portal + forged.public)),
                Member(reader.public, b"w", False, b""),
            ]

    assert writers(Hub(), portal, owner.public) == [owner.public, honest.public]  # type: ignore[arg-type]
