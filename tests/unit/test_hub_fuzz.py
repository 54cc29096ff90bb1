"""Every route of the hub API, fed random parameters and bodies: it answers or refuses, and never fails otherwise.

The HTTP layer (hub/app.py) turns HubRefusal, BadSignature, KeyError,
ValueError and TypeError into 4xx answers; anything else would be a 500 and a
traceback in the hub's log. After every call the database still answers.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portalfs.errors import BadSignature
from portalfs.hub.app import ROUTES
from portalfs.hub.state import Caller, HubRefusal, HubState
from portalfs.keys import DeviceKey, Identity

REFUSED = (HubRefusal, BadSignature, KeyError, ValueError, TypeError)
FIELDS = ["cert", "sig", "agreement", "version", "blob", "expires_ns", "active", "record", "wrapped", "write",
          "link", "max_downloads", "window", "edge", "cids", "address", "transports", "stat"]  # fmt: skip
PORTAL = os.urandom(16)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from([PORTAL.hex(), os.urandom(32).hex(), os.urandom(64).hex(), "zz", "09:00-17:00", "25:00-99:99"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)  # noqa: E501
bodies = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> tuple[HubState, Caller]:
    state = HubState(Path(tmp_path_factory.mktemp("hub")) / "hub.db")
    identity, device = Identity(os.urandom(32)), DeviceKey(os.urandom(32))
    now = time.time_ns()
    state.enroll(Caller(device.public, None), identity.enroll(device.public, "fuzz", now).to_bytes(), now)
    caller = state.caller(device.public)
    state.create_portal(caller, PORTAL, None, now)
    return state, caller


def _params(path: str, data: st.DataObject) -> dict[str, object]:
    names = re.findall(r"{(\w+)}", path)
    params: dict[str, object] = {
        name: data.draw(st.sampled_from([PORTAL.hex(), os.urandom(16).hex(), os.urandom(32).hex(), "nothex", ""]))
        for name in names
    }
    if data.draw(st.booleans()):
        params["after"] = data.draw(st.sampled_from(["0", "-5", "x", str(2**70)]))
    return params


@pytest.mark.parametrize("spec", ROUTES, ids=[f"{r.method} {r.path}" for r in ROUTES])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_route_answers_or_refuses_whatever_it_is_sent(
    hub: tuple[HubState, Caller], spec: object, data: st.DataObject
) -> None:
    state, caller = hub
    route = spec  # a RouteSpec
    params = _params(route.path, data)  # type: ignore[attr-defined]
    body = data.draw(bodies)
    try:
        route.handler(state, caller, params, body, time.time_ns())  # type: ignore[attr-defined]
    except REFUSED:
        pass
    assert state.portal_state(PORTAL, time.time_ns()) in ("created", "active", "expired", "deactivated", "deleted")
