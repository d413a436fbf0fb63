"""Where output goes: a command's result alone on stdout, whatever the level; everything else on
stderr through the ``ptdist`` logger, at the level of --verbose / --quiet; progress a bar on a
terminal and a few counted lines elsewhere; in a process group, progress from rank 0 only."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ptdist import logs, progress
from ptdist.progress import Progress
from tests.conftest import child_env
from tests.test_cli import run

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("ptdist.tests")


@pytest.fixture(autouse=True)
def default_logger():
    """Each test starts, and leaves the next one, with the logger `import ptdist` sets."""
    logs.configure()
    yield
    logs.configure()


def test_the_level_changes_stderr_and_never_stdout(capsys, tmp_path, sentiment_dir):
    store = str(tmp_path / "store")
    code, out, err = run(capsys, "train", "--model", "tiny-roberta", "--task", "sst2",
                         "--steps", "4", "--prompt-length", "4", "--batch-size", "8",
                         "--eval-limit", "16", "--data-dir", str(sentiment_dir), "--store",
                         store, "--json", "--quiet")
    assert code == 0 and err == ""
    prompt_id = json.loads(out.splitlines()[-1])["prompt_id"]
    evaluate = ("eval", "--model", "tiny-roberta", "--prompt", prompt_id, "--task", "sst2",
                "--eval-limit", "16", "--data-dir", str(sentiment_dir), "--store", store,
                "--json")
    seen = {level: run(capsys, *evaluate, *flag)
            for level, flag in (("quiet", ["--quiet"]), ("default", []),
                                ("verbose", ["--verbose"]))}
    assert {code for code, _, _ in seen.values()} == {0}
    # The same result on stdout at every level; its last line is the JSON object.
    assert seen["quiet"][1] == seen["default"][1] == seen["verbose"][1]
    assert json.loads(seen["quiet"][1].splitlines()[-1])["metrics"]
    # What the model load and the scoring say goes to stderr, and not with --quiet.
    assert seen["quiet"][2] == "" and seen["default"][2] != ""


def test_quiet_and_verbose_are_exclusive(capsys):
    code, _, err = run(capsys, "tasks", "--quiet", "--verbose")
    assert code == 2 and "not allowed with" in err


def test_off_a_terminal_progress_is_a_few_counted_lines(capsys, monkeypatch):
    with Progress("loop", 1000, "step", log) as steps:
        for done in range(1, 1001):
            steps.update(done, loss="0.5")
    lines = capsys.readouterr().err.splitlines()
    assert progress.LINES <= len(lines) <= progress.LINES + 1  # every tenth, and the end
    assert len(set(lines)) == len(lines)
    # A slow loop says where it is every SECONDS, however few items it has done.
    monkeypatch.setattr(progress, "SECONDS", 0.0)
    with Progress("slow loop", 1000, "step", log) as steps:
        for done in range(1, 6):
            steps.update(done)
    assert len(capsys.readouterr().err.splitlines()) == 5


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_progress_is_one_bar_and_log_lines_pass_above_it(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with Progress("loop", 1000, "step", log) as steps:
        for done in range(1, 1001):
            steps.update(done, loss="0.5")
            if done == 500:
                log.info("an evaluation")
    text = terminal.getvalue()
    assert "\r" in text  # the bar redraws its line
    lines = [line for line in text.split("\n") if line.strip()]
    # One line for the evaluation; the bar's redraws share the others.
    assert sum("an evaluation" in line for line in lines) == 1
    assert len(lines) <= 3
    assert not logs.BARS


def test_quiet_logs_no_progress_and_no_bar(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    logs.configure(logs.LEVELS["quiet"])
    with Progress("loop", 100, "step", log) as steps:
        for done in range(1, 101):
            steps.update(done)
        log.warning("a warning")
    assert "\r" not in terminal.getvalue()  # no bar
    assert terminal.getvalue().count("\n") == 1 and "a warning" in terminal.getvalue()


LOG_AS_RANK = """
import logging, ptdist
from ptdist.progress import Progress
log = logging.getLogger("ptdist.check")
with Progress("loop", 20, "step", log) as steps:
    for done in range(1, 21):
        steps.update(done)
log.info("an evaluation")
log.warning("a warning")
"""


def test_in_a_process_group_only_rank_0_logs_progress_and_every_rank_its_warnings():
    """Two processes as a launcher (torchrun, deepspeed, Ray Train) starts them: RANK and
    WORLD_SIZE set, their stderr in one log."""
    err = {}
    for rank in (0, 1):
        done = subprocess.run([sys.executable, "-c", LOG_AS_RANK], cwd=REPO, text=True,
                              capture_output=True, timeout=120,
                              env={**child_env(), "RANK": str(rank), "WORLD_SIZE": "2"})
        assert done.returncode == 0, done.stderr
        err[rank] = done.stderr.splitlines()
    assert len(err[0]) > 2 and len(err[1]) == 1  # rank 1: its warning alone
    assert err[1][0] not in err[0]  # which rank warned is on the line
    joint = err[0] + err[1]
    assert len(set(joint)) == len(joint)


@pytest.mark.slow
def test_a_quiet_sweep_on_ray_prints_its_result_alone(tmp_path, sentiment_dir):
    """On a local Ray the driver's stdout also gets what Ray forwards from its workers and
    Tune's own report: none of it may come between the command's result lines."""
    spec = tmp_path / "quiet.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "quiet", "storage_path": str(tmp_path / "store"),
        "data_dir": str(sentiment_dir), "tasks": ["sst2"], "seeds": [0],
        "train": {"prompt_length": 4, "batch_size": 8, "steps": 6, "eval_every": 3,
                  "eval_limit": 16},
        "models": {"tiny-roberta": {"resources": {"cpus": 1}}}}))
    done = subprocess.run([sys.executable, "-m", "ptdist", "sweep", "--spec", str(spec), "--json",
                           "--quiet"], cwd=tmp_path, text=True, capture_output=True,
                          timeout=600, env=child_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""  # Ray's own lines included: its workers log at the driver's level
    *summary, last = done.stdout.splitlines()
    result = json.loads(last)
    names = [run["prompt_id"] for run in result["runs"]] + [result["table"]]
    assert result["trained"] == 1 and summary
    assert all(any(name in line for name in names) for line in summary), summary
