"""Test vectors: tests/vectors/*.json pin the formats byte for byte.

Another implementation proves compatibility by reproducing these outputs from
these inputs. To regenerate after a deliberate format change (which also bumps
the version in docs/design.md): PORTAL_WRITE_VECTORS=1 pytest tests/unit/test_vectors.py
"""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import cbor2
import pytest

from portalfs.chunking import cdc_chunks
from portalfs.generations import PurposeKeys
from portalfs.keys import DeviceKey, Identity, new_entropy_words, root_from_words, x25519_public
from portalfs.root import PortalKeys, RootPayload, make_root_record
from portalfs.sealing import ChunkRef, seal, unseal
from portalfs.tree import Entry, build_file, encode_dir, load_dir, open_dir, store_dir

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
ENTROPY = bytes(range(32))


def keys_vectors() -> dict:
    out = []
    for passphrase in ("", "portal test"):
        words = new_entropy_words(ENTROPY)
        identity = Identity(root_from_words(words, passphrase))
        out.append(
            {
                "entropy": ENTROPY.hex(),
                "words": words,
                "bip39_passphrase": passphrase,
                "root": identity.root.hex(),
                "identity_public": identity.public.hex(),
                "agreement_public": identity.agreement_public.hex(),
                "convergence_secret": identity.convergence_secret.hex(),
                "keyring_key": identity.keyring_key.hex(),
                "fingerprint": identity.fingerprint,
                "recovery_public": x25519_public(identity.recovery_key).hex(),
            }
        )
    seed, device = bytes(range(32, 64)), DeviceKey(ENTROPY)
    generation = PurposeKeys.of_seed(seed)  # section 2, "Key generations"
    derived = {
        "generation_seed": seed.hex(),
        "generation_keyring_key": generation.keyring.hex(),
        "generation_agreement_public": x25519_public(generation.agreement_key).hex(),
        "device_private": device.private.hex(),
        "device_box_public": device.box_public.hex(),
    }
    return {"keys": out, "derived": derived}


def _plaintexts() -> list[bytes]:
    return [b"", b"hello, portal\n" * 1000, bytes(range(256)) * 4, b"x"]


def chunk_vectors() -> dict:
    secret = Identity(root_from_words(new_entropy_words(ENTROPY))).convergence_secret
    out = []
    for plaintext in _plaintexts():
        ref, sealed = seal(secret, plaintext)
        out.append(
            {
                "convergence_secret": secret.hex(),
                "plaintext": plaintext.hex(),
                "pid": ref.pid.hex(),
                "key": ref.key.hex(),
                "cid": ref.cid.hex(),
                "sealed": sealed.hex(),
            }
        )
    return {"chunks": out}


def tree_vectors() -> dict:
    """A small tree: /hello.txt, /docs/notes.md, /link -> hello.txt; then a signed root record."""
    identity = Identity(root_from_words(new_entropy_words(ENTROPY)))
    keys = PortalKeys(bytes(range(100, 132)))
    nodes: dict[str, str] = {}

    def store_node(plaintext: bytes) -> ChunkRef:
        ref, sealed = seal(keys.tree_secret, plaintext)
        nodes[ref.cid.hex()] = sealed.hex()
        return ref

    def file_entry(name: bytes, content: bytes) -> Entry:
        refs = [seal(identity.convergence_secret, c)[0] for c in cdc_chunks(io.BytesIO(content))]
        node, size = build_file(refs, store_node)
        return Entry(
            name,
            stat.S_IFREG | 0o644,
            1000,
            1000,
            1_700_000_000_000_000_000,
            1_700_000_000_000_000_001,
            size=size,
            node=node,
        )

    docs = encode_dir([file_entry(b"notes.md", b"# Notes\n\nportal test vector\n")])
    root_dir = encode_dir(
        [
            file_entry(b"hello.txt", b"hello, portal\n"),
            Entry(
                b"docs",
                stat.S_IFDIR | 0o755,
                1000,
                1000,
                1_700_000_000_000_000_002,
                1_700_000_000_000_000_002,
                node=store_node(docs),
            ),
            Entry(
                b"link",
                stat.S_IFLNK | 0o777,
                1000,
                1000,
                1_700_000_000_000_000_003,
                1_700_000_000_000_000_003,
                target=b"hello.txt",
                xattrs={b"user.note": b"a symlink"},
            ),
        ]
    )
    root_ref = store_node(root_dir)
    root = Entry(b"", stat.S_IFDIR | 0o755, 0, 0, 1_700_000_000_000_000_004, 1_700_000_000_000_000_004, node=root_ref)
    device = DeviceKey(bytes(range(200, 232)))
    record = make_root_record(
        keys=keys,
        device=device,
        portal=bytes(16),
        parent=None,
        payload=RootPayload(root, 14 + 29, 2),
        time_ns=1_700_000_000_000_000_005,
        nonce=bytes(12),
    )
    return {
        "read_key": keys.read_key.hex(),
        "tree_secret": keys.tree_secret.hex(),
        "device_private": device.private.hex(),
        "root_dir_node": root_dir.hex(),
        "root_node_cid": root_ref.cid.hex(),
        "nodes": nodes,
        "root_record": record.to_bytes().hex(),
        "root_record_id": record.record_id.hex(),
    }


