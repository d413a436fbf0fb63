"""The plan uses the cluster and is enforced. Packing and concurrency come from the node types of
the spec's cluster (not from the driver's GPUs); a model whose run fills a GPU is never packed;
the paper preset on cluster.yaml keeps every GPU busy while runs wait, with a wall-clock per
stage and a critical path; GPU memory is pinned, not just the family; and a spec that does not
fit (a node or a GPU's memory) is refused by the dry run and by the scheduler before anything
runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ptdist.errors import PtdistError
from ptdist.orchestration.execution.graph import Execution
from ptdist.orchestration.jobs.replicate import run_study, study_jobs, study_packing
from ptdist.orchestration.jobs.sweep import run_sweep
from ptdist.orchestration.planning.estimate import job_costs
from ptdist.orchestration.planning.plans import Packing, check_plans, model_plans
from ptdist.orchestration.planning.resources import Cluster
from ptdist.orchestration.planning.schedule import simulate
from ptdist.orchestration.spec.spec_presets import preset
from ptdist.orchestration.spec.study_spec import load_study
from ptdist.orchestration.spec.sweep_spec import Resources, RunSpec, load_spec
from ptdist.reporting.report import write_report
from ptdist.store import Store
from ptdist.training import TrainConfig
from tests.test_cli import run

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
XXL = "google/t5-v1_1-xxl"


def _paper(store: Path, **overrides):
    study = load_study(preset("paper"), storage_path=str(store), **overrides)
    packing = study_packing(study, Execution())
    jobs = study_jobs(study, write_report, packing)
    costs = job_costs(study, jobs, packing.cluster)
    return packing, jobs, costs, simulate(costs, packing.cluster)


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    return _paper(tmp_path_factory.mktemp("paper"))


def test_the_paper_plan_takes_its_slots_from_cluster_yaml_not_from_the_drivers_gpus(
        paper, monkeypatch):
    import torch

    packing, jobs, _, _ = paper
    assert Path(packing.cluster.source) == CLUSTER_YAML and packing.cluster.gpus() == 24
    # What this machine has plays no part (the driver of `ray job submit` is a CPU head node;
    # here, a machine with 8 GPUs).
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(Cluster, "this_machine", classmethod(lambda cls: pytest.fail("asked")))
    again = Packing(Cluster.from_config(CLUSTER_YAML))
    run = RunSpec(TrainConfig(model="roberta-base", task="sst2", batch_size=32,
                              ds_config="zero0_bf16"), Resources(gpus=1, cpus=8))
    assert again.slots(run) == packing.slots(run) == 24  # 8 L40S + 16 A100, one run each
    assert again(run, 39) == 2  # 39 runs over 24 slots: packs of 2, not one pack of 16


def test_no_t5_xxl_pack_and_no_gpu_idle_while_runs_wait(paper, tmp_path):
    _, jobs, costs, schedule = paper
    xxl = [c for c in costs if c.stage == "prompt" and c.job.id.split()[1].startswith(XXL)]
    assert len(xxl) == 17 * 3 and all(c.runs == 1 and c.compute_bound for c in xxl)
    assert schedule.unplaced == [] and schedule.idle_while_waiting == 0
    # The plan of the issue (T5-XXL packed 6 to a GPU) idles GPUs while the packed runs wait.
    *_, packed = _paper(tmp_path, pack=6)
    assert packed.idle_while_waiting > 24 * 3600
    assert packed.makespan > schedule.makespan


def test_every_stage_has_a_wall_clock_on_the_cluster_and_none_beats_the_critical_path(paper):
    _, _, costs, schedule = paper
    stages = {c.stage for c in costs}
    assert {span.stage for span in schedule.spans} == stages
    assert all(0 <= span.start <= span.end <= schedule.makespan for span in schedule.spans)
    gpu_stages = {span.stage: span for span in schedule.spans if span.gpu_seconds}
    assert {"prompt", "matrix", "tpt", "tpt_model", "projector", "eval"} <= set(gpu_stages)
    assert 0 < schedule.critical_path <= schedule.makespan
    assert schedule.critical_jobs[0].split()[0] in ("prompt", "pack")
    assert schedule.critical_jobs[-1].split()[0] in ("report", "tpt", "tpt_model", "correlate")
    assert 0.5 < schedule.busy <= 1


def test_the_planner_plans_on_the_gpu_memory_a_run_is_pinned_to(tmp_path):
    """Ray's "A100" is 40 or 80 GB: a run pinned by type alone is planned on the smaller one;
    pinned to 80 GB it lands only on the 80 GB type, and is planned on it."""
    a100s = Cluster({"a100_40": {"CPU": 96, "GPU": 8, "accelerator_type:A100": 1,
                                 "gpu_memory_gb:40": 1},
                     "a100_80": {"CPU": 96, "GPU": 8, "accelerator_type:A100": 1,
                                 "gpu_memory_gb:80": 1}}, {"a100_40": 1, "a100_80": 1}, "two")
    by_type = Resources(gpus=1, cpus=8, accelerator_type="A100")
    by_memory = Resources(gpus=1, cpus=8, accelerator_type="A100", gpu_memory_gb=80)
    assert a100s.card_for(by_type).memory_gb == 40
    assert a100s.holding(by_memory.group()) == ["a100_80"]
    assert a100s.card_for(by_memory).memory_gb == 80
    ds = tmp_path / "accum2.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 0}, "gradient_accumulation_steps": 2,
                              "zero_allow_untested_optimizer": True, "bf16": {"enabled": True}}))
    for pinned, fits in ((by_type, False), (by_memory, True)):
        spec = tmp_path / "spec.yaml"
        spec.write_text(yaml.safe_dump({
            "storage_path": str(tmp_path / "store"), "tasks": ["sst2"],
            "train": {"batch_size": 32, "prompt_length": 100, "max_length": 256},
            "models": {XXL: {"ds_config": str(ds), "resources": {
                k: v for k, v in vars(pinned).items() if k in ("gpus", "cpus",
                                                               "accelerator_type",
                                                               "gpu_memory_gb") and v}}}}))
        plans = model_plans(load_spec(spec), a100s)
        assert plans[0].fits is fits  # ~61 GB at micro-batch 16
        if not fits:
            with pytest.raises(PtdistError, match="--ignore-memory-plan"):
                check_plans(plans)
            check_plans(plans, ignore_memory_plan=True)


def _study(tmp_path: Path, model: str, resources: dict, ds_config: str) -> Path:
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "name": "unfit", "storage_path": str(tmp_path / "store"), "cluster": str(CLUSTER_YAML),
        "tasks": ["sst2", "imdb"], "train": {"batch_size": 32, "prompt_length": 100,
                                             "max_length": 256, "steps": 2},
        "models": {model: {"resources": resources, "ds_config": ds_config}}}))
    return study


def test_a_spec_that_does_not_fit_its_gpu_is_refused_by_the_dry_run_and_the_scheduler(
        tmp_path, capsys):
    """T5-XXL pinned to the L40S (48 GB) without ZeRO-3, accumulation or checkpointing needs
    ~99 GB per GPU: refused before anything runs, unless the expert overrides the plan."""
    study = _study(tmp_path, XXL, {"gpus": 1, "cpus": 8, "accelerator_type": "L40S"},
                   "zero0_bf16")
    code, out, err = run(capsys, "replicate", "--study", str(study), "--dry-run")
    assert code == 2 and len(err.strip().splitlines()) == 1 and not out
    code, out, err = run(capsys, "replicate", "--study", str(study), "--dry-run",
                         "--ignore-memory-plan")
    assert code == 0, err
    with pytest.raises(PtdistError, match="--ignore-memory-plan"):
        run_study(load_study(study), write_report, Execution(local=True))
    with pytest.raises(PtdistError, match="--ignore-memory-plan"):
        run_sweep(load_spec(study), Execution(local=True))
    assert not Store(tmp_path / "store").prompts.manifests()  # nothing ran


def test_a_group_no_node_holds_is_refused_by_the_dry_run(tmp_path, capsys):
    """Two L40S workers on one node: cluster.yaml's L40S nodes have one GPU each."""
    study = _study(tmp_path, "t5-base", {"workers": 2, "gpus": 2, "cpus": 4,
                                         "accelerator_type": "L40S"}, "zero2_bf16")
    code, out, err = run(capsys, "replicate", "--study", str(study), "--dry-run")
    assert code == 2 and len(err.strip().splitlines()) == 1 and not out
    code, _, err = run(capsys, "sweep", "--spec", str(study), "--dry-run")
    assert code == 2 and len(err.strip().splitlines()) == 1
