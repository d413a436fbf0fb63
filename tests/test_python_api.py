"""The Python API as a user meets it: `import ptdist` names every entry point (documented,
typed), its errors come before any work, and docs/python_api.md's walk-through runs as
written."""

from __future__ import annotations

import inspect
import pydoc
import re
import subprocess
import sys
import typing

import pytest

import ptdist
from ptdist.errors import PtdistError
from tests.conftest import REPO, child_env

GUIDE = REPO / "docs" / "python_api.md"
FUNCTIONS = ("train", "evaluate", "export_peft", "transfer_matrix", "tpt", "capture",
             "indicators", "embedding_indicators", "correlate", "train_projector",
             "evaluate_projector", "tpt_model", "project_pairs", "sweep", "replicate")


def walkthrough() -> str:
    """The guide's Python blocks, in order, as one program."""
    return "\n".join(re.findall(r"^```python\n(.*?)^```", GUIDE.read_text(), re.S | re.M))


def test_every_name_of_the_face_resolves_and_says_what_it_is():
    assert set(FUNCTIONS) <= set(ptdist.__all__)
    for name in ptdist.__all__:
        value = getattr(ptdist, name)
        assert inspect.getdoc(value), f"ptdist.{name} has no docstring"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_function_is_typed_and_says_what_it_returns(name):
    fn = getattr(ptdist, name)
    hints = typing.get_type_hints(fn)
    assert set(inspect.signature(fn).parameters) | {"return"} == set(hints), name
    assert "Returns" in inspect.getdoc(fn), name


def test_help_lists_the_api():
    text = pydoc.render_doc(ptdist, renderer=pydoc.plaintext)
    for name in (*FUNCTIONS, "Store", "TrainConfig", "Execution", "PtdistError"):
        assert re.search(rf"^\s+(class )?{name}\b", text, re.M), name


def test_the_guide_documents_every_name_of_the_face():
    table = GUIDE.read_text().split("## The names")[1].split("## A small study")[0]
    missing = [n for n in ptdist.__all__ if f"`{n}" not in table and f" {n}`" not in table
               and f", `{n}`" not in table]
    assert missing == []


def test_user_errors_come_before_any_work(tmp_path):
    store = ptdist.Store(tmp_path / "store")
    with pytest.raises(PtdistError, match="steps must be at least 1"):
        ptdist.TrainConfig(model="tiny-roberta", task="sst2", steps=0)
    with pytest.raises(PtdistError, match="unknown task 'no-such-task'; known tasks: "):
        ptdist.train(ptdist.TrainConfig(model="tiny-roberta", task="no-such-task"), store)
    with pytest.raises(PtdistError, match=r"give either a model \(model=, --model"):
        ptdist.embedding_indicators()
    with pytest.raises(PtdistError, match=r"no prompt of model 'tiny-roberta' in store .* "
                                          r"for task\(s\): sst2, imdb"):
        ptdist.transfer_matrix("tiny-roberta", ["sst2", "imdb"], store=store)
    with pytest.raises(PtdistError, match="a model partitioned over 2 workers needs"):
        ptdist.capture("tiny-roberta", store=store, resources=ptdist.Resources(workers=2))
    with pytest.raises(PtdistError, match="tpt: train cannot set init, task"):
        ptdist.tpt("tiny-roberta", ["sst2"], ["imdb"], train={"task": "x", "init": "vocab"},
                   store=store)
    with pytest.raises(PtdistError, match="tolerance 2 is not a fraction"):
        ptdist.tpt("tiny-roberta", ["sst2"], ["imdb"], tolerance=2, store=store)
    with pytest.raises(PtdistError, match="give a study .* or a preset"):
        ptdist.replicate()
    with pytest.raises(PtdistError, match="preset 'nope' not found; .* quickstart"):
        ptdist.replicate(preset="nope")
    with pytest.raises(PtdistError, match="no prompt of model 'tiny-roberta'"):
        ptdist.train_projector(ptdist.ProjectorConfig(
            source_model="tiny-roberta", target_model="tiny-t5", mode="distance",
            tasks=("sst2",)), store)
    assert not (tmp_path / "store" / "prompts").exists()


@pytest.mark.slow
def test_the_walkthrough_runs_as_written(tmp_path):
    done = subprocess.run([sys.executable, "-c", walkthrough()], cwd=tmp_path,
                          env=child_env(), capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    report = tmp_path / "walkthrough" / "store" / "reports" / "walkthrough" / "report.md"
    assert str(report.relative_to(tmp_path)) in done.stdout and "## Findings" in \
        report.read_text()
