from __future__ import annotations

import dataclasses
import os
import random
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portalfs import encoding
from portalfs.errors import BadSignature, CorruptObject, DirectoryTooLarge
from portalfs.keys import DeviceKey
from portalfs.root import PortalKeys, RootPayload, RootRecord, make_root_record, verify_chain
from portalfs.sealing import ChunkRef, seal, unseal
from portalfs.store import MemoryStore
from portalfs.tree import (
    LINK_ID_SIZE,
    PART_LIMIT,
    SPLIT_AT,
    Entry,
    FileObjects,
    build_file,
    decode_dir,
    encode_dir,
    iter_file_chunks,
    load_dir,
    open_dir,
    store_dir,
    store_dir_parts,
)

TREE_SECRET = b"t" * 32
names = st.binary(min_size=1, max_size=40).filter(lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b".."))


class Nodes:
    """Seal-and-store / load-and-open over a MemoryStore, as the real code wires it."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.loads = 0

    def put(self, plaintext: bytes) -> ChunkRef:
        ref, sealed = seal(TREE_SECRET, plaintext)
        self.store.put(ref.cid, sealed)
        return ref

    def get(self, ref: ChunkRef) -> bytes:
        self.loads += 1
        return unseal(ref, self.store.get(ref.cid))


def _file(name: bytes, size: int = 0, node: ChunkRef | None = None) -> Entry:
    return Entry(name, stat.S_IFREG | 0o644, 1000, 1000, 5, 6, size=size, node=node)


@given(
    st.lists(names, unique=True, max_size=20),
    st.dictionaries(st.binary(max_size=20), st.binary(max_size=20), max_size=3),
)
def test_directory_nodes_round_trip_and_are_order_independent(entry_names: list[bytes], xattrs: dict) -> None:
    entries = [Entry(n, stat.S_IFLNK | 0o777, 0, 0, 1, 2, target=b"/target/" + n, xattrs=xattrs) for n in entry_names]
    encoded = encode_dir(entries)
    assert encode_dir(list(reversed(entries))) == encoded
    assert decode_dir(encoded) == sorted(entries, key=lambda e: e.name)


def test_duplicate_and_invalid_names_are_refused() -> None:
    with pytest.raises(ValueError):
        encode_dir([_file(b"a"), _file(b"a")])
    for bad in (b"", b".", b"..", b"a/b", b"x" * 256):
        with pytest.raises(ValueError):
            encode_dir([_file(bad)])


def test_malformed_directory_nodes_are_corrupt() -> None:
    with pytest.raises(CorruptObject):
        decode_dir(b"\xa0")
    from portalfs import encoding

    bad_file = {"name": b"f", "mode": stat.S_IFREG | 0o644, "uid": 0, "gid": 0, "mtime": 0, "ctime": 0, "size": 5}
    with pytest.raises(CorruptObject, match="size"):
        decode_dir(encoding.encode({"v": 1, "t": "dir", "entries": [bad_file]}))


@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 64, 65, 200])
def test_file_nodes_split_into_index_nodes(count: int) -> None:
    nodes = Nodes()
    chunks = [seal(b"c" * 32, bytes([i % 256]) * (i + 1))[0] for i in range(count)]
    ref, size = build_file(chunks, nodes.put, fanout=8)
    assert size == sum(c.length for c in chunks)
    visited: list[ChunkRef] = []
    assert list(iter_file_chunks(ref, nodes.get, visit_node=visited.append)) == chunks
    expected_nodes = 1 if count <= 8 else 1 + -(-count // 8) + (-(-count // 64) if count > 64 else 0)
    assert len(visited) == expected_nodes


@pytest.mark.parametrize("count", [1, 8, 9, 65])
def test_a_file_built_is_remembered_with_every_object_it_reaches(count: int) -> None:
    """What ``FileObjects.build`` remembers is what walking the new node finds: the file node, its index nodes
    and its chunks; the oldest files added give way past the limit (ids in all), and a file past it alone is
    not held."""
    nodes = Nodes()
    chunks = [seal(b"c" * 32, bytes([i % 256]) * (i + 1))[0] for i in range(count)]
    ref, size = build_file(chunks, nodes.put, fanout=8)
    visited: list[bytes] = []
    walked = [c.cid for c in iter_file_chunks(ref, nodes.get, visit_node=lambda r: visited.append(r.cid))]
    reached = len(visited) + len(walked)
    files = FileObjects(limit=reached + 1)
    assert files.build(chunks, Nodes().put, fanout=8) == (ref, size)  # the same node as build_file makes
    assert sorted(files.get(ref.cid) or ()) == sorted(visited + walked)
    files.add(b"a" * 32, [b"x"])
    assert files.get(ref.cid) is not None  # reached + 1 ids: the limit
    files.add(b"b" * 32, [b"y"])
    assert files.get(ref.cid) is None and files.get(b"b" * 32) == (b"y",)  # the oldest gave way
    files.add(b"c" * 32, [bytes([i]) for i in range(reached + 2)])  # more than the limit alone: not held
    assert files.get(b"c" * 32) is None and files.get(b"a" * 32) == (b"x",)


def _record(keys: PortalKeys, device: DeviceKey, parent: RootRecord | None) -> RootRecord:
    nodes = Nodes()
    root = Entry(b"", stat.S_IFDIR | 0o755, 0, 0, 1, 1, node=nodes.put(encode_dir([])))
    return make_root_record(
        keys=keys,
        device=device,
        portal=b"p" * 16,
        parent=parent,
        payload=RootPayload(root, 0, 0),
        time_ns=123,
        nonce=b"n" * 12,
    )


def test_root_records_chain_and_open() -> None:
    keys, device = PortalKeys(b"k" * 32), DeviceKey(b"d" * 32)
    first = _record(keys, device, None)
    second = _record(keys, device, first)
    assert (first.version, second.version, second.parent) == (1, 2, first.record_id)
    verify_chain([first, second], {device.public})
    assert second.open(keys).entry.is_dir
    with pytest.raises(BadSignature):
        verify_chain([first, second], {b"x" * 32})
    with pytest.raises(CorruptObject):
        verify_chain([second], {device.public})
    from portalfs.errors import IntegrityError

    with pytest.raises(IntegrityError):
        second.open(PortalKeys(b"wrong" * 6 + b"!!"))


@given(st.data())
def test_any_single_bit_flip_of_a_root_record_is_rejected(data: st.DataObject) -> None:
    keys, device = PortalKeys(b"k" * 32), DeviceKey(b"d" * 32)
    record = _record(keys, device, None).to_bytes()
    bit = data.draw(st.integers(0, len(record) * 8 - 1))
    damaged = bytearray(record)
    damaged[bit // 8] ^= 1 << (bit % 8)
    from portalfs.errors import IntegrityError

    with pytest.raises(IntegrityError):
        RootRecord.from_bytes(bytes(damaged)).open(keys)


def test_special_files_round_trip_in_version_2_directories_and_only_there() -> None:
    from portalfs import encoding

    special = [
        Entry(b"pipe", stat.S_IFIFO | 0o640, 1, 2, 3, 4),
        Entry(b"sock", stat.S_IFSOCK | 0o755, 1, 2, 3, 4),
        Entry(b"null", stat.S_IFCHR | 0o666, 0, 0, 3, 4, rdev=os.makedev(1, 3)),
        Entry(b"disk", stat.S_IFBLK | 0o660, 0, 6, 3, 4, rdev=os.makedev(8, 0), xattrs={b"user.k": b"v"}),
    ]
    encoded = encode_dir(special + [_file(b"plain")])
    assert encoding.decode(encoded)["v"] == 2
    assert decode_dir(encoded) == sorted(special + [_file(b"plain")], key=lambda e: e.name)
    assert encoding.decode(encode_dir([_file(b"plain")]))["v"] == 1  # trees without them do not change
    assert all(e.is_special for e in special) and [e.is_device for e in special] == [False, False, True, True]

    def node(version: int, entry: dict) -> bytes:
        return encoding.encode({"v": version, "t": "dir", "entries": [entry]})

    fifo = {"name": b"p", "mode": stat.S_IFIFO | 0o644, "uid": 0, "gid": 0, "mtime": 0, "ctime": 0}
    with pytest.raises(CorruptObject, match="version-1"):
        decode_dir(node(1, fifo))  # a version-1 reader's promise: no special files
    for bad in ({**fifo, "rdev": 5}, {**fifo, "size": 0}, {**fifo, "mode": stat.S_IFCHR | 0o600}):
        with pytest.raises(CorruptObject):
            decode_dir(node(2, bad))  # a FIFO has no rdev or size; a device needs its rdev
    with pytest.raises(CorruptObject):
        decode_dir(node(2, {**fifo, "mode": stat.S_IFREG | 0o644, "rdev": 1}))
    with pytest.raises(CorruptObject):
        decode_dir(node(3, fifo))


_KINDS = [stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777, stat.S_IFCHR | 0o600, stat.S_IFIFO | 0o600]


@given(
    st.lists(
        st.tuples(
            names,
            st.sampled_from(_KINDS),
            st.integers(0, 2**40),  # size, ids and times: every integer width
            st.dictionaries(st.binary(max_size=30), st.binary(max_size=30), max_size=4),  # keys past 23 bytes too
            st.booleans(),
        ),
        max_size=12,
        unique_by=lambda t: t[0],
    )
)
def test_directory_nodes_are_the_deterministic_encoding(items: list) -> None:
    """A directory node is encoded without the encoder sorting map keys (encoding.encode_ordered): every map
    is built in the deterministic order, so the bytes are those of the sorting encoder, and decode takes them."""
    ref = ChunkRef(b"c" * 32, b"k" * 32, b"p" * 32, 7)
    entries = []
    for name, mode, number, xattrs, linked in items:
        kind = stat.S_IFMT(mode)
        entries.append(
            Entry(
                name, mode, number, number // 3, number, number + 1,
                size=number if kind == stat.S_IFREG else 0,
                node=ref if kind == stat.S_IFDIR or (kind == stat.S_IFREG and number) else None,
                target=name if kind == stat.S_IFLNK else None,
                xattrs=xattrs,
                rdev=number if kind == stat.S_IFCHR else 0,
                link=b"g" * LINK_ID_SIZE if linked and kind == stat.S_IFREG else None,
                links=linked and kind == stat.S_IFDIR,
            )
        )  # fmt: skip
    encoded = encode_dir(entries)
    ordered = sorted(entries, key=lambda e: e.name)
    version = 2 if any(e.needs_v2 for e in entries) else 1
    assert encoded == encoding.encode({"v": version, "t": "dir", "entries": [e.to_cbor() for e in ordered]})
    assert decode_dir(encoded) == ordered
    assert encode_dir(entries) == encoded  # again, from each entry's kept encoding
    if entries:  # an entry made from another encodes its own fields, not the other's encoding
        changed = dataclasses.replace(entries[0], mtime_ns=entries[0].mtime_ns + 1)
        assert changed.encoded() == encoding.encode(changed.to_cbor()) != entries[0].encoded()


def test_one_node_past_what_it_holds_is_refused_with_a_clear_error() -> None:
    pad = {b"user.pad": b"x" * 60 * 1024}
    entries = [Entry(b"f%03d" % i, stat.S_IFREG | 0o644, 0, 0, 1, 1, xattrs=pad) for i in range(300)]
    with pytest.raises(DirectoryTooLarge, match="the directory 'd' cannot be stored: its 300 entries take"):
        encode_dir(entries, b"d")
    assert len(encode_dir(entries[:200])) < 16 * 1024 * 1024


def _many(count: int, prefix: bytes = b"file-") -> list[Entry]:
    node = ChunkRef(b"c" * 32, b"k" * 32, b"p" * 32, 3)
    return [_file(prefix + b"%06d.txt" % i, 3, node) for i in range(count)]


def test_a_directory_past_split_at_is_stored_in_parts_and_a_change_stores_one_part_anew() -> None:
    nodes = Nodes()
    small = _many(1000)
    assert nodes.get(store_dir(small, nodes.put)) == encode_dir(small)  # one node, as before: byte for byte
    entries = _many(60_000)  # about 6 MB of entries
    assert sum(len(e.encoded()) for e in entries) > SPLIT_AT
    ref = store_dir(list(reversed(entries)), nodes.put)
    assert store_dir(entries, nodes.put) == ref  # the same entries, the same nodes
    parts = open_dir(nodes.get(ref))[1]
    assert 2 < len(parts) < 30 and all(p.length <= PART_LIMIT for p in parts)
    visited: list[ChunkRef] = []
    assert load_dir(ref, nodes.get, visited.append) == entries and visited == parts
    asked: list[tuple[list[ChunkRef], int]] = []
    before = nodes.loads
    load_dir(ref, nodes.get, prefetch=lambda refs: asked.append((refs, nodes.loads - before)))
    assert asked == [(parts, 1)]  # every part asked for at once, once the list alone was loaded
    with pytest.raises(CorruptObject):
        decode_dir(nodes.get(ref))  # a node of parts is not a node of entries
    # A name added, one removed, one changed: the parts they fall in are new, the others the same objects.
    changed = [*entries[:30_001], _file(b"file-030000.txt-new"), *entries[30_001:]]
    del changed[50_000]
    changed[10] = dataclasses.replace(changed[10], mtime_ns=99)
    new_parts = open_dir(nodes.get(store_dir(changed, nodes.put)))[1]
    assert 1 <= len({p.cid for p in new_parts} - {p.cid for p in parts}) <= 3
    assert load_dir(store_dir(changed, nodes.put), nodes.get) == changed
    assert load_dir(store_dir(entries[:100], nodes.put), nodes.get) == entries[:100]  # and back to one node


def test_a_directory_stored_again_from_its_parts_keeps_the_parts_that_did_not_change_without_encoding_them() -> None:
    """store_dir_parts with the parts of the last store: the same nodes as a store from nothing, but a part whose
    entries are the same objects is neither encoded nor stored again; the entries in parts keep no encoding."""
    nodes = Nodes()
    rng = random.Random(7)
    pad = {b"user.pad": b"x" * 200_000}  # some entries large enough that parts also end at PART_LIMIT
    entries = [_file(b"f%06d" % i, 3, ChunkRef(b"c" * 32, b"k" * 32, b"p" * 32, 3)) for i in range(0, 120_000, 2)]
    entries[100:130] = [dataclasses.replace(e, xattrs=pad) for e in entries[100:130]]
    ref, parts = store_dir_parts(entries, nodes.put)
    assert len(parts) > 3 and any(p.limit is not None for p in parts)  # a part ended at the limit, too
    assert all(e._encoded is None for e in entries)
    stored: list[bytes] = []

    def store(plaintext: bytes) -> ChunkRef:
        stored.append(plaintext)
        return nodes.put(plaintext)

    for round_ in range(8):
        changed = list(entries)
        for _ in range(rng.choice([1, 3]) if round_ else 0):
            at = rng.randrange(len(changed))
            what = rng.choice(["add", "remove", "change", "grow"])
            if what == "add":
                changed.append(_file(b"f%06d" % (2 * rng.randrange(60_000) + 1), 3, entries[0].node))
            elif what == "remove":
                del changed[at]
            else:
                grown = {b"user.pad": b"y" * 3_000_000} if what == "grow" else changed[at].xattrs
                changed[at] = dataclasses.replace(changed[at], mtime_ns=round_, xattrs=grown)
        changed = list({e.name: e for e in changed}.values())
        stored.clear()
        ref_again, parts_again = store_dir_parts(changed, store, b"", parts)
        assert ref_again == store_dir([dataclasses.replace(e) for e in changed], nodes.put)
        kept = [p for p in parts_again if any(p is q for q in parts)]
        assert len(stored) == len(parts_again) - len(kept) + 1  # the new parts and the list
        assert all(e._encoded is None for p in kept for e in p.entries)
        if round_ == 0:
            assert len(kept) == len(parts) and len(stored) == 1  # nothing changed: only the list, stored again
        entries, parts = changed, parts_again
    assert load_dir(ref_again, nodes.get) == sorted(entries, key=lambda e: e.name)
    small = [e for e in entries if not e.xattrs][:1000]
    smaller, none = store_dir_parts(small, nodes.put, b"", parts)
    assert none == [] and nodes.get(smaller) == encode_dir(small)  # one node again


def test_an_entry_past_what_one_node_holds_is_refused_naming_it() -> None:
    nodes = Nodes()
    pad = {b"user.pad%03d" % i: b"x" * 60 * 1024 for i in range(300)}
    entries = [*_many(10), Entry(b"huge", stat.S_IFREG | 0o644, 0, 0, 1, 1, xattrs=pad)]
    with pytest.raises(DirectoryTooLarge, match="the directory 'd' cannot be stored: its entry 'huge' takes"):
        store_dir(entries, nodes.put, b"d")


def test_malformed_nodes_of_parts_are_corrupt() -> None:
    nodes = Nodes()
    a, b = (nodes.put(encode_part(group)) for group in (_many(3, b"a"), _many(3, b"b")))
    empty = nodes.put(encoding.encode({"v": 3, "t": "part", "entries": []}))
    wrong = nodes.put(encoding.encode({"v": 3, "t": "dir", "entries": []}))
    for parts in ([b, a], [a, a], [a, empty], [a, wrong], []):
        head = nodes.put(encoding.encode({"v": 3, "t": "dir", "parts": [p.to_cbor() for p in parts]}))
        with pytest.raises(CorruptObject):
            load_dir(head, nodes.get)
    good = nodes.put(encoding.encode({"v": 3, "t": "dir", "parts": [a.to_cbor(), b.to_cbor()]}))
    assert load_dir(good, nodes.get) == [*_many(3, b"a"), *_many(3, b"b")]


def encode_part(entries: list[Entry]) -> bytes:
    return encoding.encode({"v": 3, "t": "part", "entries": [e.to_cbor() for e in entries]})


@pytest.mark.parametrize("count", [0, 1, 23, 24, 255, 256, 65535, 65536])
def test_an_array_of_encoded_items_is_the_encoding_of_the_array(count: int) -> None:
    """encoding.encode_array: the array's head in its shortest form, at each width's bounds."""
    assert encoding.encode_array([encoding.encode(i) for i in range(count)]) == encoding.encode(list(range(count)))
