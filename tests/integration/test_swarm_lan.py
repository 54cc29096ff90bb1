"""The swarm across shaped links: five edges, each on its own host of a LAN of network namespaces, sending at
20, 40, 60, 80 and 100 Mbit/s (HTB on each edge's cable), every one holding every chunk. A second laptop's
`get` takes from each edge in proportion to its rate; with the fastest edge killed half way, the read still
completes from the others."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fabricutil import FabricLab, fabric
from .lan import Lan, lan, namespaces_available
from .test_cli import ok

pytestmark = pytest.mark.skipif(not namespaces_available(), reason="network namespaces need root")

RATES = [20, 40, 60, 80, 100]  # Mbit/s, edge0 .. edge4
EDGES = [f"edge{i}" for i in range(len(RATES))]
SIZE = 240 << 20  # about 190 chunks: the slowest edge's share is some 13 of them


@pytest.fixture
def shaped(tmp_path: Path) -> Iterator[tuple[Lan, FabricLab, Path]]:
    with (
        lan(["hub", *EDGES, "laptop1", "laptop2"]) as network,
        fabric(tmp_path / "fabric", edges=len(EDGES), lan=network) as lab,
    ):
        one, two = tmp_path / "laptop1", tmp_path / "laptop2"
        on_one, on_two = network.enter("laptop1"), network.enter("laptop2")
        src = tmp_path / "src"
        src.mkdir()
        with (src / "big.bin").open("wb") as f:
            for _ in range(SIZE >> 20):
                f.write(os.urandom(1 << 20))
        words = " ".join(json.loads(ok(one, "init", "--no-passphrase", "--json", enter=on_one))["words"])
        ok(one, "hub", "add", lab.hub_url, enter=on_one)
        ok(one, "edge", "replicas", str(len(EDGES)), enter=on_one)
        ok(one, "portal", "create", "big", enter=on_one)
        ok(one, "put", "big", f"{src}/", enter=on_one)
        ok(one, "sync", enter=on_one)  # every chunk on every edge
        ok(two, "recover", "--no-passphrase", input=words, enter=on_two)
        ok(two, "hub", "add", lab.hub_url, enter=on_two)
        for host, rate in zip(EDGES, RATES, strict=True):
            network.shape(host, rate)
        yield network, lab, tmp_path


def get(tmp_path: Path, network: Lan, out: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PORTAL_HOME": str(tmp_path / "laptop2")}
    return subprocess.Popen(
        [sys.executable, "-m", "portalfs.cli.portalctl", "get", "big", str(tmp_path / out)],
        env=env, preexec_fn=network.enter("laptop2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_each_edge_serves_in_proportion_to_its_rate(shaped: tuple[Lan, FabricLab, Path]) -> None:
    network, _, tmp_path = shaped
    before = [network.sent(host) for host in EDGES]
    process = get(tmp_path, network, "got")
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert (tmp_path / "got" / "big.bin").read_bytes() == (tmp_path / "src" / "big.bin").read_bytes()
    sent = [network.sent(host) - b for host, b in zip(EDGES, before, strict=True)]
    total = sum(sent)
    for host, rate, got in zip(EDGES, RATES, sent, strict=True):
        share, expected = got / total, rate / sum(RATES)
        assert abs(share - expected) <= 0.15 * expected, (host, [round(s / total, 3) for s in sent])


def test_killing_the_fastest_edge_half_way_still_completes_the_read(shaped: tuple[Lan, FabricLab, Path]) -> None:
    network, lab, tmp_path = shaped
    with network.meter(EDGES) as sent:
        before = sum(sent())
        process = get(tmp_path, network, "got")
        deadline = time.monotonic() + 120
        while sum(sent()) - before < SIZE // 2:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    lab.edges[-1].stop(signal.SIGKILL)  # edge4, the fastest
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert (tmp_path / "got" / "big.bin").read_bytes() == (tmp_path / "src" / "big.bin").read_bytes()
