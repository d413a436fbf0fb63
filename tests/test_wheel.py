"""ptdist as a user installs it: the wheel built from this checkout, installed into a fresh
virtual environment through the lock, and run from a folder outside the checkout, where it
finds its presets, DeepSpeed configs and task files as package data and writes nothing into
the installation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest

from tests.conftest import REPO, child_env, sentiment_rows, write_jsonl

# One row per class of each quickstart task, in its columns: enough for a dry run to name the
# runs (their ids hash the data) without the data packages the real study prepares.
QUICKSTART_ROWS = {
    "tweets": [{"text": f"tweet {c}", "label": c} for c in (0, 1, 2)],
    "movie_sentences": [{"text": f"a film {c}", "label": c} for c in (0, 1)],
    "privacy_policy": [{"clause": "we keep logs", "question": "do you sell them", "label": c}
                       for c in (0, 1)],
    "bbc_news": [{"text": f"story {c}", "label": c} for c in range(5)],
}


def test_every_package_folder_of_the_source_is_in_the_wheel():
    """pyproject lists its packages (a found list takes no mapping): a new folder of ptdist/
    that is not listed would be missing from the wheel."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    folders = {".".join(p.relative_to(REPO).parts) for p in (REPO / "ptdist").rglob("*")
               if p.is_dir() and p.name != "__pycache__"}
    assert folders | {"ptdist"} <= listed


def _run(argv: list, cwd: Path, env: dict | None = None, timeout: int = 900) -> str:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _working_tree(destination: Path) -> Path:
    """This checkout's files as git sees them (tracked, and new ones not ignored), copied: the
    build leaves its build/ and egg-info beside the sources, and a stale build/ of the checkout
    would leak files into the wheel."""
    names = _run(["git", "ls-files", "-co", "--exclude-standard", "-z"], REPO).split("\0")
    for name in filter(None, names):
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    return destination


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a fresh virtual environment holding the wheel alone, its
    dependencies seen through this environment's site-packages (a path line in a .pth file, so
    its editable ptdist, a finder installed by its own .pth, stays out). Installing the lock
    into the venv as well took 5 minutes and checked what every CI install already checks."""
    work = tmp_path_factory.mktemp("wheel")
    source = _working_tree(work / "source")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", work / "dist",
          source], work)
    wheel, = (work / "dist").glob("ptdist-*.whl")
    venv.create(work / "venv", with_pip=True)
    _run([work / "venv" / "bin" / "pip", "install", "-q", "--no-compile", "--no-deps", wheel],
         work)
    site, = (work / "venv" / "lib").glob("python3*/site-packages")
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return work / "venv" / "bin"


def _installation(bin_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file of the installed package but bytecode, with its size and mtime."""
    package = next((bin_dir.parent / "lib").glob("python3*/site-packages/ptdist"))
    return {str(p.relative_to(package)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


@pytest.mark.slow
def test_the_installed_wheel_runs_its_presets_and_trains_from_another_folder(installed,
                                                                            tmp_path):
    here = tmp_path / "elsewhere"
    for task, rows in QUICKSTART_ROWS.items():
        for split in ("train", "eval"):
            write_jsonl(here / "data" / task / f"{split}.jsonl", rows)
    write_jsonl(here / "mine" / "sst2" / "train.jsonl", sentiment_rows(32, seed=1))
    write_jsonl(here / "mine" / "sst2" / "eval.jsonl", sentiment_rows(16, seed=2))
    env = child_env(PATH=f"{installed}{os.pathsep}{os.environ['PATH']}")
    for var in ("PYTHONPATH", "PTDIST_STORE", "PTDIST_DATA_DIR"):
        env.pop(var, None)  # the installed ptdist, and the presets' own defaults
    before = _installation(installed)
    where = _run([installed / "python", "-c", "import ptdist; print(ptdist.__file__)"], here, env)
    assert Path(where.strip()).is_relative_to(installed.parent), where

    def ptdist(*argv: str) -> str:
        return _run([installed / "ptdist", *argv], here, env)

    # The quickstart preset, read from the package: its store and data folder are this
    # folder's (the dry run reads the data we wrote to name its runs).
    plan = ptdist("replicate", "--preset", "quickstart", "--dry-run").splitlines()
    assert plan[0] == ("study quickstart: 2 model(s), 4 task(s), 3 seed(s), 1 init(s); "
                       f"store {here / 'store'}")
    assert any(line.startswith("  report ") for line in plan)
    # The paper preset: its cluster store stays where it says.
    plan = ptdist("replicate", "--preset", "paper", "--dry-run").splitlines()
    assert plan[0] == ("study paper: 4 model(s), 17 task(s), 3 seed(s), 1 init(s); "
                       "store /mnt/ptdist/store")
    # A sweep preset named without a path.
    out = ptdist("sweep", "--spec", "tiny", "--dry-run", "--json")
    assert json.loads(out.splitlines()[-1]) == {"sweep": "tiny", "dry_run": True,
                                                "store": str(here / "store"), "to_run": 6}
    assert "2 worker(s)" in out  # tiny-t5-v1_1's ZeRO-2 worker group, from the shipped config
    assert not (here / "store").exists()  # dry runs write nothing

    # A run under the packaged ZeRO-2 config, stored in ./store.
    out = ptdist("train", "--model", "tiny-roberta", "--task", "sst2", "--data-dir", "mine",
                 "--steps", "4", "--eval-every", "4", "--prompt-length", "4", "--batch-size",
                 "8", "--ds-config", "zero2", "--json")
    prompt_id = json.loads(out.splitlines()[-1])["prompt_id"]
    from ptdist.store import Store

    manifest = Store(here / "store").prompts.manifest(prompt_id)
    assert (manifest.zero_stage, manifest.config["ds_config"], manifest.steps) == (2, "zero2", 4)
    assert _installation(installed) == before
