"""The command line as a user meets it: help, JSON output, and one clear line per mistake."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from ptdist.cli import build_parser, main
from ptdist.store import Store
from ptdist.tasks import get_task, load_split
from tests.conftest import write_jsonl
from tests.test_store import manifest

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _commands(parser=None, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command the parser knows, as argv prefixes."""
    import argparse

    parser = parser or build_parser()
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _commands(sub, prefix + (name,))
                found += nested or [prefix + (name,)]
    return found


DOCS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
# A command line of a shell block ("ptdist ...", "python -m ptdist ...", after env settings).
SHELL_LINE = re.compile(r"^\s*(?:\$ )?(?:[A-Z_]+=\S* )*(?:python3? -m |torchrun .*-m )?"
                        r"ptdist ((?:[a-z][a-z0-9-]* ?)+)", re.M)
INLINE = re.compile(r"`ptdist ((?:[a-z][a-z0-9-]* ?)+)")


def _named(words: str, commands: set[tuple[str, ...]]) -> tuple[str, ...] | None:
    """The command that ``words`` (a documented line's words before its options) runs."""
    argv = tuple(words.split())
    return next((argv[:k] for k in (1, 2) if argv[:k] in commands), None)


def test_every_command_the_docs_run_exists():
    commands = set(_commands())
    for doc in DOCS:
        for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", doc.read_text(), re.S):
            for words in SHELL_LINE.findall(re.sub(r"\\\n\s*", " ", block)):
                assert _named(words, commands), (doc.name, f"ptdist {words}")


def test_every_command_is_documented():
    commands = set(_commands())
    documented = {_named(words, commands) for doc in DOCS
                  for words in SHELL_LINE.findall(doc.read_text()) + INLINE.findall(
                      doc.read_text())}
    assert commands - documented == set()


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_every_command_has_help(capsys, command):
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0 and "usage: ptdist " + " ".join(command) in out
    assert "--json" in out and "--verbose" in out


def test_model_and_task_help_name_what_the_listings_show(capsys):
    """Every --model, --source-model, --target-model and --task help names the presets of
    `ptdist models` and the tasks of `ptdist tasks`."""
    code, out, _ = run(capsys, "models", "--json")
    presets = json.loads(out.strip().splitlines()[-1])["presets"]
    code, out, _ = run(capsys, "tasks", "--json")
    tasks = json.loads(out.strip().splitlines()[-1])["tasks"]
    for command in _commands():
        code, out, _ = run(capsys, *command, "--help")
        text = " ".join(out.split())
        for option in ("--model", "--source-model", "--target-model"):
            if f"{option} " in out:
                assert all(p in text for p in presets), (command, option)
        if any(f"{option} " in out for option in ("--task", "--tasks", "--train-tasks",
                                                   "--target-tasks")):
            assert all(t in text for t in tasks), command


def test_one_vocabulary_for_the_shared_options(capsys):
    """--store, --eval-limit, --local and --address mean the same on every command that
    takes them; commands that run several jobs all take --local and --address."""
    several_jobs = {("sweep",), ("replicate",), ("transfer", "matrix"), ("transfer", "tpt"),
                    ("neurons", "capture"), ("project", "tpt"), ("project", "pairs"),
                    ("recommend",)}
    for command in _commands():
        code, out, _ = run(capsys, *command, "--help")
        assert ("--local" in out) == (command in several_jobs), command
        assert ("--address" in out) == (command in several_jobs), command
        assert "--limit " not in out and "--storage-path" not in out, command


@pytest.mark.parametrize("command, old, new", [
    (("transfer", "tpt", "--model", "m"), ["--targets", "a", "--sources", "b"],
     ["--target-tasks", "a", "--source-tasks", "b"]),
    (("project", "train", "--mode", "task"),
     ["--source", "m1", "--target", "m2", "--tasks", "a", "b"],
     ["--source-model", "m1", "--target-model", "m2", "--train-tasks", "a", "b"]),
    (("project", "tpt", "--projector", "p"), ["--targets", "a"], ["--target-tasks", "a"]),
], ids=["transfer tpt", "project train", "project tpt"])
def test_renamed_options_keep_their_old_names_for_one_release(capsys, command, old, new):
    """Models are --source-model/--target-model, tasks --source-tasks/--target-tasks and
    --train-tasks; an old name still parses the same, says once per use which option replaces
    it, and is gone from the help."""
    parser = build_parser()
    assert parser.parse_args([*command, *old]) == parser.parse_args([*command, *new])
    err = capsys.readouterr().err
    renamed = [(o, n) for o, n in zip(old, new) if o.startswith("--")]
    for o, n in renamed:
        assert err.count(f"{o} is deprecated") == 1 and f"use {n}" in err
    code, out, _ = run(capsys, *command[:2], "--help")
    assert code == 0 and all(f"{n} " in out and f"{o} " not in out for o, n in renamed)


