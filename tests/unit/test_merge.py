"""Three-way merge of trees, on nodes kept in a dict: no store, no keys."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from portalfs.merge import MAX_NAME, conflict_name, merge_trees

from .trees import Nodes, Tree


def _rename(name: bytes, taken: set[bytes]) -> bytes:
    return conflict_name(name, "laptop", "2026-12-02", taken)


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
