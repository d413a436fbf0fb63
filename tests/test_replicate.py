"""`ptdist replicate` on tiny presets: the whole study as one Ray graph, killed midway and
finished by a re-run that redoes none of the finished stages; the report it writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ptdist.errors import PtdistError
from ptdist.orchestration.study import load_study
from tests.conftest import TWO_MODEL_SPEC, child_env

STUDY = TWO_MODEL_SPEC.replace("{store}", "{root}/store") + """stages:
  transfer: {{eval_limit: 48}}
  projection: {{mode: distance, train_tasks: [sst2], hidden: 16, steps: 50, eval_limit: 48}}
"""


def _study(root: Path, data: Path) -> str:
    return STUDY.format(name="tiny-study", root=root, data=data)


def _replicate(study: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ptdist", "replicate", "--study", str(study), "--json"],
        cwd=study.parent, env=child_env(), text=True, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, **kwargs)


@pytest.mark.slow
def test_a_killed_study_finishes_on_rerun_without_redoing_stages(task_prompts, tmp_path):
    _, data, _ = task_prompts
    study = tmp_path / "study.yaml"
    study.write_text(_study(tmp_path, data))

    # Kill the driver and its local Ray as soon as the first analysis stage has finished.
    first = _replicate(study, start_new_session=True)
    finished = []
    for line in first.stdout:
        if line.startswith("done "):
            finished.append(line.split(" in ")[0][len("done "):])
            if finished[-1].startswith(("matrix", "capture")):
                break
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    assert any(job.startswith(("matrix", "capture")) for job in finished)
    assert not (tmp_path / "store" / "reports").exists()

    second = _replicate(study)
    out, _ = second.communicate(timeout=900)
    assert second.returncode == 0, out[-3000:]
    jobs = {j["id"]: j["status"] for j in json.loads(out.strip().splitlines()[-1])["jobs"]}
    assert all(jobs[job] == "stored" for job in finished), (finished, jobs)
    assert set(jobs.values()) <= {"stored", "ran"} and jobs["report"] == "ran"
    for job in finished:
        assert f"start {job}\n" not in out
    report = (tmp_path / "store" / "reports" / "tiny-study" / "report.md").read_text()
    for heading in ("## Prompt tuning", "## Zero-shot transfer: tiny-roberta",
                    "## Transferability indicators: tiny-t5-d96", "## Cross-model transfer"):
        assert heading in report
    findings = report.split("## Findings")[1].split("## Prompt tuning")[0]
    # sst2 and topic are of different types: the comparison is declared impossible.
    assert "tiny-roberta: the tasks are all of one type or all of different types" in findings
    assert "the indicator that correlates best with zero-shot transfer is" in findings
    assert "Projected prompts on their training tasks reach" in findings

    third = _replicate(study)
    out, _ = third.communicate(timeout=600)
    assert third.returncode == 0 and "nothing to run" in out


def test_study_settings_are_checked_when_read(task_prompts, tmp_path):
    _, data, _ = task_prompts
    study = tmp_path / "study.yaml"
    study.write_text(_study(tmp_path, data).replace("transfer: {eval_limit",
                                                                    "transfer: {eval_limt"))
    with pytest.raises(PtdistError, match=r"study .*unknown key 'eval_limt' in "
                                          r"stages.transfer \(did you mean 'eval_limit'\?\)"):
        load_study(study)
    study.write_text(_study(tmp_path, data).replace(
        "mode: distance, train_tasks: [sst2]", "mode: task, train_tasks: [sst2, imdb]"))
    with pytest.raises(PtdistError, match="task tuning trains on one task"):
        load_study(study)
    study.write_text(_study(tmp_path, data).replace("mode: distance",
                                                                    "mode: task"))
    loaded = load_study(study)
    assert loaded.projection.mode == "task" and loaded.projection.train_tasks == ("sst2",)
    assert loaded.transfer == {"eval_limit": 48} and loaded.neurons == {}
    assert loaded.tpt is None
    study.write_text(_study(tmp_path, data) + "  tpt: {targets: [imdb]}\n")
    with pytest.raises(PtdistError, match=r"stages.tpt: imdb not among the study's tasks"):
        load_study(study)
    study.write_text(_study(tmp_path, data) + "  neurons: {protocol: 3}\n")
    with pytest.raises(PtdistError, match=r"study .*'stages.neurons.protocol' must be 'prompt' "
                                          r"or 'data' \(got 3\)"):
        load_study(study)


def test_paper_preset_dry_run_prints_the_whole_plan(capsys):
    from tests.test_cli import run

    code, out, err = run(capsys, "replicate", "--preset", "paper", "--dry-run")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("study paper: 4 model(s), 17 task(s), 3 seed(s)")
    jobs = [line for line in lines if line.startswith("  ")]
    # RoBERTa runs the 13 classification tasks, the T5s all 17, three seeds each.
    assert sum(job.startswith("  prompt ") for job in jobs) == (2 * 13 + 2 * 17) * 3
    assert sum(job.startswith("  projector ") for job in jobs) == 12  # ordered pairs of 4
    for stage in ("matrix", "capture", "indicators", "correlate", "tpt"):
        assert sum(job.startswith(f"  {stage} ") for job in jobs) == 4, stage
    table = {line.split()[0]: line.split() for line in lines
             if line.split() and line.split()[0] in ("prompt", "tpt_model", "total")}
    assert table["prompt"][1] == "180" and float(table["prompt"][3].replace(",", "")) > 1000
    assert table["total"][1] == str(len(jobs))
    assert "GPU-hours" in out and "A100" in out


def test_gpu_hours_follow_the_flops_of_the_runs():
    from ptdist.orchestration.estimate import PEAK_FLOPS, UTILISATION, parameters, study_costs
    from ptdist.orchestration.replicate import study_jobs
    from ptdist.orchestration.study import load_study, preset_path

    assert parameters("roberta-large") == 355e6
    assert 100e3 < parameters("tiny-roberta") < 1e6  # from its config, on the meta device
    study = load_study(preset_path("paper"))
    [prompt] = [c for c in study_costs(study, study_jobs(study)) if c.stage == "prompt"]
    expected = 0.0
    for run in study.spec.runs():
        c = run.config
        n = parameters(c.model)
        tokens = c.prompt_length + c.max_length
        flops = 4 * n * c.steps * c.batch_size * tokens + \
            2 * n * (c.steps // c.eval_every) * c.eval_limit * tokens
        expected += flops / (PEAK_FLOPS["bf16"] * UTILISATION) / 3600
    assert prompt.gpu_hours == pytest.approx(expected)