def special_vectors() -> dict:
    """A version-2 directory node (format 2): a FIFO, a socket and a character device beside a symlink."""
    keys = PortalKeys(bytes(range(100, 132)))
    when = 1_700_000_000_000_000_000
    plaintext = encode_dir(
        [
            Entry(b"fifo", stat.S_IFIFO | 0o640, 1000, 1000, when, when),
            Entry(b"sock", stat.S_IFSOCK | 0o755, 1000, 1000, when, when, xattrs={b"user.k": b"v"}),
            Entry(b"null", stat.S_IFCHR | 0o666, 0, 0, when, when, rdev=os.makedev(1, 3)),
            Entry(b"link", stat.S_IFLNK | 0o777, 1000, 1000, when, when, target=b"fifo"),
        ]
    )
    ref, sealed = seal(keys.tree_secret, plaintext)
    return {"tree_secret": keys.tree_secret.hex(), "dir_node": plaintext.hex(), "cid": ref.cid.hex(),
            "sealed": sealed.hex()}  # fmt: skip


def split_vectors() -> dict:
    """A version-3 directory node (format 3): 60,000 empty files' entries, past SPLIT_AT, in parts."""
    keys = PortalKeys(bytes(range(100, 132)))
    when = 1_700_000_000_000_000_000
    entries = [Entry(b"file-%05d.txt" % i, stat.S_IFREG | 0o644, 1000, 1000, when, when) for i in range(60_000)]
    sealed: dict[bytes, bytes] = {}

    def store_node(plaintext: bytes) -> ChunkRef:
        ref, data = seal(keys.tree_secret, plaintext)
        sealed[ref.cid] = data
        return ref

    head = store_dir(entries, store_node)
    head_plaintext = unseal(head, sealed[head.cid])
    parts = open_dir(head_plaintext)[1]
    assert load_dir(head, lambda ref: unseal(ref, sealed[ref.cid])) == entries
    counts = [len(decode_part(unseal(ref, sealed[ref.cid]))) for ref in parts]
    return {
        "tree_secret": keys.tree_secret.hex(),
        "entries": "60,000 regular files named file-00000.txt to file-59999.txt, mode 0644, uid and gid 1000, "
        f"size 0, mtime and ctime {when}",
        "dir_node": head_plaintext.hex(),
        "cid": head.cid.hex(),
        "parts": [
            {"cid": ref.cid.hex(), "length": ref.length, "entries": n} for ref, n in zip(parts, counts, strict=True)
        ],
    }


def decode_part(plaintext: bytes) -> list:
    node = cbor2.loads(plaintext)
    assert node["v"] == 3 and node["t"] == "part"
    return list(node["entries"])


CASES = {
    "keys.json": keys_vectors,
    "chunks.json": chunk_vectors,
    "tree.json": tree_vectors,
    "special.json": special_vectors,
    "split.json": split_vectors,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_vectors_match(name: str) -> None:
    computed = CASES[name]()
    path = VECTORS / name
    if os.environ.get("PORTAL_WRITE_VECTORS"):
        path.write_text(json.dumps(computed, indent=2, sort_keys=True) + "\n")
    assert json.loads(path.read_text()) == computed
