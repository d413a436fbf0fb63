"""The architecture as code can break it: only ptdist.orchestration imports Ray, no two subpackages
import each other (directly or around a cycle), no layer imports a higher one, and
ptdist.offline is reached only through its face, from one hook each in tasks and backbones, and
the cli reaches the work only through ptdist.api (docs/architecture.md). Every import counts,
function-local ones included; a lazy face (`ptdist.lazy`) imports only its own package's
modules, so it adds no edge between parts."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ptdist"

# Lower layers never import higher ones (the map in docs/architecture.md).
LAYERS = {"errors": 0, "runtime": 0, "lazy": 0, "validation": 0, "checksum": 0, "files": 0,
          "statistics": 0, "logs": 0, "progress": 0, "faults": 0, "shipped": 0,
          "offline": 1,
          "tasks": 2, "store": 2, "backbones": 2, "distributed": 2,
          "scoring": 3,
          "training": 4,
          "transfer": 5, "neurons": 5, "projection": 5, "recommend": 5,
          "orchestration": 6,
          "reporting": 7,
          "api": 8,
          "cli": 9, "__main__": 9}

# What the cli may take from the layers the API stands on (3 to 7) besides their settings and
# records: how to present an outcome (its grid, its listing, its exit status, an estimate over
# seeds in words), never the work.
PRESENTATION = {"cells", "unusable_tasks", "describe_jobs", "require_success",
                "require_no_failures", "stated", "compared"}

# The one module of each part that may import ptdist.offline (and only its face).
OFFLINE_HOOKS = {"tasks": "tasks/packaged_data.py", "backbones": "backbones/loading.py"}


def _modules(root: Path = PACKAGE) -> list[Path]:
    return sorted(root.rglob("*.py"))


def _part(path: Path, root: Path = PACKAGE) -> str:
    """The subpackage (or top-level module) a file belongs to."""
    relative = path.relative_to(root)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imports(path: Path, root: Path = PACKAGE) -> list[str]:
    """Every module ``path`` imports, anywhere in it, as absolute dotted names; ``from M
    import N`` counts as ``M`` and ``M.N`` (N may be a submodule)."""
    package = ".".join(("ptdist", *path.relative_to(root).parent.parts))
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return found


def _edges() -> set[tuple[str, str]]:
    """(importer, imported) subpackage pairs."""
    parts = {_part(path) for path in _modules()}
    edges = set()
    for path in _modules():
        for name in _imports(path):
            top = name.split(".")
            if top[0] == "ptdist" and len(top) > 1 and top[1] in parts - {_part(path)}:
                edges.add((_part(path), top[1]))
    return edges


def _offline_reach(root: Path = PACKAGE) -> list[str]:
    """Imports of ptdist.offline that break its rule: a module of it named from outside (its
    internals), or the face imported in tasks or backbones anywhere but their hook."""
    internals = {f"ptdist.offline.{path.stem}" for path in (root / "offline").glob("*.py")}
    offenders = []
    for path in _modules(root):
        part, where = _part(path, root), path.relative_to(root).as_posix()
        if part == "offline":
            continue
        for name in _imports(path, root):  # every form of import names "ptdist.offline"
            if any(name == m or name.startswith(m + ".") for m in internals):
                offenders.append(f"{where} imports {name}, inside ptdist.offline's face")
            elif name == "ptdist.offline" and part in OFFLINE_HOOKS and \
                    where != OFFLINE_HOOKS[part]:
                offenders.append(f"{where} imports ptdist.offline; only {OFFLINE_HOOKS[part]} may")
    return sorted(set(offenders))


def _layer_part(module: str) -> str | None:
    """The part of ptdist a dotted ``ptdist.X...`` name is in (None outside ptdist)."""
    names = module.split(".")
    return names[1] if names[0] == "ptdist" and len(names) > 1 else None


def _work_in_cli(root: Path = PACKAGE) -> list[str]:
    """Names the cli imports from layers 3 to 7 that are neither a type (CamelCase: settings,
    records) nor a way of presenting an outcome: the work a command should reach through
    ptdist.api. Whole modules imported from those layers count too."""
    below = {part for part, layer in LAYERS.items() if 3 <= layer <= 7}
    found = []
    for path in _modules(root / "cli"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [f"{path.name}: import {a.name}" for a in node.names
                          if _layer_part(a.name) in below]
            elif isinstance(node, ast.ImportFrom) and _layer_part(node.module or "") in below:
                found += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                          if not a.name[0].isupper() and a.name not in PRESENTATION]
    return found


def test_the_cli_is_a_thin_layer_over_the_api():
    assert _work_in_cli() == []
    uses = {name for path in _modules(PACKAGE / "cli") for name in _imports(path)}
    commands = {f"ptdist.api.{m}" for m in ("prompts", "transfer", "neurons", "projection",
                                            "study", "recommend")}
    assert commands <= uses, commands - uses


def test_the_thin_cli_rule_catches_a_stage_called_from_a_command(tmp_path):
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "transfer.py").write_text(
        "def matrix(args):\n"
        "    from ptdist.transfer import MatrixSettings, cells\n"
        "    from ptdist.orchestration.jobs.stages import run_matrix\n"
        "    import ptdist.reporting.figures\n")
    assert _work_in_cli(tmp_path) == ["transfer.py: ptdist.orchestration.jobs.stages.run_matrix",
                                      "transfer.py: import ptdist.reporting.figures"]


def test_the_scan_sees_function_local_and_relative_imports(tmp_path):
    sample = PACKAGE / "orchestration" / "execution" / "graph.py"
    names = _imports(sample)
    assert "ray" in names  # imported inside _RayExecutor.__init__
    assert "ptdist.orchestration.execution.failures" in names


def test_a_module_of_a_sub_package_belongs_to_its_top_package():
    """The rules hold for sub-packages: a module of `orchestration/execution/` imports Ray, and
    everything else, as part of orchestration."""
    nested = [path for path in _modules(PACKAGE / "orchestration")
              if len(path.relative_to(PACKAGE).parts) > 2]
    assert nested, "orchestration has no sub-packages to check"
    assert {_part(path) for path in nested} == {"orchestration"}


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


def test_offline_is_reached_through_its_face_from_one_hook_each_in_tasks_and_backbones():
    assert _offline_reach() == []
    for part, hook in OFFLINE_HOOKS.items():  # the hooks named are the ones in use
        assert "ptdist.offline" in _imports(PACKAGE / hook), f"{hook} no longer imports it"


def test_the_offline_rule_catches_an_internal_import_and_a_second_hook(tmp_path):
    root = tmp_path / "ptdist"
    for relative, text in {
        "offline/__init__.py": "",
        "offline/converted.py": "",
        "backbones/loading.py": "from ptdist.offline import converted_dir\n",
        "backbones/presets.py": "def f():\n    from ptdist.offline import CONVERTED\n",
        "tasks/packaged_data.py": "from ptdist.offline import converted\n",
        "cli/head.py": "import ptdist.offline.converted\nfrom ptdist.offline import RECIPE\n",
    }.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    assert _offline_reach(root) == [
        "backbones/presets.py imports ptdist.offline; only backbones/loading.py may",
        "cli/head.py imports ptdist.offline.converted, inside ptdist.offline's face",
        "tasks/packaged_data.py imports ptdist.offline.converted, inside ptdist.offline's face",
    ]


def test_every_name_of_the_offline_face_resolves():
    import ptdist.offline

    assert ptdist.offline.__all__
    for name in ptdist.offline.__all__:
        assert getattr(ptdist.offline, name) is not None, name