def test_tasks_and_models_list_what_is_available(capsys):
    code, out, _ = run(capsys, "tasks", "--json")
    names = json.loads(out.strip().splitlines()[-1])["tasks"]
    assert code == 0 and {"sst2", "mnli", "squad", "samsum", "ethics_justice"} <= set(names)
    assert len(names) == 17
    code, out, _ = run(capsys, "models", "--json")
    assert json.loads(out.strip().splitlines()[-1])["presets"] == \
        ["tiny-roberta", "tiny-t5", "tiny-t5-v1_1", "tiny-t5-d96"]


def test_train_eval_export_through_the_cli(capsys, tmp_path, sentiment_dir):
    store = str(tmp_path / "store")
    code, out, _ = run(capsys, "train", "--model", "tiny-roberta", "--task", "sst2", "--steps",
                       "20", "--prompt-length", "4", "--lr", "0.1", "--batch-size", "16",
                       "--eval-every", "10", "--data-dir", str(sentiment_dir), "--store", store,
                       "--json")
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert "prompt id: " + result["prompt_id"] in out
    code, out, _ = run(capsys, "eval", "--model", "tiny-roberta", "--prompt", result["prompt_id"],
                       "--task", "sst2", "--eval-limit", "0", "--data-dir", str(sentiment_dir),
                       "--store", store, "--json")
    evaluated = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and evaluated["metrics"]["accuracy"] == pytest.approx(result["score"])
    code, out, _ = run(capsys, "export-peft", result["prompt_id"], str(tmp_path / "peft"),
                       "--store", store, "--json")
    assert code == 0 and (tmp_path / "peft" / "adapter_model.safetensors").exists()
    code, out, _ = run(capsys, "prompts", "--store", store, "--json")
    assert [p["id"] for p in json.loads(out.strip().splitlines()[-1])["prompts"]] == \
        [result["prompt_id"]]


