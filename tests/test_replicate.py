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
from tests.conftest import child_env

STUDY = """name: tiny-study
storage_path: {root}/store
data_dir: {data}
tasks: [sst2, {data}/topic.yaml]
train: {{steps: 40, eval_every: 20, prompt_length: 8, batch_size: 16, lr: 0.1, eval_limit: 48}}
models:
  tiny-roberta: {{}}
  tiny-t5-d96: {{}}
stages:
  transfer: {{eval_limit: 48}}
  projection: {{mode: distance, train_tasks: [sst2], hidden: 16, steps: 50, eval_limit: 48}}
"""


def _replicate(study: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ptdist", "replicate", "--study", str(study), "--json"],
        cwd=study.parent, env=child_env(), text=True, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, **kwargs)


@pytest.mark.slow
def test_a_killed_study_finishes_on_rerun_without_redoing_stages(task_prompts, tmp_path):
    _, data, _ = task_prompts
    study = tmp_path / "study.yaml"
    study.write_text(STUDY.format(root=tmp_path, data=data))

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
    assert "Same-type transfer" in report or "cannot be compared" in report

    third = _replicate(study)
    out, _ = third.communicate(timeout=600)
    assert third.returncode == 0 and "nothing to run" in out


def test_study_settings_are_checked_when_read(task_prompts, tmp_path):
    _, data, _ = task_prompts
    study = tmp_path / "study.yaml"
    study.write_text(STUDY.format(root=tmp_path, data=data).replace("transfer: {eval_limit",
                                                                    "transfer: {eval_limt"))
    with pytest.raises(PtdistError, match=r"study .*unknown key 'eval_limt' in "
                                          r"stages.transfer \(did you mean 'eval_limit'\?\)"):
        load_study(study)
    study.write_text(STUDY.format(root=tmp_path, data=data).replace(
        "mode: distance, train_tasks: [sst2]", "mode: task, train_tasks: [sst2, imdb]"))
    with pytest.raises(PtdistError, match="task tuning trains on one task"):
        load_study(study)
    study.write_text(STUDY.format(root=tmp_path, data=data).replace("mode: distance",
                                                                    "mode: task"))
    loaded = load_study(study)
    assert loaded.projection.mode == "task" and loaded.projection.train_tasks == ("sst2",)
    assert loaded.transfer == {"eval_limit": 48} and loaded.neurons == {}
