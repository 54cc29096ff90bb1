"""The package's layers form a DAG (docs/design.md, "Layers"): every import, lazy ones included, points down.

Each module belongs to one layer; a module may import its own layer and the
layers below, never one above, and no set of modules imports itself round.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "portalfs"

# Bottom first. A module is in the layer of the longest prefix that names it.
LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["portalfs", "portalfs.errors", "portalfs.encoding", "portalfs.paths", "portalfs.memory",
              "portalfs.fsutil", "portalfs.sqlite", "portalfs.backoff", "portalfs.runtime", "portalfs.threads"]),
    ("primitives", ["portalfs.keys", "portalfs.keyfile", "portalfs.chunking", "portalfs.sealing", "portalfs.tree",
                    "portalfs.root", "portalfs.merge", "portalfs.provisioning", "portalfs.generations"]),
    ("protocol core", ["portalfs.protocol"]),
    ("store", ["portalfs.store"]),
    ("portal model", ["portalfs.state", "portalfs.device", "portalfs.pipeline", "portalfs.ingest",
                      "portalfs.restore", "portalfs.portal", "portalfs.conflicts"]),
    ("working tree", ["portalfs.worktree", "portalfs.gc", "portalfs.transfer"]),
    ("mount", ["portalfs.mount"]),
    ("transports", ["portalfs.net"]),
    ("edge and hub", ["portalfs.edge", "portalfs.hub"]),
    ("scheduler", ["portalfs.sched"]),
    ("fabric", ["portalfs.fabric"]),
    ("daemon", ["portalfs.daemon"]),
    ("cli", ["portalfs.cli"]),
]  # fmt: skip


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _layer(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{module} is in no layer: add it to LAYERS and to docs/design.md"
    return rank


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its file (functions included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import encoding` imports the module portalfs.encoding
                sub = f"{target}.{alias.name}"
                targets.add(sub if sub in modules else target)
    return {t for t in targets if t in modules and t != module}


def violations(root: Path) -> list[str]:
    """Every import against the layering, and every import cycle, in the package at ``root``."""
    modules = _modules(root)
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if _layer(target) > _layer(module):
                found.append(f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})")
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target] if target in path else [module, target]
                found.append("cycle: " + " -> ".join(cycle))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_every_import_points_down_and_none_goes_round() -> None:
    assert violations(PACKAGE) == []


def test_nothing_imports_the_cli() -> None:
    modules = _modules(PACKAGE)
    for module, path in modules.items():
        if not module.startswith("portalfs.cli"):
            assert not any(t.startswith("portalfs.cli") for t in _imports(module, path, modules)), module


def test_a_planted_wrong_way_import_and_a_cycle_are_caught(tmp_path: Path) -> None:
    copy = tmp_path / "portalfs"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    store = copy / "store" / "local.py"
    store.write_text(store.read_text() + "\n\ndef _planted() -> None:\n    from ..fabric import sync  # noqa\n")
    found = violations(copy)
    assert "portalfs.store.local (store) imports portalfs.fabric.sync (fabric)" in found  # (and the cycles it makes)

    store.write_text(store.read_text().replace("from ..fabric import sync", "from .memory import MemoryStore"))
    memory = copy / "store" / "memory.py"
    memory.write_text(memory.read_text() + "\n\ndef _planted() -> None:\n    from .local import LocalStore  # noqa\n")
    assert any(v.startswith("cycle: ") and "portalfs.store.local" in v for v in violations(copy))


def trio_runs(root: Path) -> list[str]:
    """Every use of ``trio.run`` outside the entry points (cli) and the process's runtime (runtime.py)."""
    found = []
    for module, path in sorted(_modules(root).items()):
        if module.startswith("portalfs.cli") or module == "portalfs.runtime":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            named = isinstance(node, ast.Attribute) and node.attr == "run"
            if named and isinstance(node.value, ast.Name) and node.value.id == "trio":  # type: ignore[attr-defined]
                found.append(f"{module}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module == "trio" and any(a.name == "run" for a in node.names):
                found.append(f"{module}:{node.lineno}")
    return found


def test_one_trio_loop_per_process(tmp_path: Path) -> None:
    """Only entry points start a loop; everything else runs on the process's runtime (docs/design.md, section 17)."""
    assert trio_runs(PACKAGE) == []
    copy = tmp_path / "portalfs"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    swarm = copy / "fabric" / "swarm.py"
    swarm.write_text(swarm.read_text() + "\n\ndef _planted() -> None:\n    trio.run(trio.sleep, 0)\n")
    assert [f for f in trio_runs(copy) if f.startswith("portalfs.fabric.swarm:")]
