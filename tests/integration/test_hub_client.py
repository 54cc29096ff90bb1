"""The typed hub clients against a real hub on loopback: every route, with what it gives back."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from portalfs.errors import NotFound
from portalfs.fabric.grants import link_redeem_key, redeem_proof
from portalfs.hub.client import EdgeHubClient, HubClient, HubConflict, HubRefused
from portalfs.keys import DOMAIN_AGREEMENT, DOMAIN_REVOKE, DeviceKey, Identity
from portalfs.net.tls import EdgeKey

from .fabricutil import FabricLab, admit_edges, fabric


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FabricLab]:
    with fabric(tmp_path_factory.mktemp("hub"), edges=0) as lab:
        yield lab


def _device(lab: FabricLab) -> tuple[Identity, DeviceKey, HubClient]:
    identity, device = Identity(os.urandom(32)), DeviceKey(os.urandom(32))
    hub = HubClient(lab.hub_url, device)
    hub.enroll(identity.enroll(device.public, "laptop", time.time_ns()).to_bytes())
    return identity, device, hub


def test_a_device_walks_every_route(lab: FabricLab, tmp_path: Path) -> None:
    owner, device, hub = _device(lab)
    friend, friend_device, friends_hub = _device(lab)
    try:
        assert [d.device for d in hub.devices()] == [device.public]
        hub.set_agreement(owner.agreement_public, owner.signing_key.sign(DOMAIN_AGREEMENT + owner.agreement_public))
        assert hub.identity(owner.public).agreement == owner.agreement_public
        with pytest.raises(HubRefused):  # a stranger's devices are not the friend's to list, until they share
            friends_hub.identity_devices(owner.public)

        assert hub.keyring().version == 0
        hub.put_keyring(1, b"sealed keyring")
        with pytest.raises(HubConflict):
            hub.put_keyring(1, b"another")  # compare-and-swap on the version
        assert hub.keyring().blob == b"sealed keyring"

        portal = os.urandom(16)
        hub.create_portal(portal)
        assert [p.id for p in hub.portals()] == [portal] and hub.portal(portal).state == "created"
        assert hub.set_policy(portal, {"active": False}).state == "deactivated"
        assert hub.set_policy(portal, {"active": True}).state == "created"
        assert hub.roots(portal) == []  # (wait_roots, the long-poll, is the daemon's: its tests use it)

        hub.set_member(portal, friend.public, b"wrapped grant", write=False)
        assert [(m.identity, m.wrapped, m.write) for m in hub.members(portal)] == [
            (friend.public, b"wrapped grant", False)
        ]
        assert friends_hub.portal(portal).role == "reader"
        assert [d.device for d in friends_hub.identity_devices(owner.public)] == [device.public]
        hub.remove_member(portal, friend.public)
        with pytest.raises(HubRefused) as refused:
            friends_hub.members(portal)
        assert refused.value.code == "forbidden"

        link, secret = os.urandom(16), os.urandom(32)
        hub.create_link(portal, link, b"link-wrapped", link_redeem_key(secret).public, {"max_downloads": 1})
        with pytest.raises(HubRefused) as refused:
            friends_hub.redeem(link, redeem_proof(os.urandom(32), link, friend_device.public))
        assert refused.value.code == "bad-proof"  # and counts no download
        redeemed = friends_hub.redeem(link, redeem_proof(secret, link, friend_device.public))
        assert (redeemed.portal, redeemed.wrapped, redeemed.roots) == (portal, b"link-wrapped", [])
        with pytest.raises(HubRefused):
            friends_hub.redeem(link, redeem_proof(secret, link, friend_device.public))  # its one download is used
        hub.revoke_link(link)

        cid = os.urandom(32)
        hub.add_locations(portal, b"E" * 32, [cid])
        assert hub.locations([cid]) == {cid: [b"E" * 32]}
        hub.report_damage(b"E" * 32, [cid])
        assert hub.edges() == []

        deleted = hub.delete_portal(portal)
        assert deleted.state == "deleted" and deleted.release_ns is not None
        assert hub.restore_portal(portal).state == "created"
        with pytest.raises(NotFound):
            hub.portal(os.urandom(16))

        other = DeviceKey(os.urandom(32))
        other_hub = HubClient(lab.hub_url, other)
        other_hub.enroll(owner.enroll(other.public, "phone", time.time_ns()).to_bytes())
        hub.revoke_device(other.public, owner.signing_key.sign(DOMAIN_REVOKE + other.public))
        with pytest.raises(HubRefused) as revoked:
            other_hub.devices()
        assert revoked.value.code == "revoked"
        other_hub.close()
    finally:
        hub.close()
        friends_hub.close()


async def test_an_edge_walks_its_routes(lab: FabricLab, tmp_path: Path) -> None:
    key = EdgeKey.load_or_create(tmp_path)
    identity, device, hub = _device(lab)
    portal, cid = os.urandom(16), os.urandom(32)
    try:
        hub.create_portal(portal)
        edge = EdgeHubClient(lab.hub_url, key.public, key.sign)
        for refused in (edge.register("127.0.0.1:9", ("tcp",), used=10, objects=1), edge.device_directory()):
            with pytest.raises(HubRefused) as caught:
                await refused
            assert caught.value.code == "not-admitted"
        admit_edges(lab.root / "hub.db", [tmp_path])
        await edge.register("127.0.0.1:9", ("tcp",), used=10, objects=1)
        listed = (await edge.device_directory())[device.public]
        assert listed.status == "active" and listed.identity == identity.public
        assert await edge.garbage() == []
        hub.add_locations(portal, key.public, [cid])
        hub.report_damage(key.public, [cid])
        assert await edge.suspects() == [cid]
        assert await edge.suspects() == []  # handed over once
        await edge.forget([cid])
        assert [e.key for e in hub.edges()] == [key.public]
    finally:
        hub.close()


def test_an_edge_started_before_its_hub_says_it_serves_only_once_the_hub_lists_it(tmp_path: Path) -> None:
    import socket
    import threading

    from portalfs.hub.state import Caller, HubState

    from .fabricutil import admit_edges, start

    (key,) = admit_edges(tmp_path / "hub.db", [tmp_path / "edge"])
    with socket.socket() as probe:  # a port for the hub, free now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    servers = []

    def hub_later() -> None:
        time.sleep(1.5)  # the fault: the hub comes up after its edge
        servers.append(start(["hub", "serve", "--db", str(tmp_path / "hub.db"), "--listen", f"127.0.0.1:{port}"],
                             tmp_path / "hub"))  # fmt: skip

    later = threading.Thread(target=hub_later)
    later.start()
    try:
        edge = start(["edge", "serve", "--data", str(tmp_path / "edge"), "--listen", "127.0.0.1:0", "--hub", url],
                     tmp_path / "edge")  # fmt: skip
        servers.append(edge)
        later.join()
        assert edge.line.endswith(key.hex())
        state = HubState(tmp_path / "hub.db")
        try:  # listed when it says so
            assert key in [bytes.fromhex(e["key"]) for e in state.edges(Caller(key, None), time.time_ns())]
        finally:
            state.close()
    finally:
        later.join()
        for server in servers:
            server.stop()


def _self_signed(directory: Path, name: str, key: object = None) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (``key``, or a new one), as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = key or ec.generate_private_key(ec.SECP256R1())
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_a_tls_hub_is_pinned_at_hub_add_and_another_certificate_is_refused(tmp_path: Path) -> None:
    import json
    import socket

    from .fabricutil import admit_edges, start
    from .test_cli import fails, ok

    cert, key = _self_signed(tmp_path, "hub")
    admit_edges(tmp_path / "hub.db", [tmp_path / f"edge{i}" for i in range(2)])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"https://127.0.0.1:{port}"
    hub_args = ["hub", "serve", "--db", str(tmp_path / "hub.db"), "--listen", f"127.0.0.1:{port}"]
    servers = [start([*hub_args, "--tls-cert", str(cert), "--tls-key", str(key)], tmp_path / "hub")]
    try:
        assert servers[0].line.startswith(f"portal-hub: serving {url}/v1/")
        for i in range(2):
            servers.append(start(["edge", "serve", "--data", str(tmp_path / f"edge{i}"), "--listen", "127.0.0.1:0",
                                  "--hub", url, "--hub-cert", str(cert)], tmp_path / f"edge{i}"))  # fmt: skip
        a = tmp_path / "a"
        words = " ".join(json.loads(ok(a, "init", "--no-passphrase", "--json"))["words"])
        ok(a, "hub", "add", url)  # pins the certificate it meets
        ok(a, "portal", "create", "p")
        (tmp_path / "f.txt").write_text("over TLS\n")
        ok(a, "put", "p", str(tmp_path / "f.txt"))
        ok(a, "sync")
        link = ok(a, "link", "p").strip().split()[-1]
        assert link.startswith("portals://127.0.0.1:")  # a link to an https hub says so
        b = tmp_path / "b"
        ok(b, "recover", "--no-passphrase", input=words)
        ok(b, "hub", "add", url)
        ok(b, "get", "p", str(tmp_path / "out"))
        assert (tmp_path / "out" / "f.txt").read_text() == "over TLS\n"

        # a renewal: a new certificate for the same key, written over the files, and SIGHUP
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        from .fabricutil import wait_for_log

        _self_signed(tmp_path, "hub", load_pem_private_key(key.read_bytes(), None))
        servers[0].process.send_signal(signal.SIGHUP)
        wait_for_log(servers[0], "SIGHUP: serving with")
        (tmp_path / "f.txt").write_text("renewed\n")
        ok(a, "put", "p", str(tmp_path / "f.txt"))
        ok(a, "sync")  # the device pinned the hub's key: the renewed certificate is accepted
        ok(b, "sync")
        ok(b, "get", "p", str(tmp_path / "out2"))
        assert (tmp_path / "out2" / "f.txt").read_text() == "renewed\n"
        cert.write_bytes(_self_signed(tmp_path, "other")[0].read_bytes())  # half a renewal: a certificate of
        servers[0].process.send_signal(signal.SIGHUP)  # another key beside the old key file
        wait_for_log(servers[0], "did not load, the certificate in use stays")
        ok(a, "sync")

        servers[0].stop()  # someone else answers at the hub's address, with a certificate of its own
        other_cert, other_key = _self_signed(tmp_path, "impostor")
        servers[0] = start([*hub_args, "--tls-cert", str(other_cert), "--tls-key", str(other_key)], tmp_path / "hub2")
        fails(a, 14, "sync", "p", match="another key")  # the pinned key alone is accepted
    finally:
        for server in servers:
            server.stop()
