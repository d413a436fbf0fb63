"""The replication study as one graph of jobs (`ptdist replicate`).

    prompt <model>/<task>/seed<s>/<init>   prompt tuning, every run of the study (or a pack)
    matrix <model>                         zero-shot transfer matrix     (needs its prompts)
    capture <model>                        FFN activations to Parquet    (needs its prompts)
    indicators <model>                     E_*, D_*, ON for prompt pairs (needs capture)
    correlate <model>                      indicators vs transfer        (needs both above)
    projector / eval <A> -> <B>            cross-model transfer          (pairs.py)
    tpt <model>, tpt_model <A> -> <B>      TPT_task / TPT_model: plans whose runs are jobs of
                                           this graph (stages.py)
    report                                 Markdown + figures + tables   (needs everything)

A job starts when what it needs is done; independent jobs run at once. Prompts and projectors
are content-addressed; every other stage leaves a stamp holding the key of its inputs (the
settings and the ids of the prompts it read), so a re-run after a crash skips every stage whose
inputs have not changed and does only what is missing. The report is written by a function the
caller passes (`ptdist.reporting` sits above orchestration).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from ptdist.neurons.collect import CaptureSettings
from ptdist.orchestration.execution.cluster import cluster_for
from ptdist.orchestration.execution.graph import Execution, GraphOutcome, Job, execute
from ptdist.orchestration.jobs.job_costs import CostLedger
from ptdist.orchestration.jobs.pairs import PairGraph, pair_jobs
from ptdist.orchestration.jobs.runs import PromptJobs, plan_sweep, prompt_jobs
from ptdist.orchestration.jobs.stages import (LIGHT, capture_jobs, correlate_job, indicators_job,
                                              matrix_jobs, stage_key, tpt_plan_job, with_stamp)
from ptdist.orchestration.planning.plans import Packing, check_spec
from ptdist.orchestration.spec.study_spec import Study
from ptdist.orchestration.spec.sweep_spec import ModelEntry, SweepSpec
from ptdist.projection.tpt import model_plan
from ptdist.store import Store
from ptdist.store.run_lock import run_lock
from ptdist.tasks import get_task
from ptdist.transfer.matrix import MatrixSettings
from ptdist.transfer.tpt import task_plan

Report = Callable[[Study, list[str]], object]  # (study, projector ids) -> the report's path


@dataclass
class _Builder:
    """The jobs of one study, each stage stamped with the key of its inputs."""

    study: Study
    store: Store
    prompts: PromptJobs
    packing: Packing
    jobs: list[Job]

    def add(self, job: Job, inputs: tuple[str, ...]) -> None:
        self.jobs.append(self.stamp(job, inputs, job.run))

    def stamp(self, job: Job, inputs: tuple[str, ...], what) -> Job:
        return with_stamp(job, store=self.store, scope=self.study.spec.name,
                          key=stage_key(job.id, inputs, what))


def study_jobs(study: Study, report: Report, packing: Packing) -> list[Job]:
    """Every job of ``study``, its prompt-tuning runs packed by ``packing``."""
    spec = study.spec
    store = spec.store()
    prompts = prompt_jobs(plan_sweep(spec, store), store, packing)
    graph = pair_jobs(spec, study.projection, prompts) if study.projection else \
        PairGraph(prompts.unique(), [])
    build = _Builder(study, store, prompts, packing, list(graph.jobs))
    for model in spec.models:
        _model_stages(build, model)
    if study.tpt is not None:
        _tpt_jobs(build, graph)
    projectors = sorted(pair.projector_id for pair in graph.pairs)
    everything = tuple(prompts.jobs) + tuple(projectors)
    build.add(Job("report", partial(_report, report, study, projectors),
                  needs=tuple(j.id for j in build.jobs), resources=LIGHT,
                  reuse_process=True), everything)
    return build.jobs


def _model_stages(build: _Builder, model: ModelEntry) -> None:
    """Matrix, capture, indicators and correlation of one model's prompts of the study."""
    spec, store, prompts = build.study.spec, build.store, build.prompts
    m, tasks = model.name, [get_task(t).name for t in spec.tasks_of(model)]
    mine = prompts.needs(m, spec.tasks)  # the study's own prompts, not all in the store
    resources, sharded = model.inference()  # one device, or the model's ZeRO-3 group
    settings = CaptureSettings(data_dir=spec.data_dir, ds_config=sharded, **build.study.neurons)
    for job in capture_jobs(store, m, mine, settings, 1, prompts.ids(mine), resources):
        build.add(job, mine)
    build.add(indicators_job(store, m, mine, settings.protocol, (f"capture {m}",)), mine)
    if len(tasks) > 1:  # transfer needs two tasks
        matrix = MatrixSettings(data_dir=spec.data_dir, ds_config=sharded,
                                **build.study.transfer)
        for job in matrix_jobs(store, m, tasks, mine, matrix, 1, prompts.ids(mine), resources):
            build.add(job, mine)
        build.add(correlate_job(store, m, (f"indicators {m}", f"matrix {m}")), mine)


