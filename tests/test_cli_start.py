"""A fast start: `import ptdist`, `ptdist --help` and every command's --help import none of
the heavy libraries, checked in a fresh process's sys.modules (what decides the time, and
robust under load where a timing is not); and that help still lists the presets and the
built-in tasks. The timings: benchmarks/cli_start.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ptdist.backbones import PRESETS
from ptdist.tasks import list_tasks, task_names
from tests.conftest import REPO, child_env
from tests.test_cli import _commands

HEAVY = ("torch", "transformers", "datasets", "deepspeed", "ray", "pyarrow", "matplotlib",
         "pandas", "pydantic")

# Every help in one fresh process: what none of them imports, their union does not either.
EVERY_HELP = """
import contextlib, io, json, sys
from ptdist.cli import main
helps = {}
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([*argv, "--help"])
        except SystemExit as exc:
            code = exc.code
    helps[" ".join(argv)] = [code, out.getvalue()]
print(json.dumps({"helps": helps, "modules": sorted(sys.modules)}))
"""


@pytest.fixture(scope="module")
def helps() -> dict:
    """{"helps": {command: [exit code, help text]}, "modules": what the process imported}
    for `ptdist --help`, every command group's and every command's."""
    commands = sorted({command[:i] for command in _commands() for i in range(len(command) + 1)})
    done = subprocess.run([sys.executable, "-c", EVERY_HELP, json.dumps(commands)], cwd=REPO,
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_no_help_imports_a_heavy_library(helps):
    assert "" in helps["helps"] and "transfer" in helps["helps"] and "train" in helps["helps"]
    heavy = [m for m in helps["modules"] if m.split(".")[0] in HEAVY]
    assert heavy == [], f"help imported {sorted({m.split('.')[0] for m in heavy})}"
    assert [code for code, _ in helps["helps"].values()] == [0] * len(helps["helps"])


def test_the_help_still_lists_the_presets_and_the_tasks(helps):
    names = [task.name for task in list_tasks()]
    assert task_names() == tuple(names)  # read with yaml alone, as the registry lists them
    text = " ".join(helps["helps"]["train"][1].split())
    assert f"a preset ({', '.join(PRESETS)};" in text
    assert f"a registered task ({', '.join(names)};" in text
    assert all(command in helps["helps"][""][1] for command in ("train", "replicate", "project"))


def test_import_ptdist_imports_no_heavy_library():
    """`import ptdist` (the Python API's face) loads no module of its names until one is used,
    and so none of the heavy libraries."""
    done = subprocess.run([sys.executable, "-c", "import json, sys, ptdist; "
                           "print(json.dumps([ptdist.__all__, sorted(sys.modules)]))"],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    names, modules = json.loads(done.stdout)
    assert "transfer_matrix" in names and "Store" in names
    assert [m for m in modules if m.split(".")[0] in HEAVY] == []
    assert not [m for m in modules if m.startswith("ptdist.api")]