def _assert_one_clear_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("ptdist: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


TRAIN = ["train", "--steps", "2", "--prompt-length", "4", "--batch-size", "4"]


def test_unknown_task(capsys, tmp_path):
    code, _, err = run(capsys, *TRAIN, "--model", "tiny-roberta", "--task", "sst3",
                       "--store", str(tmp_path))
    _assert_one_clear_error(code, err, "sst3", "sst2")


def test_unknown_model(capsys, tmp_path, sentiment_dir):
    code, _, err = run(capsys, *TRAIN, "--model", "tiny-robertaa", "--task", "sst2",
                       "--data-dir", str(sentiment_dir), "--store", str(tmp_path))
    _assert_one_clear_error(code, err, "tiny-robertaa", "--model DIR", "tiny-roberta")


def test_prompt_of_the_wrong_width(capsys, tmp_path, sentiment_dir):
    wide = torch.zeros(4, 32)
    Store(tmp_path).prompts.put(wide, manifest("wide", wide, model="x"))
    code, _, err = run(capsys, *TRAIN, "--model", "tiny-roberta", "--task", "sst2",
                       "--init", "prompt:wide", "--data-dir", str(sentiment_dir),
                       "--store", str(tmp_path))
    _assert_one_clear_error(code, err, "width 32", "hidden size 64")
    code, _, err = run(capsys, "eval", "--model", "tiny-roberta", "--prompt", "wide", "--task",
                       "sst2", "--data-dir", str(sentiment_dir), "--store", str(tmp_path))
    _assert_one_clear_error(code, err, "width 32", "hidden size 64")


def test_data_file_without_the_declared_columns(capsys, tmp_path):
    write_jsonl(tmp_path / "data" / "sst2" / "train.jsonl", [{"text": "good", "label": 1}])
    write_jsonl(tmp_path / "data" / "sst2" / "eval.jsonl", [{"text": "bad", "label": 0}])
    code, _, err = run(capsys, *TRAIN, "--model", "tiny-roberta", "--task", "sst2",
                       "--data-dir", str(tmp_path / "data"), "--store", str(tmp_path / "s"))
    _assert_one_clear_error(code, err, "sentence", "train.jsonl")


def test_unreadable_deepspeed_config(capsys, tmp_path, sentiment_dir):
    bad = tmp_path / "ds.json"
    bad.write_text("{ not json")
    code, _, err = run(capsys, *TRAIN, "--model", "tiny-roberta", "--task", "sst2",
                       "--ds-config", str(bad), "--data-dir", str(sentiment_dir),
                       "--store", str(tmp_path))
    _assert_one_clear_error(code, err, str(bad), "JSON")
    code, _, err = run(capsys, *TRAIN, "--model", "tiny-roberta", "--task", "sst2",
                       "--ds-config", "zero9", "--store", str(tmp_path))
    _assert_one_clear_error(code, err, "zero9", "zero2")


def test_errors_also_come_as_json(capsys, tmp_path):
    code, out, _ = run(capsys, *TRAIN, "--model", "tiny-roberta", "--task", "sst3",
                       "--store", str(tmp_path), "--json")
    assert code == 2 and "sst3" in json.loads(out.strip().splitlines()[-1])["error"]


@pytest.mark.parametrize("lr", ["inf", "nan", "-inf"])
def test_a_learning_rate_that_is_not_finite_is_refused_up_front(capsys, tmp_path, lr):
    code, _, err = run(capsys, *TRAIN, "--model", "tiny-roberta", "--task", "sst2", f"--lr={lr}",
                       "--store", str(tmp_path / "store"))
    _assert_one_clear_error(code, err, "lr must be a finite number")
    assert not (tmp_path / "store").exists()


def test_an_init_prompt_that_is_not_finite_is_refused_up_front(capsys, tmp_path, sentiment_dir):
    from ptdist.store.prompts import write_prompt_file

    nan = write_prompt_file(tmp_path / "nan.safetensors", torch.full((4, 64), float("nan")), {})
    code, _, err = run(capsys, *TRAIN, "--model", "tiny-roberta", "--task", "sst2", "--init",
                       f"prompt:{nan}", "--data-dir", str(sentiment_dir),
                       "--store", str(tmp_path / "store"))
    _assert_one_clear_error(code, err, str(nan), "256 non-finite value(s)")
    assert not (tmp_path / "store").exists()


def test_a_diverging_run_is_one_clear_error_through_the_cli(capsys, tmp_path, sentiment_dir):
    code, _, err = run(capsys, *TRAIN, "--model", "tiny-roberta", "--task", "sst2", "--lr",
                       "1e30", "--steps", "4", "--data-dir", str(sentiment_dir),
                       "--store", str(tmp_path / "store"))
    _assert_one_clear_error(code, err, "diverged at step", "Lower the learning rate")
    assert not (tmp_path / "store" / "prompts").exists()


def _store_with_a_damaged_prompt(root) -> Store:
    store = Store(root)
    for i in range(2):
        prompt = torch.randn(4, 64)
        store.prompts.put(prompt, manifest(f"p{i}", prompt, created=float(i)))
    (store.prompts.folder("p1") / "manifest.json").write_text('{"id": "p1", "model": ')
    return store


def test_a_damaged_manifest_is_named_by_listings_and_stops_commands_about_it(capsys, tmp_path):
    store = _store_with_a_damaged_prompt(tmp_path / "store")
    code, out, err = run(capsys, "prompts", "--store", str(store.root), "--json")
    assert code == 0 and [p["id"] for p in json.loads(out.splitlines()[-1])["prompts"]] == ["p0"]
    assert err.count("warning: prompt p1 is left out") == 1 and "Traceback" not in err
    code, _, err = run(capsys, "export-peft", "p1", str(tmp_path / "peft"), "--store",
                       str(store.root))
    _assert_one_clear_error(code, err, "prompt p1", "is damaged: not valid JSON",
                            "Remove its folder")
    assert not (tmp_path / "peft").exists()
    code, out, err = run(capsys, "prompts", "--check", "--store", str(store.root))
    _assert_one_clear_error(code, err, "1 of 2 record(s)", "damaged: p1")
    assert "p0                ok" in out and "p1                DAMAGED: manifest: not valid " \
        "JSON" in out
    (store.prompts.folder("p1") / "manifest.json").unlink()
    code, out, _ = run(capsys, "prompts", "--check", "--store", str(store.root))
    assert code == 0 and "incomplete: no manifest" in out and "0 damaged" in out


def test_training_a_run_whose_stored_record_is_damaged_stops_with_one_line(capsys, tmp_path,
                                                                          sentiment_dir):
    args = [*TRAIN, "--model", "tiny-roberta", "--task", "sst2", "--eval-every", "2",
            "--eval-limit", "8", "--data-dir", str(sentiment_dir), "--store",
            str(tmp_path / "store"), "--json"]
    code, out, _ = run(capsys, *args)
    prompt_id = json.loads(out.splitlines()[-1])["prompt_id"]
    folder = Store(tmp_path / "store").prompts.folder(prompt_id)
    (folder / "manifest.json").write_text("{}")
    code, _, err = run(capsys, *args)
    _assert_one_clear_error(code, err, f"prompt {prompt_id}", "missing required key")


def _written(root) -> list[str]:
    """Every file under ``root`` (the test's folder), to see that a refused command wrote
    nothing."""
    from pathlib import Path

    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())


