"""The command line as a user meets it: help, JSON output, and one clear line per mistake."""

from __future__ import annotations

import json

import pytest
import torch

from ptdist.cli import build_parser, main
from ptdist.store import Store
from tests.conftest import write_jsonl
from tests.test_store import manifest


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


def test_there_are_nineteen_commands():
    assert len(_commands()) == 19


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_every_command_has_help(capsys, command):
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0 and "usage: ptdist " + " ".join(command) in out
    assert "--json" in out and "--verbose" in out


def test_model_and_task_help_name_what_the_listings_show(capsys):
    """Every --model, --source, --target and --task help names the presets of `ptdist models`
    and the tasks of `ptdist tasks`."""
    code, out, _ = run(capsys, "models", "--json")
    presets = json.loads(out.strip().splitlines()[-1])["presets"]
    code, out, _ = run(capsys, "tasks", "--json")
    tasks = json.loads(out.strip().splitlines()[-1])["tasks"]
    for command in _commands():
        code, out, _ = run(capsys, *command, "--help")
        text = " ".join(out.split())
        for option in ("--model", "--source", "--target"):
            if f"{option} " in out:
                assert all(p in text for p in presets), (command, option)
        if "--task " in out or "--tasks " in out or "--targets " in out:
            assert all(t in text for t in tasks), command


def test_one_vocabulary_for_the_shared_options(capsys):
    """--store, --eval-limit, --local and --address mean the same on every command that
    takes them; commands that run several jobs all take --local and --address."""
    several_jobs = {("sweep",), ("replicate",), ("transfer", "matrix"), ("transfer", "tpt"),
                    ("neurons", "capture"), ("project", "tpt"), ("project", "pairs")}
    for command in _commands():
        code, out, _ = run(capsys, *command, "--help")
        assert ("--local" in out) == (command in several_jobs), command
        assert ("--address" in out) == (command in several_jobs), command
        assert "--limit " not in out and "--storage-path" not in out, command


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
