"""The replication study as one graph of jobs on Ray (`ptdist replicate`).

    prompt <model>/<task>/seed<s>/<init>   prompt tuning, every run of the study
    matrix <model>                         zero-shot transfer matrix        (needs its prompts)
    capture <model>                        FFN activations to Parquet       (needs its prompts)
    indicators <model>                     E_*, D_*, ON for prompt pairs    (needs capture)
    correlate <model>                      indicators vs transfer           (needs both above)
    projector / eval <A> -> <B>            cross-model transfer             (docs/projection.md)
    tpt <model>, tpt_model <A> -> <B>      TPT_task / TPT_model with speed-ups (their sweeps)
    report                                 Markdown + figures + tables      (needs everything)

A job starts when what it needs is done; independent jobs run at once. Prompts and projectors
are content-addressed; every other stage leaves a stamp holding the key of its inputs (the
settings and the ids of the prompts it read), so a re-run after a crash skips every stage whose
inputs have not changed and does only what is missing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path

from ptdist.orchestration.graph import GraphOutcome, Job, run_graph
from ptdist.orchestration.model_pairs import (PairGraph, PromptJobs, one_device, pair_jobs,
                                              prompt_jobs)
from ptdist.orchestration.spec import ModelEntry, SweepSpec
from ptdist.orchestration.study import Study
from ptdist.orchestration.trial import COORDINATOR_CPU, job_bundle
from ptdist.store.atomic import atomic_write_json
from ptdist.store.keys import model_key
from ptdist.tasks import get_task

STAMPS = "pipeline"


def study_jobs(study: Study) -> list[Job]:
    spec = study.spec
    prompts = prompt_jobs(spec)
    graph = pair_jobs(spec, study.projection, prompts) if study.projection else \
        PairGraph(prompts.unique(), [])
    jobs = graph.jobs
    stage = partial(_stage, study)
    for model in spec.models:
        m, tasks = model.name, list(spec.tasks_of(model))
        mine = prompts.needs(m, spec.tasks)  # the study's own prompts, not all in the store
        device = job_bundle(one_device(model))
        jobs.append(stage(f"capture {m}", mine, prompts.ids(mine), device,
                          partial(_capture, spec.storage_path, m, tasks, spec.data_dir,
                                  study.neurons, mine)))
        jobs.append(stage(f"indicators {m}", mine, (f"capture {m}",), {"CPU": 1.0},
                          partial(_indicators, spec.storage_path, m,
                                  study.neurons.get("protocol", "prompt"), mine)))
        if len(tasks) > 1:  # transfer needs two tasks
            jobs.append(stage(f"matrix {m}", mine, prompts.ids(mine), device,
                              partial(_matrix, spec.storage_path, m, tasks, spec.data_dir,
                                      study.transfer, mine)))
            jobs.append(stage(f"correlate {m}", mine, (f"indicators {m}", f"matrix {m}"),
                              {"CPU": 1.0}, partial(_correlate, spec.storage_path, m)))
    if study.tpt is not None:
        jobs += _tpt_jobs(study, prompts, graph)
    projectors = sorted(pair.projector_id for pair in graph.pairs)
    everything = tuple(prompts.jobs) + tuple(projectors)
    jobs.append(stage("report", everything, tuple(j.id for j in jobs), {"CPU": 1.0},
                      partial(_report, study, projectors)))
    return jobs


def _tpt_jobs(study: Study, prompts: PromptJobs, graph: PairGraph) -> list[Job]:
    """TPT_task on each model (each target from each source task's prompt) and TPT_model on
    each pair (each target from its projected prompt). Their runs are a sweep that Tune
    schedules on the cluster, so the job itself only coordinates."""
    spec, settings = study.spec, study.tpt
    jobs = []
    for model in spec.models:
        targets = _runs_on(spec, model, settings.targets)
        sources = _runs_on(spec, model, settings.sources)
        if targets and sources:
            inputs = prompts.needs(model.name, targets + sources)
            jobs.append(_stage(study, f"tpt {model.name}", inputs, prompts.ids(inputs),
                               {"CPU": COORDINATOR_CPU},
                               partial(_tpt_task, spec.storage_path, model.name, targets,
                                       sources, *_tpt_run_settings(spec, model), inputs)))
    for pair in graph.pairs:
        targets = tuple(t for t in settings.targets if t in pair.eval_tasks)
        if targets:
            inputs = prompts.needs(pair.source.name, targets) + \
                prompts.needs(pair.target.name, targets)
            jobs.append(_stage(study, f"tpt_model {pair.name}", inputs + (pair.projector_id,),
                               (f"projector {pair.name}", *prompts.ids(inputs)),
                               {"CPU": COORDINATOR_CPU},
                               partial(_tpt_model, spec.storage_path, pair.projector_id,
                                       targets, *_tpt_run_settings(spec, pair.target),
                                       inputs)))
    return jobs


def _runs_on(spec: SweepSpec, model: ModelEntry, tasks: tuple[str, ...]) -> tuple[str, ...]:
    names = {get_task(t).name for t in spec.tasks_of(model)}
    return tuple(t for t in tasks if get_task(t).name in names)


def _tpt_run_settings(spec: SweepSpec, model: ModelEntry) -> tuple[dict, dict]:
    """The TPT runs' training settings (the study's own, so vanilla PT is the study's run of
    the target and is not trained again) and how they are placed."""
    train = {**spec.train, **model.train, "seed": spec.seeds[0]}
    return train, {"data_dir": spec.data_dir, "ds_config": model.ds_config,
                   "resources": asdict(model.resources)}


def run_study(study: Study, address: str | None = None) -> GraphOutcome:
    from ptdist.orchestration.cluster import ray_session

    jobs = study_jobs(study)
    with ray_session(address):
        return run_graph(jobs, max_concurrent=study.spec.max_concurrent)


def report_dir(study: Study) -> Path:
    return Path(study.spec.storage_path) / "reports" / model_key(study.spec.name)


def _stage(study: Study, job_id: str, inputs: tuple[str, ...], needs: tuple[str, ...],
           resources: dict[str, float], fn: partial) -> Job:
    """A job whose completion is recorded in a stamp keyed by what it computes from: the
    stage function, its settings, and the (content-addressed) ids of its input artifacts."""
    stamp = Path(study.spec.storage_path) / STAMPS / model_key(study.spec.name) / \
        f"{model_key(job_id)}.json"
    payload = [job_id, sorted(inputs), fn.func.__name__, fn.args, fn.keywords]
    key = hashlib.sha256(json.dumps(payload, default=str).encode()).hexdigest()
    return Job(job_id, partial(_stamped, fn, stamp, key), needs=needs,
               done=partial(_has_stamp, stamp, key), resources=resources)


def _stamped(fn: Callable[[], dict], stamp: Path, key: str) -> dict:
    from ptdist.runtime import quiet_libraries

    quiet_libraries()
    result = fn()
    atomic_write_json(stamp, {"key": key, "result": result})
    return result


def _has_stamp(stamp: Path, key: str) -> bool:
    return stamp.exists() and json.loads(stamp.read_text())["key"] == key


def _capture(root: str, model: str, tasks: list[str], data_dir: str | None,
             settings: dict, among: tuple[str, ...]) -> dict:
    from ptdist.neurons.collect import capture
    from ptdist.store.prompts import PromptStore

    result = capture(model, PromptStore(root), tasks=tasks, data_dir=data_dir, among=among,
                     **settings)
    return {"captured": result.captured, "folder": str(result.folder)}


def _indicators(root: str, model: str, protocol: str, among: tuple[str, ...]) -> dict:
    from ptdist.neurons.pairs import pairwise_indicators
    from ptdist.store.prompts import PromptStore

    return {"table": str(pairwise_indicators(model, PromptStore(root), protocol,
                                             among).table)}


def _matrix(root: str, model: str, tasks: list[str], data_dir: str | None,
            settings: dict, among: tuple[str, ...]) -> dict:
    from ptdist.store.prompts import PromptStore
    from ptdist.transfer.matrix import transfer_matrix

    result = transfer_matrix(model, tasks, PromptStore(root), data_dir=data_dir, on_ray=False,
                             among=among, **settings)
    return {"table": str(result.table)}


def _correlate(root: str, model: str) -> dict:
    from ptdist.neurons.correlation import correlate
    from ptdist.store.prompts import PromptStore

    return {"table": str(correlate(model, PromptStore(root)).table)}


def _tpt_task(root: str, model: str, targets: tuple[str, ...], sources: tuple[str, ...],
              train: dict, placement: dict, among: tuple[str, ...]) -> dict:
    from ptdist.store.prompts import PromptStore
    from ptdist.transfer.tpt import run_tpt

    result = run_tpt(model, list(targets), list(sources), PromptStore(root), dict(train),
                     among=among, **placement)
    return {"folders": [str(f) for f in result.folders]}


def _tpt_model(root: str, projector_id: str, targets: tuple[str, ...], train: dict,
               placement: dict, among: tuple[str, ...]) -> dict:
    from ptdist.projection.tpt import run_tpt_model

    result = run_tpt_model(root, projector_id, list(targets), dict(train), among=among,
                           **placement)
    return {"folders": [str(f) for f in result.folders]}


def _report(study: Study, projectors: list[str]) -> dict:
    from ptdist.reporting.report import write_report

    return {"report": str(write_report(study, projectors, report_dir(study)))}