@pytest.mark.parametrize("config,needles", [
    ("[1, 2]", ["is an array, not a JSON object"]),
    ('{"bf16": 1}', ["'bf16' must be a mapping (got 1)"]),
    ('{"bf16": {"enabled": "yes"}}', ["'bf16.enabled' must be true or false"]),
    ('{"zero_optimization": {"stage": 4}}', ["'zero_optimization.stage' must be 0, 1, 2 or 3"]),
], ids=["a list", "bf16 as 1", "enabled as a string", "stage 4"])
def test_a_deepspeed_config_of_the_wrong_shape(capsys, tmp_path, sentiment_dir, config,
                                               needles):
    (tmp_path / "ds.json").write_text(config)
    before = _written(tmp_path)
    code, _, err = run(capsys, *TRAIN, "--model", "tiny-roberta", "--task", "sst2",
                       "--ds-config", str(tmp_path / "ds.json"), "--data-dir",
                       str(sentiment_dir), "--store", str(tmp_path / "store"))
    _assert_one_clear_error(code, err, f"DeepSpeed config {tmp_path / 'ds.json'}", *needles)
    assert _written(tmp_path) == before


@pytest.mark.parametrize("setting,needle", [
    ({"models": {"tiny-roberta": {"resources": {"cpus": "two"}}}},
     "'models.tiny-roberta.resources.cpus' must be a number (got 'two')"),
    ({"train": {"lr": "0.1"}}, "'train.lr' must be a number (got '0.1')"),
    ({"train": {"lr": float("inf")}}, "lr must be a finite number (got inf)"),
    ({"name": "../../../../tmp/x"}, "'name' must be one plain name"),
], ids=["cpus two", "lr as a string", "lr inf", "name outside the store"])
def test_a_sweep_spec_with_a_bad_value(capsys, tmp_path, setting, needle):
    import yaml

    spec = {"storage_path": str(tmp_path / "store"), "tasks": ["sst2"],
            "train": {"steps": 2, "batch_size": 4, "prompt_length": 4},
            "models": {"tiny-roberta": {}}}
    for key, value in setting.items():
        spec[key] = {**spec[key], **value} if isinstance(spec.get(key), dict) else value
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    code, _, err = run(capsys, "sweep", "--spec", str(tmp_path / "spec.yaml"), "--local")
    _assert_one_clear_error(code, err, needle)
    assert _written(tmp_path) == ["spec.yaml"]


def test_a_prompt_longer_than_the_model_positions(capsys, tmp_path, sentiment_dir):
    """tiny-roberta has 512 positions (514 less RoBERTa's padding offset); 400 + 128 is more."""
    code, _, err = run(capsys, *TRAIN[:5], "--prompt-length", "400", "--batch-size", "4",
                       "--model", "tiny-roberta", "--task", "sst2", "--data-dir",
                       str(sentiment_dir), "--store", str(tmp_path / "store"))
    _assert_one_clear_error(code, err, "prompt length 400 plus max_length 128",
                            "has 512", "--prompt-length 384 or less")
    assert _written(tmp_path) == []


