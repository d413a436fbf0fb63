"""Presets named without a path (`--preset quickstart`, `--spec tiny`): read from the files
that ship with ptdist, writing under the working directory; a path always wins over a name.
(tests/test_wheel.py runs them from an installed wheel.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ptdist.errors import PtdistError
from ptdist.orchestration.spec.spec_presets import SpecFile, spec_file, written_here
from ptdist.orchestration.spec.study_spec import load_study
from ptdist.orchestration.spec.sweep_spec import load_spec
from ptdist.shipped import top_level
from tests.conftest import REPO, write_jsonl
from tests.test_cli import _assert_one_clear_error, run

PRESETS = "paper, paper-tasks, quickstart, tiny"


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """The checkout as the working directory (so that a spec file is named as in the docs),
    with $PTDIST_STORE and $PTDIST_DATA_DIR pointing elsewhere."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PTDIST_STORE", str(tmp_path / "my_store"))
    monkeypatch.setenv("PTDIST_DATA_DIR", str(tmp_path / "my_data"))
    return tmp_path


def test_a_checkout_reads_its_own_top_level_files_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as a Ray Tune trial runs, in a folder of its own
    assert top_level() == REPO


def test_a_preset_named_writes_where_the_command_runs(elsewhere):
    named = load_spec("tiny")
    assert (named.storage_path, named.data_dir) == (str(elsewhere / "my_store"),
                                                    str(elsewhere / "my_data"))
    # What it reads stays beside its file.
    assert named.tasks == (str(REPO / "examples" / "tasks" / "tweets.yaml"),)
    # The same file given as a path: its own relative paths.
    as_file = load_spec("specs/tiny.yaml")
    assert (as_file.storage_path, as_file.data_dir) == (str(REPO / "store"), str(REPO / "data"))
    # A study too; an absolute store stays, and the cluster config is the one beside it.
    paper = load_study("paper").spec
    assert (paper.storage_path, paper.cluster) == ("/mnt/ptdist/store", str(REPO / "cluster.yaml"))
    quickstart = load_study("quickstart").spec
    assert quickstart.storage_path == str(elsewhere / "my_store")


def test_without_the_variables_a_preset_writes_to_store_and_data_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PTDIST_STORE", raising=False)
    monkeypatch.delenv("PTDIST_DATA_DIR", raising=False)
    assert written_here({"storage_path": "../store", "data_dir": "../data"}) == \
        {"storage_path": str(tmp_path / "store"), "data_dir": str(tmp_path / "data")}
    assert written_here({"storage_path": "/mnt/ptdist/store", "data_dir": "s3://b/x"}) == {}


def test_a_path_wins_over_a_preset_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").write_text(yaml.safe_dump(
        {"storage_path": "s", "tasks": ["sst2"], "models": {"tiny-roberta": {}}}))
    assert spec_file("tiny") == SpecFile(Path("tiny"), preset=False)
    assert load_spec("tiny").storage_path == str(tmp_path / "s")


def test_an_unknown_name_lists_the_presets(elsewhere, capsys):
    with pytest.raises(PtdistError, match=f"sweep spec 'tinyy': no such file, and no preset of "
                                          f"that name; give a YAML file or a preset: {PRESETS}"):
        load_spec("tinyy")
    code, _, err = run(capsys, "replicate", "--preset", "quick", "--dry-run")
    _assert_one_clear_error(code, err, "preset 'quick' not found", "--study FILE", PRESETS)
    code, _, err = run(capsys, "sweep", "--spec", "specs/tinyy.yaml", "--dry-run")
    _assert_one_clear_error(code, err, "'specs/tinyy.yaml': no such file", PRESETS)


def test_sweep_takes_a_preset_by_name(elsewhere, capsys):
    for split in ("train", "eval"):
        write_jsonl(elsewhere / "my_data" / "tweets" / f"{split}.jsonl",
                    [{"text": f"tweet {c}", "label": c} for c in (0, 1, 2)])
    code, out, err = run(capsys, "sweep", "--spec", "tiny", "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1]) == {"sweep": "tiny", "dry_run": True,
                                                "store": str(elsewhere / "my_store"), "to_run": 6}
    assert not (elsewhere / "my_store").exists()
