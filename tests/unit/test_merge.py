"""Three-way merge of trees, on nodes kept in a dict: no store, no keys."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from portalfs.merge import MAX_NAME, Writer, conflict_copy, conflict_name, merge_trees
from portalfs.tree import Entry

from .trees import Nodes, Tree


def _rename(entry: Entry, taken: set[bytes]) -> Entry:
    return conflict_copy(entry, taken, Writer("laptop", b"l" * 32), Writer("desk", b"d" * 32), "2026-12-02")


def merge(base: Tree | None, ours: Tree, theirs: Tree) -> tuple[Tree, list[str]]:
    nodes = Nodes()
    # ours and base built at other times than theirs: times alone are not changes
    result = merge_trees(
        None if base is None else nodes.build(base, when=1),
        nodes.build(ours, when=2),
        nodes.build(theirs, when=3),
        nodes.load,
        nodes.store,
        _rename,
    )
    return nodes.read(result.root), result.conflicts


def test_changes_on_either_side_are_both_taken() -> None:
    base: Tree = {"keep": "k", "edit-ours": "1", "edit-theirs": "1", "gone-ours": "g", "gone-theirs": "g"}
    ours: Tree = {"keep": "k", "edit-ours": "2", "edit-theirs": "1", "gone-theirs": "g", "new-ours": "n"}
    theirs: Tree = {"keep": "k", "edit-ours": "1", "edit-theirs": "3", "gone-ours": "g", "new-theirs": "m"}
    merged, conflicts = merge(base, ours, theirs)
    assert merged == {"keep": "k", "edit-ours": "2", "edit-theirs": "3", "new-ours": "n", "new-theirs": "m"}
    assert conflicts == []


def test_a_true_conflict_keeps_both_and_a_deletion_yields_to_a_change() -> None:
    base: Tree = {"x.txt": "base", "del-ours": "d", "del-theirs": "d", "same": "s"}
    ours: Tree = {"x.txt": "ours", "del-theirs": "changed here", "same": "both"}
    theirs: Tree = {"x.txt": "theirs", "del-ours": "changed there", "same": "both"}
    merged, conflicts = merge(base, ours, theirs)
    assert merged == {
        "x.txt": "theirs",
        "x (conflict laptop 2026-12-02).txt": "ours",
        "del-ours": "changed there",
        "del-theirs": "changed here",
        "same": "both",
    }
    assert conflicts == ["x (conflict laptop 2026-12-02).txt"]


def test_directories_changed_on_both_sides_merge_inside_and_new_on_both_merge_too() -> None:
    base: Tree = {"d": {"a": "1", "b": "1"}}
    ours: Tree = {"d": {"a": "2", "b": "1"}, "n": {"x": "ours", "o": "o"}}
    theirs: Tree = {"d": {"a": "1", "b": "2"}, "n": {"x": "theirs", "t": "t"}}
    merged, conflicts = merge(base, ours, theirs)
    assert merged == {
        "d": {"a": "2", "b": "2"},
        "n": {"x": "theirs", "x (conflict laptop 2026-12-02)": "ours", "o": "o", "t": "t"},
    }
    assert conflicts == ["n/x (conflict laptop 2026-12-02)"]


def test_a_file_against_a_directory_keeps_both() -> None:
    merged, _ = merge({}, {"p": "a file"}, {"p": {"inner": "i"}})
    assert merged == {"p": {"inner": "i"}, "p (conflict laptop 2026-12-02)": "a file"}


def test_conflict_names_skip_those_taken_and_fit_in_a_name() -> None:
    assert conflict_name(b".profile", "l", "2026-12-02", set()) == b".profile (conflict l 2026-12-02)"
    first = conflict_name(b"a.tar.gz", "l", "2026-12-02", set())
    assert first == b"a.tar (conflict l 2026-12-02).gz"
    assert conflict_name(b"a.tar.gz", "l", "2026-12-02", {first}) == b"a.tar (conflict l 2026-12-02 2).gz"
    long = conflict_name(b"n" * 250 + b".txt", "l", "2026-12-02", set())
    assert len(long) <= MAX_NAME and long.endswith(b"(conflict l 2026-12-02).txt")


trees = st.recursive(
    st.sampled_from(["a", "b", "c"]),
    lambda inner: st.dictionaries(st.sampled_from(["f", "g", "h.txt"]), inner, max_size=3),
    max_leaves=8,
).filter(lambda t: isinstance(t, dict))


@given(trees, trees)
def test_merging_with_no_change_on_one_side_gives_the_other(base: Tree, changed: Tree) -> None:
    assert merge(base, base, changed) == (changed, [])  # nothing changed here: theirs
    assert merge(base, changed, base) == (changed, [])  # nothing changed there: ours
    assert merge(base, changed, changed) == (changed, [])  # the same change on both


def test_link_groups_merge_per_name_and_a_group_whose_names_diverged_is_split() -> None:
    nodes = Nodes()
    base: Tree = {"x": "0|g", "d": {"y": "0|g"}, "solo": "s"}
    ours: Tree = {"a": "0|g", "d": {"y": "0|g"}, "solo": "s"}  # x renamed to a here
    theirs: Tree = {"x": "1|g", "d": {"y": "1|g"}, "solo": "s|h"}  # both names rewritten there
    result = merge_trees(nodes.build(base), nodes.build(ours), nodes.build(theirs), nodes.load, nodes.store, _rename)
    merged = nodes.read(result.root)
    assert merged == {"a": "0", "x": "1", "d": {"y": "1"}, "solo": "s"}
    groups = sorted(sorted(paths) for paths in nodes.groups(result.root).values())
    # x and d/y stay one file; a (the old bytes, renamed here) is a file of its own; a group of one is no group
    assert groups == [["d/y", "x"]]


def test_a_conflict_copy_of_a_linked_file_leaves_its_group() -> None:
    nodes = Nodes()
    base: Tree = {"x": "0|g", "y": "0|g"}
    ours: Tree = {"x": "ours|g", "y": "ours|g"}
    theirs: Tree = {"x": "theirs|g", "y": "theirs|g"}
    result = merge_trees(nodes.build(base), nodes.build(ours), nodes.build(theirs), nodes.load, nodes.store, _rename)
    assert nodes.read(result.root) == {"x": "theirs", "y": "theirs", "x (conflict laptop 2026-12-02)": "ours",
                                       "y (conflict laptop 2026-12-02)": "ours"}  # fmt: skip
    assert sorted(sorted(p) for p in nodes.groups(result.root).values()) == [["x", "y"]]


def _sync_model(seed: int) -> tuple[dict[str, str], set[str], dict[str, str | None]]:
    """Two devices edit a small tree and sync at random moments through a hub that takes a version only on top of
    its head (as the real one does): a device that is behind lands the hub's versions first, merging its own.
    Returns the final tree (both devices end equal), the files both devices changed, and each file's last
    write (None: deleted) by the device that made it."""
    import random

    rng = random.Random(seed)
    nodes = Nodes()
    names = ["a", "b", "c", "d/x", "d/y", "e"]
    owner = {name: rng.choice(["A", "B", "both"]) for name in names}

    def tree(flat: dict[str, str]) -> Tree:
        out: Tree = {}
        for path, content in flat.items():
            *dirs, leaf = path.split("/")
            where = out
            for d in dirs:
                where = where.setdefault(d, {})  # type: ignore[assignment]
            where[leaf] = content
        return out

    def flat(t: Tree, prefix: str = "") -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in t.items():
            if isinstance(value, str):
                out[prefix + name] = value
            else:
                out.update(flat(value, prefix + name + "/"))
        return out

    start = {name: "base" for name in names}
    hub = [start]
    devices = {d: {"base": 0, "local": dict(start)} for d in "AB"}
    last: dict[str, str | None] = {}
    changed_by: dict[str, set[str]] = {name: set() for name in names}

    def land(d: str) -> None:
        state = devices[d]
        head = len(hub) - 1
        if state["base"] == head:
            return
        base, ours, theirs = hub[state["base"]], state["local"], hub[head]
        if ours == base:
            state["local"] = dict(theirs)
        else:
            merged = merge_trees(
                nodes.build(tree(base)), nodes.build(tree(ours)), nodes.build(tree(theirs)), nodes.load, nodes.store,
                lambda entry, taken: conflict_copy(entry, taken, Writer(d, d.encode() * 32), Writer("o", b"o" * 32),
                                                   "2026-12-04"),
            )  # fmt: skip
            state["local"] = flat(nodes.read(merged.root))
        state["base"] = head

    def sync(d: str) -> None:
        land(d)
        state = devices[d]
        if state["local"] != hub[state["base"]]:
            hub.append(dict(state["local"]))
            state["base"] = len(hub) - 1

    for step in range(rng.randint(5, 30)):
        d = rng.choice("AB")
        action = rng.random()
        mine = [n for n in names if owner[n] in (d, "both")]
        if action < 0.55 and mine:
            name = rng.choice(mine)
            local = devices[d]["local"]
            if rng.random() < 0.15 and name in local:
                del local[name]
                last[name] = None
            else:
                local[name] = last[name] = f"{d}{step}"
            changed_by[name].add(d)
        elif action < 0.8:
            sync(d)
        else:
            land(d)
    for _ in range(2):
        sync("A")
        sync("B")
    assert devices["A"]["local"] == devices["B"]["local"] == hub[-1]
    both = {name for name, who in changed_by.items() if len(who) > 1}
    return hub[-1], both, last


def test_a_file_only_one_device_changed_never_conflicts_in_1000_interleavings() -> None:
    for seed in range(1000):
        final, both, last = _sync_model(seed)
        conflicted = {name.split(" (conflict ")[0] for name in final if " (conflict " in name}
        assert conflicted <= both, (seed, conflicted, both)  # only a file both changed can conflict
        for name, content in last.items():
            if name not in both:  # one writer: its last write is what the portal holds
                assert final.get(name) == content, (seed, name)
            elif content is not None:  # both wrote: the last write survives, under its name or beside it
                assert content in final.values(), (seed, name)