def test_a_data_file_that_is_not_utf8(capsys, tmp_path):
    data = tmp_path / "data" / "sst2"
    data.mkdir(parents=True)
    for split, label in (("train", 1), ("eval", 0)):
        (data / f"{split}.jsonl").write_bytes(
            f'{{"sentence": "caf\xe9 good", "label": {label}}}\n'.encode("latin-1"))
    before = _written(tmp_path)
    code, _, err = run(capsys, *TRAIN, "--model", "tiny-roberta", "--task", "sst2",
                       "--data-dir", str(tmp_path / "data"), "--store", str(tmp_path / "store"))
    _assert_one_clear_error(code, err, "train.jsonl is not UTF-8 text", "iconv")
    assert _written(tmp_path) == before


def test_a_json_array_data_file_trains(capsys, tmp_path):
    """Users bring .json arrays, which `datasets` reads; ptdist refused the suffix."""
    from tests.conftest import sentiment_rows

    for split, seed, n in (("train", 1, 32), ("eval", 2, 16)):
        (tmp_path / "data" / "sst2").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "sst2" / f"{split}.json").write_text(
            json.dumps(sentiment_rows(n, seed), indent=1))
    code, out, err = run(capsys, *TRAIN, "--model", "tiny-roberta", "--task", "sst2",
                         "--data-dir", str(tmp_path / "data"), "--store",
                         str(tmp_path / "store"), "--json")
    assert code == 0, err
    sst2 = get_task("sst2")
    assert [len(load_split(sst2, split, data_dir=str(tmp_path / "data")))
            for split in ("train", "eval")] == [32, 16]
    assert Store(tmp_path / "store").prompts.has(json.loads(out.splitlines()[-1])["prompt_id"])


def test_a_store_that_is_a_file_is_refused_before_any_work(capsys, tmp_path, sentiment_dir):
    (tmp_path / "store").write_text("not a folder")
    code, _, err = run(capsys, *TRAIN, "--model", "tiny-roberta", "--task", "sst2",
                       "--data-dir", str(sentiment_dir), "--store", str(tmp_path / "store"))
    _assert_one_clear_error(code, err, f"{tmp_path / 'store'} is a file, not a folder")
    assert "[ptdist] loaded" not in err  # refused before the model loads
    assert _written(tmp_path) == ["store"] and (tmp_path / "store").read_text() == "not a folder"
    code, _, err = run(capsys, "prompts", "--store", str(tmp_path / "store" / "below"))
    _assert_one_clear_error(code, err, "is a file, not a folder")


def test_export_peft_onto_an_existing_file(capsys, tmp_path):
    store = Store(tmp_path / "store")
    prompt = torch.randn(4, 64)
    store.prompts.put(prompt, manifest("p0", prompt))
    (tmp_path / "adapter").write_text("mine")
    before = _written(tmp_path)
    code, _, err = run(capsys, "export-peft", "p0", str(tmp_path / "adapter"), "--store",
                       str(store.root))
    _assert_one_clear_error(code, err, f"{tmp_path / 'adapter'} is a file")
    assert _written(tmp_path) == before and (tmp_path / "adapter").read_text() == "mine"


def test_a_sweep_whose_stored_prompt_is_damaged_fails_that_row_only(capsys, tmp_path,
                                                                     sentiment_dir):
    import yaml

    from ptdist.store.results import SweepRow
    from ptdist.store.tables import read_records

    spec = {"name": "s", "storage_path": str(tmp_path / "store"),
            "data_dir": str(sentiment_dir), "tasks": ["sst2"], "seeds": [0, 1],
            "train": {"steps": 2, "eval_every": 2, "batch_size": 4, "prompt_length": 4,
                      "eval_limit": 8},
            "models": {"tiny-roberta": {}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    code, _, _ = run(capsys, "sweep", "--spec", str(tmp_path / "spec.yaml"), "--local")
    store = Store(tmp_path / "store")
    first, second = read_records(store.layout.sweep_table("s"), SweepRow)
    (store.prompts.folder(second.prompt_id) / "manifest.json").write_text("{")
    code, out, err = run(capsys, "sweep", "--spec", str(tmp_path / "spec.yaml"), "--local")
    _assert_one_clear_error(code, err, "1 run(s) failed", "is damaged: not valid JSON")
    rows = read_records(store.layout.sweep_table("s"), SweepRow)
    assert [r.status for r in rows] == ["stored", "failed"] and rows[0].score == first.score
