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
import torch

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
    listing = lines[:lines.index("training (per model):")]
    jobs = [line for line in listing if line.startswith("  ")]
    # RoBERTa runs the 13 classification tasks, the T5s all 17, three seeds each; packed by
    # default ("  pack <first run> +N": N + 1 runs of one model in one job).
    prompt_jobs = [job for job in jobs if job.startswith(("  prompt ", "  pack "))]
    assert sum(1 + int(job.split()[2][1:]) if job.startswith("  pack ") else 1
               for job in prompt_jobs) == (2 * 13 + 2 * 17) * 3
    assert sum(job.startswith("  projector ") for job in jobs) == 12  # ordered pairs of 4
    for stage in ("matrix", "capture", "indicators", "correlate", "tpt"):
        assert sum(job.startswith(f"  {stage} ") for job in jobs) == 4, stage
    table = {line.split()[0]: line.split() for line in lines
             if line.split() and line.split()[0] in ("prompt", "tpt_model", "total")}
    assert table["prompt"][1] == str(len(prompt_jobs))
    assert float(table["prompt"][3].replace(",", "")) > 1000
    assert table["total"][1] == str(len(jobs))
    assert "GPU-hours" in out and "A100" in out
    # Every model trains at the paper's constant rate, with no warm-up.
    training = lines[lines.index("training (per model):") + 1:][:4]
    assert [line.split(":")[0].strip() for line in training] == [
        "roberta-base", "roberta-large", "t5-base", "google/t5-v1_1-xxl"]
    assert all("0 warm-up step(s) then constant rate, adamw" in line for line in training)
    # Each job's real resources, and the memory plan of each model (offline: bundled configs).
    xxl = [job for job in prompt_jobs if job.split()[1].startswith("google/t5-v1_1-xxl/")]
    assert xxl and all(job.endswith("8 CPU, 1 GPU, accelerator_type:A100") for job in xxl)
    plan = out[out.index("memory plan"):]
    block = plan[plan.index("  google/t5-v1_1-xxl:"):].splitlines()[:3]
    assert "activation checkpointing" in block[0]
    assert "(weights 22.0 GB," in block[1] and "per GPU: fits one A100 (80 GB)" in block[1]
    assert block[2] == "    cheapest placement on that card: 1 GPU, ZeRO-0, activation " \
                       "checkpointing (" + " ".join(block[1].split()[:2]) + ")"


def test_gpu_hours_of_a_known_run_equal_a_hand_computed_number(tmp_path):
    """One RoBERTa-base run (124,697,433 parameters: its bundled config built on the meta
    device) with the default budget: 1000 steps x 32 examples x (100 prompt + 128 text) tokens
    at 4 x P FLOPs each, plus 11 evaluations (every 100 steps, and at step 0) of 1000 examples
    at 2 x P FLOPs per token, at 30 % of 312 TFLOP/s (an A100, bf16): 4.2647e15 FLOPs /
    9.36e13 FLOP/s = 0.0126563 GPU-hours. On 8 GPUs with ZeRO-3 the run holds all eight, at
    70 % efficiency: 0.0180804."""
    from ptdist.orchestration.estimate import study_costs
    from ptdist.orchestration.replicate import study_jobs
    from ptdist.reporting.report import write_report

    study = tmp_path / "one.yaml"
    for resources, hours in (("{}", 0.0126563), ("{gpus: 8}", 0.0180804)):
        study.write_text(f"name: one\nstorage_path: {tmp_path / 'store'}\ntasks: [sst2]\n"
                         f"models: {{roberta-base: {{ds_config: zero0_bf16, resources: "
                         f"{resources}}}}}\n")
        loaded = load_study(study)
        costs = {c.stage: c for c in study_costs(loaded, study_jobs(loaded, write_report))}
        assert costs["prompt"].jobs == 1 and costs["prompt"].to_run == 1
        assert costs["prompt"].gpu_hours == pytest.approx(hours, abs=1e-6)


def test_a_local_study_packs_all_runs_of_a_model_into_one_job(tmp_path):
    """--local runs jobs one at a time, so packing fills one job, not one per core; on Ray
    a study packs into as many jobs as run at once."""
    from ptdist.orchestration.estimate import study_costs
    from ptdist.orchestration.replicate import study_jobs
    from ptdist.reporting.report import write_report

    study = tmp_path / "four.yaml"
    study.write_text(f"name: four\nstorage_path: {tmp_path / 'store'}\nmax_concurrent: 2\n"
                     "tasks: [sst2, imdb]\nseeds: [0, 1]\nmodels: {tiny-roberta: {}}\n")
    loaded = load_study(study)
    for local, jobs in ((True, 1), (False, 2)):
        costs = {c.stage: c for c in study_costs(loaded, study_jobs(loaded, write_report, local))}
        assert costs["prompt"].jobs == jobs  # of the 4 runs


@pytest.mark.slow
def test_a_study_gives_the_same_prompts_and_scores_however_its_runs_are_packed(task_prompts,
                                                                             tmp_path):
    """The same study run twice on this machine: with its runs packed (--local packs the four
    runs of the model into one job) and with each run alone (--no-pack). Every prompt, every
    learning curve, the transfer matrix and the indicators are bit for bit the same."""
    from ptdist.store import Store
    from ptdist.store.results import IndicatorRow, MatrixRow
    from ptdist.store.tables import read_records

    _, data, _ = task_prompts
    study = tmp_path / "study.yaml"
    study.write_text(f"name: packing\nstorage_path: {tmp_path / 'unused'}\ndata_dir: {data}\n"
                     f"tasks: [sst2, {data}/topic.yaml]\nseeds: [0, 1]\n"
                     "train: {steps: 6, eval_every: 3, prompt_length: 8, batch_size: 8, "
                     "lr: 0.1, eval_limit: 32}\n"
                     "models: {tiny-roberta: {}}\nstages: {transfer: {eval_limit: 32}}\n")
    stores = {}
    for name, flags in (("packed", []), ("alone", ["--no-pack"])):
        proc = subprocess.run([sys.executable, "-m", "ptdist", "replicate", "--study",
                               str(study), "--local", "--store", str(tmp_path / name), *flags],
                              cwd=tmp_path, env=child_env(), text=True, capture_output=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        stores[name] = Store(tmp_path / name)
    packed, alone = stores["packed"], stores["alone"]
    manifests = {m.id: m for m in packed.prompts.manifests()}
    assert len(manifests) == 4 and {len(m.packed_with or []) for m in manifests.values()} == {4}
    assert sorted(m.id for m in alone.prompts.manifests()) == sorted(manifests)
    for pid, m in manifests.items():
        other = alone.prompts.manifest(pid)
        assert other.packed_with is None
        assert torch.equal(packed.prompts.tensor(pid), alone.prompts.tensor(pid))
        assert [{k: v for k, v in h.items() if k != "time_s"} for h in m.history] == \
            [{k: v for k, v in h.items() if k != "time_s"} for h in other.history]
    for path, record in ((lambda s: s.layout.matrix("tiny-roberta"), MatrixRow),
                         (lambda s: s.layout.indicators("tiny-roberta"), IndicatorRow)):
        assert read_records(path(packed), record) == read_records(path(alone), record)
