"""`ptdist replicate` on tiny presets: the whole study as one Ray graph, killed midway and
finished by a re-run that redoes none of the finished stages; the report it writes."""

from __future__ import annotations

import json
import math
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
        stderr=subprocess.PIPE, **kwargs)


@pytest.mark.slow
def test_a_killed_study_finishes_on_rerun_without_redoing_stages(task_prompts, tmp_path):
    _, data, _ = task_prompts
    study = tmp_path / "study.yaml"
    study.write_text(_study(tmp_path, data))

    # Kill the driver and its local Ray as soon as the first analysis stage has finished.
    first = _replicate(study, start_new_session=True)
    finished = []
    for line in first.stderr:  # the driver's progress
        if line.startswith("done "):
            finished.append(line.split(" in ")[0][len("done "):])
            if finished[-1].startswith(("matrix", "capture")):
                break
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    assert any(job.startswith(("matrix", "capture")) for job in finished)
    assert not (tmp_path / "store" / "reports").exists()

    second = _replicate(study)
    out, err = second.communicate(timeout=900)
    assert second.returncode == 0, err[-3000:]
    jobs = {j["id"]: j["status"] for j in json.loads(out.strip().splitlines()[-1])["jobs"]}
    assert all(jobs[job] == "stored" for job in finished), (finished, jobs)
    assert set(jobs.values()) <= {"stored", "ran"} and jobs["report"] == "ran"
    for job in finished:
        assert f"start {job}\n" not in err
    report = (tmp_path / "store" / "reports" / "tiny-study" / "report.md").read_text()
    for heading in ("## Prompt tuning", "## Zero-shot transfer: tiny-roberta",
                    "## Transferability indicators: tiny-t5-d96", "## Cross-model transfer"):
        assert heading in report
    findings = report.split("## Findings")[1].split("## Prompt tuning")[0]
    # sst2 and topic are of different types: the comparison is declared impossible.
    assert ("tiny-roberta: no counted same-type task pair, so same-type and cross-type "
            "transfer cannot be compared.") in findings
    assert "| clearly above both |" in report
    assert (tmp_path / "store" / "reports" / "tiny-study" / "estimates.parquet").exists()

    third = _replicate(study)
    out, err = third.communicate(timeout=600)
    assert third.returncode == 0 and "nothing to run" in err


def test_study_settings_are_checked_when_read(task_prompts, tmp_path):
    _, data, _ = task_prompts
    study = tmp_path / "study.yaml"
    study.write_text(_study(tmp_path, data).replace("transfer: {eval_limit",
                                                                    "transfer: {eval_limt"))
    with pytest.raises(PtdistError, match=r"study .*unknown key 'eval_limt' in "
                                          r"stages.transfer \(did you mean 'eval_limit'\?\)"):
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
    listing = lines[:next(i for i, line in enumerate(lines) if line.startswith("memory plan"))]
    jobs = [line for line in listing if line.startswith("  ")]
    # RoBERTa runs the 13 classification tasks, the T5s all 17, three seeds each; packed by
    # default ("  pack <first run> +N": N + 1 runs of one model in one job).
    prompt_jobs = [job for job in jobs if job.startswith(("  prompt ", "  pack "))]
    assert sum(1 + int(job.split()[2][1:]) if job.startswith("  pack ") else 1
               for job in prompt_jobs) == (2 * 13 + 2 * 17) * 3
    assert sum(job.startswith("  projector ") for job in jobs) == 12  # ordered pairs of 4
    for stage in ("matrix", "capture", "indicators", "correlate", "tpt"):
        assert sum(job.startswith(f"  {stage} ") for job in jobs) == 4, stage
    estimate = lines[:next(i for i, line in enumerate(lines) if line.startswith("schedule"))]
    table = {line.split()[0]: line.split() for line in estimate
             if line.split() and line.split()[0] in ("prompt", "tpt_model", "total")}
    assert table["prompt"][1] == str(len(prompt_jobs))
    assert float(table["prompt"][3].replace(",", "")) > 1000
    assert table["total"][1] == str(len(jobs))
    # T5-XXL fills a GPU: one run per job, each holding one GPU.
    xxl = [job for job in prompt_jobs if job.split()[1].startswith("google/t5-v1_1-xxl/")]
    assert len(xxl) == 17 * 3 and all(job.startswith("  prompt ") for job in xxl)
    assert all(job.endswith("8 CPU, 1 GPU") for job in xxl)


