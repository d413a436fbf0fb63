"""`ptdist replicate` on tiny presets: the whole study as one Ray graph, killed midway and
finished by a re-run that redoes none of the finished stages; the report it writes."""

from __future__ import annotations

import fnmatch
import glob
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ptdist.errors import PtdistError
from ptdist.orchestration.spec.study_spec import load_study
from ptdist.store import Store
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
    assert third.returncode == 0, err[-3000:]
    assert {j["status"] for j in json.loads(out.strip().splitlines()[-1])["jobs"]} == {"stored"}


# --- SIGKILL at chosen points of `replicate --local`, each followed by a re-run ---------------
# The fault hook (PTDIST_FAULTS, `ptdist.faults`) kills the command at each site of a list in
# turn: every rule fires once, so each run dies at the next site it reaches and the re-run after
# it goes on from what the killed one stored, until a run finishes.

REPORT_TABLES_WITH_TIMES = {"costs.parquet"}


def _replicate_local(study: Path, rules: list[dict]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ptdist", "replicate", "--study", str(study),
                           "--local", "--json"], cwd=study.parent, text=True,
                          capture_output=True, timeout=900,
                          env=child_env(PTDIST_FAULTS=json.dumps(rules)))


def _results(root: Path) -> dict:
    """What a study leaves that must not depend on how often it was killed: its prompts (ids,
    scores, histories without times, tensors), projectors (weights, evaluations), activation
    states, every analysis table and the report's tables (not its costs, which are times)."""
    import pyarrow.parquet as pq

    from ptdist.store.activations import read_states

    store = Store(root)
    prompts = {m.id: (m.model, m.task, m.seed, m.score, m.best_step,
                      [{k: v for k, v in p.items() if k != "time_s"} for p in m.history],
                      store.prompts.tensor(m.id).tolist()) for m in store.prompts.manifests()}
    projectors = {m.id: ({k: v.tolist() for k, v in store.projectors.weights(m.id).items()},
                         pq.read_table(store.layout.projector_eval(m.id)).to_pylist())
                  for m in store.projectors.manifests()}
    models = sorted({m.model for m in store.prompts.manifests()})
    states = {model: {pid: (task, bits.tolist()) for pid, (task, bits) in
                      read_states(store.layout, model, "prompt").items()} for model in models}
    tables = {str(path.relative_to(root)): _rows(pq.read_table(path).to_pylist())
              for folder in ("transfer", "neurons", "reports") for path in
              sorted((root / folder).rglob("*.parquet"))
              if path.name not in REPORT_TABLES_WITH_TIMES}
    return {"prompts": prompts, "projectors": projectors, "states": states, "tables": tables}


def _rows(rows: list[dict]) -> list[str]:
    """A table's rows, comparable: NaN equal to NaN, and in a fixed order (a listing's order
    follows when each prompt was stored, which a kill may change)."""
    return sorted(json.dumps(row, sort_keys=True, default=str) for row in rows)


def _nothing_half_written(root: Path, capsys) -> None:
    """What a killed study left, as the listings show it: no damaged record, every listed
    prompt and projector readable whole, every listed capture with all its layers."""
    from ptdist.store.activations import captured, read_states
    from tests.test_cli import run

    code, out, err = run(capsys, "prompts", "--check", "--store", str(root))
    assert code == 0, out + err
    code, out, err = run(capsys, "prompts", "--store", str(root), "--json")
    assert code == 0, err
    store = Store(root)
    listed = [row["id"] for row in json.loads(out.strip().splitlines()[-1])["prompts"]]
    for prompt_id in listed:
        store.prompts.tensor(prompt_id)  # checked against its manifest's checksum
    code, out, err = run(capsys, "project", "list", "--store", str(root), "--json")
    for row in json.loads(out.strip().splitlines()[-1])["projectors"]:
        store.projectors.weights(row["id"])
    for model in {store.prompts.manifest(p).model for p in listed}:
        assert set(read_states(store.layout, model, "prompt")) == \
            captured(store.layout, model, "prompt")


@pytest.fixture(scope="module")
def uninterrupted_study(task_prompts, tmp_path_factory) -> tuple[Path, dict, list[str]]:
    """(data folder, results, job ids) of the tiny study run once without a fault."""
    _, data, _ = task_prompts
    root = tmp_path_factory.mktemp("uninterrupted")
    study = root / "study.yaml"
    study.write_text(_study(root, data))
    proc = _replicate_local(study, [])
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [job["id"] for job in json.loads(proc.stdout.strip().splitlines()[-1])["jobs"]]
    return data, _results(root / "store"), jobs


def _killed_at_each(sites: list[tuple[str, int]], data: Path, tmp_path: Path,
                    capsys) -> dict:
    """Run the study with a kill at each ``(site pattern, visits to skip)`` in turn, re-running
    it after each kill, and checking the listings after each; the finished study's results."""
    study = tmp_path / "study.yaml"
    study.write_text(_study(tmp_path, data))
    log = tmp_path / "faults.log"
    rules = [{"match": match, "fault": "kill", "skip": skip, "times": 1, "log": str(log)}
             for match, skip in sites]
    for kill in range(len(sites) + 1):
        proc = _replicate_local(study, rules)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        _nothing_half_written(tmp_path / "store", capsys)
    assert (kill, proc.returncode) == (len(sites), 0), proc.stderr[-3000:]
    visits = log.read_text().splitlines()
    for match, skip in sites:  # each site was reached, and killed at the visit asked
        assert sum(fnmatch.fnmatchcase(v.rsplit(" ", 1)[0], match) for v in visits) > skip, \
            match
    return _results(tmp_path / "store")


