"""An identity's key generations (docs/design.md, section 2): sans-I/O, then the hub's rules on its real SQLite
file. The newest generation opens every older one; a seed opens only for the key it was sealed to; the hub
takes only the identity's own next generation, seals only to its active devices, and never goes back to an
older agreement key."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from portalfs.errors import IntegrityError
from portalfs.generations import Generation, GenerationRecord, PurposeKeys, open_seed, seal_seed
from portalfs.hub.state import Caller, HubState
from portalfs.keys import DOMAIN_AGREEMENT, DeviceKey, Identity, x25519_public

from .test_hub_policy import NOON, _refusal


def _zero(identity: Identity) -> tuple[PurposeKeys, ...]:
    return (PurposeKeys(identity.keyring_key, identity.agreement_key.private_bytes_raw()),)


def test_the_newest_generation_opens_every_older_one_and_only_with_its_own_seed() -> None:
    identity = Identity(os.urandom(64))
    first = Generation.make(identity, 1, _zero(identity))
    second = Generation.make(identity, 2, (first.keys, *first.older))
    opened = Generation.open(GenerationRecord.from_bytes(second.record.to_bytes()), second.seed)
    assert opened.older == (first.keys, _zero(identity)[0])
    assert opened.keys.keyring not in (first.keys.keyring, identity.keyring_key)
    with pytest.raises(IntegrityError, match="not the identity's"):
        Generation.open(second.record, first.seed)  # a seed the hub swapped in

    forged = dataclasses.replace(second.record, number=3)  # the number is signed
    with pytest.raises(IntegrityError, match="signature"):
        GenerationRecord.from_bytes(forged.to_bytes())
    stranger = Generation.make(Identity(os.urandom(64)), 2, _zero(identity))
    with pytest.raises(IntegrityError):  # signed by another identity than the one it names
        GenerationRecord.from_bytes(dataclasses.replace(stranger.record, identity=identity.public).to_bytes())


def test_a_seed_opens_for_the_key_it_was_sealed_to_and_no_other() -> None:
    identity = Identity(os.urandom(64))
    generation = Generation.make(identity, 1, _zero(identity))
    device, other = DeviceKey(os.urandom(32)), DeviceKey(os.urandom(32))
    sealed = seal_seed(generation.record, generation.seed, device.box_public)
    assert open_seed(generation.record, sealed, device.box_key) == generation.seed
    with pytest.raises(IntegrityError):
        open_seed(generation.record, sealed, other.box_key)
    recovery = seal_seed(generation.record, generation.seed, x25519_public(identity.recovery_key))
    assert open_seed(generation.record, recovery, Identity(identity.root).recovery_key) == generation.seed
    later = Generation.make(identity, 2, (generation.keys, *generation.older))
    with pytest.raises(IntegrityError):  # bound to the generation it was made for
        open_seed(later.record, sealed, device.box_key)


def _device_of(hub: HubState, identity: Identity) -> tuple[Caller, DeviceKey]:
    device = DeviceKey(os.urandom(32))
    hub.enroll(Caller(device.public, None), identity.enroll(device.public, "laptop", NOON).to_bytes(), NOON)
    caller = hub.caller(device.public)
    hub.set_box(caller, device.box_public, device.box_sig)
    return caller, device


def test_the_hub_takes_the_identitys_next_generation_and_seals_only_to_its_active_devices(tmp_path: Path) -> None:
    hub = HubState(tmp_path / "hub.db")
    identity = Identity(os.urandom(64))
    (one, one_key), (two, two_key) = _device_of(hub, identity), _device_of(hub, identity)
    outsider, _ = _device_of(hub, Identity(os.urandom(64)))
    zero = identity.agreement_public
    hub.set_agreement(one, zero, identity.signing_key.sign(DOMAIN_AGREEMENT + zero))
    assert hub.generation(one)["record"] is None
    assert _refusal(hub.set_box, one, two_key.box_public, two_key.box_sig) == (400, "bad-signature")

    first = Generation.make(identity, 1, _zero(identity))
    record, recovery = first.record.to_bytes(), seal_seed(first.record, first.seed, os.urandom(32))
    seals = {d.public: seal_seed(first.record, first.seed, d.box_public) for d in (one_key, two_key)}
    assert _refusal(hub.put_generation, outsider, record, recovery, seals) == (403, "forbidden")
    skipped = Generation.make(identity, 2, _zero(identity)).record.to_bytes()
    assert _refusal(hub.put_generation, one, skipped, recovery, seals) == (409, "conflict")
    hub.revoke(one, two_key.public, identity.signing_key.sign(b"portal device revocation v1\x00" + two.key), NOON)
    hub.put_generation(one, record, recovery, seals)
    hub.put_generation(one, record, recovery, seals)  # again: the same generation, nothing changes

    answer = hub.generation(one)
    assert bytes.fromhex(answer["record"]) == record and answer["unsealed"] == []
    assert open_seed(first.record, bytes.fromhex(answer["sealed"]), one_key.box_key) == first.seed
    assert _refusal(hub.caller, two.key) == (401, "revoked")
    assert hub.generation(two)["sealed"] is None  # the seal offered for the revoked device was not kept
    assert hub.generation(outsider)["record"] is None  # another identity's is not shown

    shown = hub.identity(identity.public)  # sharers are given generation 1's agreement key from now on
    assert (shown["generation"], bytes.fromhex(shown["agreement"])) == (1, first.record.agreement)
    hub.set_agreement(one, zero, identity.signing_key.sign(DOMAIN_AGREEMENT + zero))  # no way back
    assert bytes.fromhex(hub.identity(identity.public)["agreement"]) == first.record.agreement

    three, three_key = _device_of(hub, identity)  # enrolled since: listed as unsealed until a device seals it
    assert hub.generation(one)["unsealed"] == [three.key.hex()]
    assert hub.generation(three)["sealed"] is None
    assert _refusal(hub.add_seals, one, 2, {}) == (409, "conflict")
    hub.add_seals(one, 1, {three.key: seal_seed(first.record, first.seed, three_key.box_public)})
    assert hub.generation(one)["unsealed"] == [] and hub.generation(three)["sealed"] is not None
