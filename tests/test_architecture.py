"""The architecture as code can break it: only ptdist.orchestration imports Ray, no two
subpackages import each other (directly or around a cycle), and no layer imports a higher one
(docs/architecture.md). Every import counts, function-local ones included."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ptdist"

# Lower layers never import higher ones (the map in docs/architecture.md).
LAYERS = {"errors": 0, "runtime": 0, "packaged": 0, "validation": 0, "checksum": 0, "files": 0,
          "statistics": 0,
          "tasks": 1, "store": 1, "backbones": 1,
          "training": 2,
          "transfer": 3, "neurons": 3, "projection": 3, "recommend": 3,
          "orchestration": 4,
          "reporting": 5,
          "cli": 6, "__main__": 6}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _part(path: Path) -> str:
    """The subpackage (or top-level module) a file belongs to."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, anywhere in it, as absolute dotted names."""
    package = ".".join(("ptdist", *path.relative_to(PACKAGE).parent.parts))
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                found.append(".".join(base + ([node.module] if node.module else [])))
            else:
                found.append(node.module)
    return found


def _edges() -> set[tuple[str, str]]:
    """(importer, imported) subpackage pairs."""
    edges = set()
    for path in _modules():
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "ptdist" and len(parts) > 1 and parts[1] != _part(path):
                edges.add((_part(path), parts[1]))
    return edges


def test_the_scan_sees_function_local_and_relative_imports(tmp_path):
    sample = PACKAGE / "orchestration" / "graph.py"
    names = _imports(sample)
    assert "ray" in names  # imported inside _RayExecutor.__init__
    assert "ptdist.orchestration.failures" in names


def test_only_orchestration_imports_ray():
    offenders = [f"{path.relative_to(PACKAGE.parent)} imports {name}"
                 for path in _modules() if _part(path) != "orchestration"
                 for name in _imports(path) if name == "ray" or name.startswith("ray.")]
    assert offenders == []


def test_no_import_cycle_between_subpackages():
    graph: dict[str, set[str]] = {}
    for importer, imported in _edges():
        graph.setdefault(importer, set()).add(imported)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle between subpackages: {' -> '.join(err.args[1])}")


def test_no_layer_imports_a_higher_one():
    parts = {_part(path) for path in _modules()}
    assert parts <= set(LAYERS) | {"__init__"}, parts - set(LAYERS)
    upward = sorted(f"{a} (layer {LAYERS[a]}) imports {b} (layer {LAYERS[b]})"
                    for a, b in _edges() if a in LAYERS and LAYERS[a] < LAYERS[b])
    assert upward == []