def test_gpu_hours_of_a_known_run_are_its_counted_flops_at_the_cards_rate(tmp_path):
    """One RoBERTa-base run with the default budget on an A100 80 GB (the node type of the
    study's cluster): 1000 steps x 32 examples of (100 prompt + 128 text) tokens, each a
    forward and a backward to the prompt, plus 11 evaluations (every 100 steps, and at step
    0) of 1000 examples, at 30 % of the A100's dense bf16 peak (312 TFLOP/s). On 8 GPUs under ZeRO-3
    each GPU computes an eighth and receives 7/8 of the 16-bit weights at each of the two
    gathers of a step and once per evaluation forward (of 8 examples a GPU), over NVLink
    (300 GB/s a direction); the run holds all eight."""
    from ptdist.orchestration.estimate import job_costs, stage_costs
    from ptdist.orchestration.graph import Execution
    from ptdist.orchestration.replicate import study_jobs, study_packing
    from ptdist.reporting.report import write_report
    from ptdist.training.cost import example_flops
    from ptdist.training.memory import model_memory

    train = example_flops("roberta-base", "bf16", 100, 128, 4)
    evaluate = example_flops("roberta-base", "bf16", 100, 128, 4, "classify").forward.total
    rate = 312e12 * 0.3
    weights = model_memory("roberta-base", "bf16").parameters * 2
    one = (1000 * 32 * train.train() + 11 * 1000 * evaluate) / rate / 3600
    moved = 1000 * (2 * 7 / 8 * weights + 7 / 8 * 100 * 768 * 4) + \
        11 * math.ceil(1000 / (8 * 4 * 2)) * 7 / 8 * weights
    eight = 8 * ((1000 * 4 * train.train() + 11 * 125 * evaluate) / rate + moved / 300e9) / 3600
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("head_node_type: a100\navailable_node_types: {a100: {max_workers: 1, "
                       "resources: {CPU: 96, GPU: 8, 'accelerator_type:A100': 1, "
                       "'gpu_memory_gb:80': 1}}}\n")
    study = tmp_path / "one.yaml"
    for resources, ds, hours in (("{gpus: 1}", "zero0_bf16", one),
                                 ("{gpus: 8}", "zero3_bf16", eight)):
        study.write_text(f"name: one\nstorage_path: {tmp_path / 'store'}\ntasks: [sst2]\n"
                         f"cluster: {cluster}\nmodels: {{roberta-base: {{ds_config: {ds}, "
                         f"resources: {resources}}}}}\n")
        loaded = load_study(study)
        packing = study_packing(loaded, Execution())
        costs = job_costs(loaded, study_jobs(loaded, write_report, packing), packing.cluster)
        prompt = {c.stage: c for c in stage_costs(costs)}["prompt"]
        assert prompt.jobs == 1 and prompt.to_run == 1
        assert prompt.gpu_hours == pytest.approx(hours, rel=1e-9)


def test_a_local_study_packs_all_runs_of_a_model_into_one_job(tmp_path):
    """--local runs jobs one at a time, so packing fills one job, not one per core; on Ray
    a study packs into as many jobs as run at once."""
    from ptdist.orchestration.plans import Packing
    from ptdist.orchestration.replicate import study_jobs
    from ptdist.orchestration.resources import Cluster
    from ptdist.reporting.report import write_report

    study = tmp_path / "four.yaml"
    study.write_text(f"name: four\nstorage_path: {tmp_path / 'store'}\nmax_concurrent: 2\n"
                     "tasks: [sst2, imdb]\nseeds: [0, 1]\nmodels: {tiny-roberta: {}}\n")
    loaded = load_study(study)
    node = Cluster({"cpu": {"CPU": 64.0}}, {"cpu": 1}, "a 64-CPU test node")
    for local, jobs in ((True, 1), (False, 2)):
        packing = Packing(node, loaded.spec.max_concurrent, serial=local)
        prompts = [j for j in study_jobs(loaded, write_report, packing)
                   if j.id.startswith(("prompt ", "pack "))]
        assert len(prompts) == jobs  # of the 4 runs