def _tpt_jobs(build: _Builder, graph: PairGraph) -> None:
    """TPT_task on each model (each target from each source task's prompt) and TPT_model on
    each pair (each target from its projected prompt)."""
    spec, settings, store, prompts = build.study.spec, build.study.tpt, build.store, build.prompts
    known = {pid: job.id for pid, job in prompts.jobs.items()}
    for model in spec.models:
        targets = _runs_on(spec, model, settings.targets)
        sources = _runs_on(spec, model, settings.sources)
        if targets and sources:
            inputs = prompts.needs(model.name, targets + sources)
            make = partial(_task_plan, store, model.name, targets, sources, inputs,
                           tuple(spec.seeds), *_tpt_settings(build.study, model))
            _add_plan(build, f"tpt {model.name}", make, model, known, inputs,
                      prompts.ids(inputs))
    for pair in graph.pairs:
        targets = tuple(t for t in settings.targets if t in pair.eval_tasks)
        if targets:
            inputs = prompts.needs(pair.source.name, targets) + \
                prompts.needs(pair.target.name, targets)
            make = partial(_model_plan, store, pair.projector_id, pair.source.name, targets,
                           inputs, *_tpt_settings(build.study, pair.target))
            _add_plan(build, f"tpt_model {pair.name}", make, pair.target, known,
                      inputs + (pair.projector_id,),
                      (f"projector {pair.name}", *prompts.ids(inputs)))


def _add_plan(build: _Builder, job_id: str, make, model: ModelEntry, known: dict[str, str],
              inputs: tuple[str, ...], needs: tuple[str, ...]) -> None:
    stamp = partial(with_stamp, store=build.store, scope=build.study.spec.name,
                    key=stage_key(job_id, inputs, make))
    build.jobs.append(tpt_plan_job(job_id, make, build.store, model.resources, build.packing,
                                   known, needs, stamp))


def _runs_on(spec: SweepSpec, model: ModelEntry, tasks: tuple[str, ...]) -> tuple[str, ...]:
    names = {get_task(t).name for t in spec.tasks_of(model)}
    return tuple(t for t in tasks if get_task(t).name in names)


def _tpt_settings(study: Study, model: ModelEntry) -> tuple[dict, dict]:
    """The TPT runs' training settings (the study's own, so vanilla PT is the study's run of
    the target and is not trained again; the first seed's, where one seed is run), where their
    data and DeepSpeed config are, and the speed-up's tolerance."""
    spec = study.spec
    train = {**spec.train, **model.train, "seed": spec.seeds[0]}
    return train, {"data_dir": spec.data_dir, "ds_config": model.ds_config,
                   "tolerance": study.tpt.tolerance}


def _task_plan(store: Store, model: str, targets: tuple[str, ...], sources: tuple[str, ...],
               inputs: tuple[str, ...], seeds: tuple[int, ...], train: dict, placement: dict):
    """TPT_task on every seed of the study: each seed's runs start from that seed's source
    prompts and are compared with that seed's vanilla run."""
    return task_plan(store, model, targets, sources, store.prompts.select(model, ids=inputs),
                     train, seeds, **placement)


def _model_plan(store: Store, projector_id: str, source: str, targets: tuple[str, ...],
                inputs: tuple[str, ...], train: dict, placement: dict):
    return model_plan(store, projector_id, targets, store.prompts.select(source, ids=inputs),
                      train, **placement)


def study_packing(study: Study, execution: Execution) -> Packing:
    """Check a study against the cluster it will run on (every run's job fits a node, its
    memory plan its GPU: `check_spec`) and say how its runs are packed there."""
    spec = study.spec
    cluster = cluster_for(spec.cluster, execution.address, execution.local)
    check_spec(spec, cluster, execution.local, execution.ignore_memory_plan)
    return Packing(cluster, execution.max_concurrent or spec.max_concurrent, execution.local)


def run_study(study: Study, report: Report, execution: Execution | None = None) -> GraphOutcome:
    """Run a study's graph, holding the store's run lock; each job's cost is recorded as it
    finishes (`CostLedger`)."""
    execution = execution or Execution()
    packing = study_packing(study, execution)  # refuses before the lock is taken
    store = Store(study.spec.storage_path)
    with run_lock(store.layout):
        jobs = study_jobs(study, report, packing)
        return execute(jobs, Execution(execution.local, execution.address,
                                       execution.max_concurrent or study.spec.max_concurrent,
                                       study.spec.max_failures),
                       CostLedger(store, study.spec.name))


def _report(report: Report, study: Study, projectors: list[str]) -> dict:
    return {"report": str(report(study, projectors))}
