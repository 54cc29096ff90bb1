"""Sharing on a real hub and edges: an unshare that a crash cut short is finished by the next sync."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from portalfs.device import Device
from portalfs.errors import Unreachable
from portalfs.fabric import sharing
from portalfs.fabric.config import load_config
from portalfs.fabric.sync import Fabric
from portalfs.paths import DeviceHome
from portalfs.portal import PortalView

from .fabricutil import FabricLab, fabric
from .test_cli import fails, ok
from .test_fabric import _device


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[FabricLab]:
    with fabric(tmp_path / "fabric", edges=2) as lab:
        yield lab


def test_an_unshare_cut_short_is_finished_by_the_next_sync(
    tmp_path: Path, lab: FabricLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = _device(tmp_path, "a", lab)
    gone, _ = _device(tmp_path, "gone", lab)
    kept, _ = _device(tmp_path, "kept", lab)
    (tmp_path / "one.txt").write_text("before\n")
    ok(a, "portal", "create", "team")
    ok(a, "put", "team", str(tmp_path / "one.txt"))
    for member in (gone, kept):
        ok(a, "share", "team", "--with", json.loads(ok(member, "whoami", "--json"))["identity"])
        ok(member, "sync")
    ok(a, "sync")

    device = Device(DeviceHome.from_environ({"PORTAL_HOME": str(a)}))
    try:
        secrets = device.unlock(None)
        config = load_config(device)
        assert config is not None
        fab = Fabric(device, secrets, config)

        def hub_gone(*args: object) -> None:  # the hub goes away after the member was removed there
            raise Unreachable("hub: connection refused")

        monkeypatch.setattr(fab.membership, "grant", hub_gone)
        gone_identity = bytes.fromhex(json.loads(ok(gone, "whoami", "--json"))["identity"])
        with pytest.raises(Unreachable):
            sharing.unshare(fab, PortalView.open(device, "team", secrets), gone_identity)
        fab.close()
        portal = device.state.portal("team").id
        assert device.state.get_meta(sharing.ROTATION + portal.hex()) is not None  # what is left to do is recorded
    finally:
        device.close()

    (tmp_path / "two.txt").write_text("after the unshare\n")
    ok(a, "put", "team", str(tmp_path / "two.txt"))  # sealed under the new key already
    ok(a, "sync")  # finishes the rotation first: the member kept gets the new key
    ok(kept, "sync")
    ok(kept, "get", "team", str(tmp_path / "out"))
    assert (tmp_path / "out" / "two.txt").read_text() == "after the unshare\n"
    fails(gone, 15, "sync", "team", match="may not read")


def test_a_member_with_write_publishes_and_the_owner_takes_its_versions_and_not_a_strangers(
    tmp_path: Path, lab: FabricLab
) -> None:
    owner, owners_words = _device(tmp_path, "owner", lab)
    writer, _ = _device(tmp_path, "writer", lab)
    (tmp_path / "one.txt").write_text("by the owner\n")
    ok(owner, "portal", "create", "team")
    ok(owner, "put", "team", str(tmp_path / "one.txt"))
    writer_identity = json.loads(ok(writer, "whoami", "--json"))["identity"]
    fails(owner, 2, "share", "team", "--with", writer_identity, "--write", match="24 recovery words", input="")
    ok(owner, "share", "team", "--with", writer_identity, "--write", input=owners_words)  # the identity signs
    ok(owner, "sync")
    ok(writer, "sync")  # takes the share
    (tmp_path / "two.txt").write_text("by a member\n")
    ok(writer, "put", "team", str(tmp_path / "two.txt"))
    assert json.loads(ok(writer, "sync", "team", "--json"))[0]["published"] == 1
    assert json.loads(ok(owner, "sync", "team", "--json"))[0]["pulled"] == 1  # the member's record is trusted
    ok(owner, "get", "team", str(tmp_path / "out"))
    assert (tmp_path / "out" / "two.txt").read_text() == "by a member\n"