@pytest.mark.slow
def test_a_study_killed_at_every_stage_boundary_ends_like_an_uninterrupted_one(
        uninterrupted_study, tmp_path, capsys):
    """Killed as the first job of each kind starts (after the one before it finished): a
    boundary of every stage. Killing all 15 jobs took 289 s and met no boundary of a kind
    that its first job does not."""
    data, reference, jobs = uninterrupted_study
    assert len(jobs) == 15
    firsts = [job for i, job in enumerate(jobs)
              if job.split()[0] not in {earlier.split()[0] for earlier in jobs[:i]}]
    assert len(firsts) >= 6, firsts
    assert _killed_at_each([(glob.escape(job), 0) for job in firsts], data, tmp_path,
                           capsys) == reference


@pytest.mark.slow
def test_a_study_killed_inside_each_stage_ends_like_an_uninterrupted_one(
        uninterrupted_study, tmp_path, capsys):
    """Killed inside each kind of stage: mid-training (resumed from step 20), between a
    prompt's or projector's tensor file and its manifest, before a projector evaluation's
    table, between two part renames of a capture, before a stage's stamp (its output stored),
    before the matrix table, before the report's Markdown (its figures and tables written)."""
    data, reference, _ = uninterrupted_study
    store = tmp_path / "store"
    roberta, t5 = (sorted(p for p, row in reference["prompts"].items() if row[0] == model)
                   for model in ("tiny-roberta", "tiny-t5-d96"))
    first, second = sorted(reference["projectors"])
    sites = [(f"write {store}/runs/{roberta[0]}/checkpoint.safetensors", 2),
             (f"write {store}/prompts/{t5[1]}/manifest.json", 0),
             (f"write {store}/projectors/{first}/manifest.json", 0),
             (f"write {store}/projectors/{second}/eval.parquet", 0),
             ("activations tiny-roberta part 2", 0),
             (f"write {store}/pipeline/tiny-study/indicators_tiny-roberta.json", 0),
             (f"write {store}/transfer/tiny-t5-d96/matrix.parquet", 0),
             (f"write {store}/pipeline/tiny-study/correlate_tiny-t5-d96.json", 0),
             (f"write {store}/reports/tiny-study/report.md", 0)]
    assert _killed_at_each(sites, data, tmp_path, capsys) == reference


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
    estimate = lines[:next(i for i, line in enumerate(lines) if line.startswith("schedule"))]
    table = {line.split()[0]: line.split() for line in estimate
             if line.split() and line.split()[0] in ("prompt", "tpt_model", "total")}
    assert table["prompt"][1] == str(len(prompt_jobs))
    assert float(table["prompt"][3].replace(",", "")) > 1000
    assert table["total"][1] == str(len(jobs))
    # Every model trains at the paper's constant rate, with no warm-up.
    training = lines[lines.index("training (per model):") + 1:][:4]
    assert [line.split(":")[0].strip() for line in training] == [
        "roberta-base", "roberta-large", "t5-base", "google/t5-v1_1-xxl"]
    assert all("0 warm-up step(s) then constant rate, adamw" in line for line in training)
    # T5-XXL fills a GPU: one run per job, each holding one GPU.
    xxl = [job for job in prompt_jobs if job.split()[1].startswith("google/t5-v1_1-xxl/")]
    assert len(xxl) == 17 * 3 and all(job.startswith("  prompt ") for job in xxl)
    assert all(job.endswith("8 CPU, 1 GPU") for job in xxl)
    # Its memory plan, on the smallest card it may land on (cluster.yaml's L40S 48 GB), at
    # accumulation 8 x micro-batch 4: the weights of T5 v1.1 XXL as its checkpoint holds them,
    # with its own head. The planner counts 11,135M parameters (the tied build's 11,004M plus the
    # head's vocabulary 32,128 x d_model 4,096 = 131.6M), 2 bf16 bytes each: 22.27 GB, printed
    # 22.3 GB (the tied build planned 22.0 GB).
    plan = out[out.index("memory plan"):]
    block = plan[plan.index("  google/t5-v1_1-xxl:"):].splitlines()[:3]
    assert block[0].endswith("ZeRO-0, bf16, accumulation 8 at micro-batch 4")
    assert "(weights 22.3 GB," in block[1] and "per GPU: fits one L40S 48 GB" in block[1]
    assert block[2].startswith("    least-compute placement on that card: 1 GPU, ZeRO-0, "
                               "accumulation 8 at micro-batch 4")


def test_gpu_hours_of_a_known_run_are_its_counted_flops_at_the_cards_rate(tmp_path):
    """One RoBERTa-base run with the default budget on an A100 80 GB (the node type of the
    study's cluster): 1000 steps x 32 examples of (100 prompt + 128 text) tokens, each a
    forward and a backward to the prompt, plus 11 evaluations (every 100 steps, and at step
    0) of 1000 examples, at 30 % of the A100's dense bf16 peak (312 TFLOP/s). On 8 GPUs under ZeRO-3
    each GPU computes an eighth and receives 7/8 of the 16-bit weights at each of the two
    gathers of a step and once per evaluation forward (of 8 examples a GPU), over NVLink
    (300 GB/s a direction); the run holds all eight."""
    from ptdist.orchestration.execution.graph import Execution
    from ptdist.orchestration.jobs.replicate import study_jobs, study_packing
    from ptdist.orchestration.planning.cost_model import example_flops
    from ptdist.orchestration.planning.estimate import job_costs, stage_costs
    from ptdist.reporting.report import write_report
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
    from ptdist.orchestration.jobs.replicate import study_jobs
    from ptdist.orchestration.planning.plans import Packing
    from ptdist.orchestration.planning.resources import Cluster
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
