"""The fabric across a LAN of network namespaces: a hub, three edges and two laptops, each a host on a bridge."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import NetNS

from .fabricutil import FabricLab, fabric
from .lan import Lan, lan, namespaces_available
from .test_cli import ok
from .test_daemon import Daemon, start_daemon

pytestmark = pytest.mark.skipif(not namespaces_available(), reason="network namespaces need root")

HOSTS = ["hub", "edge0", "edge1", "edge2", "laptop1", "laptop2"]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[tuple[Lan, FabricLab]]:
    with lan(HOSTS) as network, fabric(tmp_path / "fabric", lan=network) as lab:
        yield network, lab


def test_two_laptops_share_a_portal_across_the_lan_and_survive_an_unplugged_edge(
    tmp_path: Path, net: tuple[Lan, FabricLab]
) -> None:
    network, lab = net
    assert lab.hub_url == f"http://{network.address('hub')}:{lab.hub_url.rsplit(':', 1)[1]}"
    one, two = tmp_path / "laptop1", tmp_path / "laptop2"
    on_one, on_two = network.enter("laptop1"), network.enter("laptop2")

    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("carried across the bridge\n")
    (src / "photo.raw").write_bytes(os.urandom(5 * 1024 * 1024))
    words = " ".join(json.loads(ok(one, "init", "--no-passphrase", "--json", enter=on_one))["words"])
    ok(one, "hub", "add", lab.hub_url, enter=on_one)
    ok(one, "portal", "create", "trip", enter=on_one)
    ok(one, "put", "trip", f"{src}/", enter=on_one)
    synced = json.loads(ok(one, "sync", "--json", enter=on_one))
    assert synced[0]["published"] == 1

    ok(two, "recover", "--no-passphrase", input=words, enter=on_two)
    joined = json.loads(ok(two, "hub", "add", lab.hub_url, "--json", enter=on_two))
    assert joined["portals_added"] == ["trip"] and joined["edges"] == 3
    ok(two, "get", "trip", str(tmp_path / "got"), enter=on_two)
    for name in ("notes.txt", "photo.raw"):
        assert (tmp_path / "got" / name).read_bytes() == (src / name).read_bytes()

    # an edge's host drops off the LAN: nothing answers it any more, the two others carry on
    network.unplug("edge0")
    (src / "later.txt").write_text("written while edge0 was gone\n")
    ok(one, "put", "trip", f"{src}/", enter=on_one)
    assert json.loads(ok(one, "sync", "--json", enter=on_one))[0]["published"] == 1
    status = json.loads(ok(one, "status", "--json", enter=on_one))
    assert sorted(e["up"] for e in status["edges"]) == [False, True, True]
    ok(two, "sync", enter=on_two)
    ok(two, "get", "trip", str(tmp_path / "later.txt"), "--path", "later.txt", enter=on_two)
    assert (tmp_path / "later.txt").read_text() == "written while edge0 was gone\n"


def test_portald_notices_that_its_network_changed_and_catches_up(tmp_path: Path, net: tuple[Lan, FabricLab]) -> None:
    network, lab = net
    one, on_one = tmp_path / "laptop1", network.enter("laptop1")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("before the move\n")
    ok(one, "init", "--no-passphrase", enter=on_one)
    ok(one, "hub", "add", lab.hub_url, enter=on_one)
    ok(one, "portal", "create", "trip", enter=on_one)
    ok(one, "put", "trip", f"{src}/", enter=on_one)
    started: list[Daemon] = []
    try:
        daemon = start_daemon(one, started, enter=on_one)
        daemon.wait_for(r"trip: v1 \(pulled 0, published 1\)")

        def syncs() -> int:
            return int(json.loads(ok(one, "status", "--json", enter=on_one))["daemon"]["portals"][0]["syncs"])

        before = syncs()
        with NetNS(network.netns("laptop1")) as ns:  # the laptop joins another network
            eth0 = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=eth0, address="10.79.0.7", prefixlen=24)
        daemon.wait_for(r"the network changed: catching up")
        deadline = time.monotonic() + 10  # at once, not at its next round (--interval 30)
        while syncs() == before:
            assert time.monotonic() < deadline, "portald did not sync after the network changed"
            time.sleep(0.2)
    finally:
        for d in started:
            d.stop()
