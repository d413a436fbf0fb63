"""The analysis stages as jobs. The stage functions (`ptdist.transfer`, `ptdist.neurons`,
`ptdist.projection`) run in one process on the prompts they are given; this module decides how
each stage is split into jobs, what each job needs and what it asks for:

    matrix <model> [k/n]      some target columns of the zero-shot matrix (the model loaded
                              once per job), when the matrix is split over several jobs
    matrix <model>            the matrix (of its columns, when it was split)
    capture <model> [k/n]     FFN activations of a chunk of the model's prompts
    indicators <model>        every indicator for every pair of its captured prompts
    correlate <model>         indicators vs transfer
    tpt <model>, tpt_model <A> -> <B>   a plan: once its source prompts are stored it names
                              its runs (vanilla PT and PT from each source on each target,
                              prompt-tuning jobs like any other) and the summary job

Jobs carry prompt ids, never tensors: each reads what it needs from the store. The same jobs
serve a study (`replicate.py`, which stamps them with the key of their inputs so a re-run skips
them: `stage_key`, `with_stamp`) and the one-stage commands (`run_matrix`, `run_capture`,
`run_tpt`).
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, is_dataclass, replace
from functools import partial
from pathlib import Path, PurePath
from typing import Any

from ptdist.backbones.prompt import INIT_RULE
from ptdist.neurons.collect import CaptureResult, CaptureSettings, capture
from ptdist.neurons.correlation import correlate
from ptdist.neurons.indicator_table import pairwise_indicators
from ptdist.orchestration.execution.cluster import cluster_for
from ptdist.orchestration.execution.graph import Execution, Job, execute, require_success
from ptdist.orchestration.execution.worker_group import on_worker_group
from ptdist.orchestration.jobs.runs import Planned, prompt_jobs
from ptdist.orchestration.planning.plans import Packing
from ptdist.orchestration.spec.sweep_spec import Resources, RunSpec
from ptdist.store import Store
from ptdist.store.atomic import atomic_write_json
from ptdist.store.manifests import PromptManifest
from ptdist.store.results import MatrixRow
from ptdist.store.tables import read_records
from ptdist.training.config import TrainConfig, hashed_settings
from ptdist.training.run import plan_run
from ptdist.transfer.matrix import (MatrixResult, MatrixSettings, matrix_sources, store_columns,
                                    transfer_matrix, write_matrix)
from ptdist.transfer.tpt import TptPlan, TptResult, tpt_summary

log = logging.getLogger(__name__)

LIGHT = {"CPU": 1.0}  # a job that reads tables or prompts, never a model


# --- the zero-shot transfer matrix ---------------------------------------------------------

def matrix_jobs(store: Store, model: str, tasks: Sequence[str], ids: Sequence[str] | None,
                settings: MatrixSettings, chunks: int, needs: tuple[str, ...],
                resources: Resources) -> list[Job]:
    """``matrix <model>`` of the own prompts of ``tasks`` (names) of ``model`` among ``ids``
    (None: the store): one job, or its target columns spread over ``chunks`` jobs (each loads
    the model once) and an assembly job. Each job runs with ``resources``: in its process, or
    on a worker group when they ask for several workers (``settings.ds_config`` then says
    how the model is partitioned over it)."""
    select = partial(_sources, store, model, tuple(tasks), None if ids is None else tuple(ids))
    parts = [tuple(tasks[i::chunks]) for i in range(min(chunks, len(tasks)))]
    if len(parts) == 1:
        return [model_job(f"matrix {model}", partial(_matrix, store, select, settings), needs,
                           resources, store)]
    columns = [model_job(f"matrix {model} [{k + 1}/{len(parts)}]",
                          partial(_score_columns, store, select, part, settings), needs,
                          resources, store) for k, part in enumerate(parts)]
    assemble = Job(f"matrix {model}", partial(_assemble, store, select),
                   needs=tuple(job.id for job in columns), resources=LIGHT, reuse_process=True)
    return [*columns, assemble]


def model_job(job_id: str, run: Callable[[], dict], needs: tuple[str, ...],
              resources: Resources, store: Store, done: Callable[[], bool] | None = None) -> Job:
    """A job that runs a frozen model: ``run()`` in its process, or on every worker of a
    group (one node, the failure policy of training groups) when ``resources`` ask for
    several, with the summary rank 0 returned."""
    if resources.workers > 1:
        run = partial(on_worker_group, job_id, run, {}, resources, store)
    return Job(job_id, run, needs=needs, done=done, resources=resources.job_bundle(),
               holds=resources.worker_group(), reuse_process=True)


def _sources(store: Store, model: str, tasks: tuple[str, ...],
             ids: tuple[str, ...] | None) -> list[PromptManifest]:
    return matrix_sources(store.prompts.select(model, tasks, ids))


def _matrix(store: Store, select: Callable[[], list[PromptManifest]],
            settings: MatrixSettings) -> dict:
    return {"table": str(transfer_matrix(store, select(), settings).table)}


def _score_columns(store: Store, select: Callable[[], list[PromptManifest]],
                   targets: tuple[str, ...], settings: MatrixSettings) -> dict:
    store_columns(store, select(), targets, settings)
    return {"targets": list(targets)}


def _assemble(store: Store, select: Callable[[], list[PromptManifest]]) -> dict:
    sources = select()
    rows = [r for task in dict.fromkeys(m.task for m in sources)
            for r in read_records(store.layout.matrix_column(sources[0].model, task), MatrixRow)]
    return {"table": str(write_matrix(store, sources, rows).table)}


def run_matrix(store: Store, prompts: Sequence[PromptManifest], settings: MatrixSettings,
               execution: Execution, resources: Resources = Resources()) -> MatrixResult:
    """The matrix of one model's own ``prompts``, a job per target."""
    sources = matrix_sources(prompts)
    model, tasks = sources[0].model, list(dict.fromkeys(m.task for m in sources))
    jobs = matrix_jobs(store, model, tasks, [m.id for m in sources], settings, len(tasks), (),
                       resources)
    require_success(execute(jobs, execution))
    return MatrixResult(read_records(store.layout.matrix(model), MatrixRow),
                        store.layout.matrix(model), tasks)


# --- activations, indicators, correlation --------------------------------------------------

def capture_jobs(store: Store, model: str, ids: Sequence[str], settings: CaptureSettings,
                 chunks: int, needs: tuple[str, ...], resources: Resources) -> list[Job]:
    """``capture <model>`` over the prompts ``ids`` of ``model``, split into ``chunks`` jobs
    (each writes its own Parquet parts, so they may run at once), placed as `matrix_jobs`."""
    parts = [tuple(ids[i::chunks]) for i in range(min(chunks, len(ids)))]
    name = f"capture {model}"
    return [model_job(name if len(parts) == 1 else f"{name} [{k + 1}/{len(parts)}]",
                       partial(_capture, store, model, part, settings), needs, resources, store)
            for k, part in enumerate(parts)]


def _capture(store: Store, model: str, ids: tuple[str, ...], settings: CaptureSettings) -> dict:
    result = capture(store, store.prompts.select(model, ids=ids), settings)
    return {"captured": result.captured, "skipped": result.skipped}


def run_capture(store: Store, prompts: Sequence[PromptManifest], settings: CaptureSettings,
                chunks: int, execution: Execution,
                resources: Resources = Resources()) -> CaptureResult:
    model = prompts[0].model
    outcome = execute(capture_jobs(store, model, [m.id for m in prompts], settings, chunks, (),
                                   resources), execution)
    require_success(outcome)
    results = [job.result for job in outcome.jobs]
    return CaptureResult(sum(r["captured"] for r in results),
                         sum(r["skipped"] for r in results), store.layout.activations(model))


def indicators_job(store: Store, model: str, ids: Sequence[str], protocol: str,
                   needs: tuple[str, ...]) -> Job:
    return Job(f"indicators {model}", partial(_indicators, store, model, tuple(ids), protocol),
               needs=needs, resources=LIGHT, reuse_process=True)


def _indicators(store: Store, model: str, ids: tuple[str, ...], protocol: str) -> dict:
    result = pairwise_indicators(store, model, store.prompts.select(model, ids=ids), protocol)
    return {"table": str(result.table)}


def correlate_job(store: Store, model: str, needs: tuple[str, ...]) -> Job:
    return Job(f"correlate {model}", partial(_correlate, store, model), needs=needs,
               resources=LIGHT, reuse_process=True)


def _correlate(store: Store, model: str) -> dict:
    return {"table": str(correlate(store, model).table)}


# --- TPT -----------------------------------------------------------------------------------

def tpt_plan_job(job_id: str, make_plan: Callable[[], TptPlan], store: Store,
                 resources: Resources, packing: Packing, known: Mapping[str, str],
                 needs: tuple[str, ...], stamp: Callable[[Job], Job] = lambda job: job) -> Job:
    """A plan job: once ``needs`` are met, ``make_plan()`` names the runs (packed by
    ``packing``); runs already produced by a job of the graph (``known``: prompt id -> job id;
    vanilla PT is usually the study's own run) are needed rather than trained again.
    ``stamp`` wraps the summary job."""
    return stamp(Job(job_id, plan=partial(_expand_tpt, job_id, make_plan, store, resources,
                                          packing, dict(known), stamp), needs=needs))


def _expand_tpt(job_id: str, make_plan: Callable[[], TptPlan], store: Store,
                resources: Resources, packing: Packing, known: dict[str, str],
                stamp: Callable[[Job], Job]) -> list[Job]:
    plan = make_plan()
    planned: list[Planned] = [(RunSpec(config, resources), plan_run(config, store).prompt_id)
                              for *_, config in plan.runs()]
    new = [(run, pid) for run, pid in planned if pid not in known]
    for (target, _, label, config), (_, pid) in zip(plan.runs(), planned):
        if label == "vanilla" and pid not in known and not store.prompts.has(pid):
            log.info(f"[{job_id}] {why_vanilla_is_trained(store, config, target)}")
    runs = prompt_jobs(new, store, packing) if new else None
    needs = tuple(dict.fromkeys(known[pid] if pid in known else runs.jobs[pid].id
                                for _, pid in planned))
    summary = stamp(Job(job_id, partial(_summarize, store, plan), needs=needs, resources=LIGHT,
                        reuse_process=True))
    return [*(runs.unique() if runs else []), summary]


def why_vanilla_is_trained(store: Store, config: TrainConfig, target: str) -> str:
    """Why a TPT comparison trains its own vanilla run rather than reusing a stored one: the
    settings in which the closest stored run (same model, task, seed, random init) differs."""
    stored = [m for m in store.prompts.select(config.model, [target])
              if m.init == "random" and m.seed == config.seed]
    head = f"training a vanilla run of {config.model} on {target} (seed {config.seed}): "
    if not stored:
        return head + "the store holds no vanilla run of it with this seed"
    implicit = TrainConfig.IMPLICIT
    ours = hashed_settings(config.to_dict())

    def differences(m) -> dict:
        theirs = hashed_settings(m.config)
        keys = [*ours, *(k for k in theirs if k not in ours)]
        return {k: (ours.get(k, implicit.get(k)), theirs.get(k, implicit.get(k)))
                for k in keys if ours.get(k) != theirs.get(k)}

    closest = min(stored, key=lambda m: len(differences(m)))
    diff = differences(closest)
    if not diff and closest.init_rule != INIT_RULE:
        return head + (f"stored run {closest.id} has the same settings, but its random init "
                       f"was drawn under the rule '{closest.init_rule}' and runs now draw "
                       f"under '{INIT_RULE}' (docs/neurons.md)")
    if not diff:
        return head + (f"stored run {closest.id} has the same settings but another task "
                       "record, init or precision")
    return head + f"stored run {closest.id} differs in " + ", ".join(
        f"{k} ({here} here, {there} stored)" for k, (here, there) in diff.items())


def _summarize(store: Store, plan: TptPlan) -> dict:
    result = tpt_summary(store, plan)
    return {"folders": [str(f) for f in result.folders]}


def run_tpt(store: Store, plan: TptPlan, resources: Resources,
            execution: Execution) -> TptResult:
    """The runs of a TPT plan (those not stored) as jobs, then its summary."""
    packing = Packing(cluster_for(None, execution.address, execution.local),
                      execution.max_concurrent, execution.local)
    jobs = _expand_tpt("tpt summary", lambda: plan, store, resources, packing, {},
                       lambda job: job)
    require_success(execute(jobs, execution))
    return tpt_summary(store, plan)


# --- stamps --------------------------------------------------------------------------------

def stage_key(job_id: str, inputs: Sequence[str], what: Any) -> str:
    """The key of a stage's result: its job id, the ids of its (content-addressed) input
    artifacts, and what it computes (a function with its settings, `_describe`)."""
    payload = [job_id, sorted(inputs), _describe(what)]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def with_stamp(job: Job, *, store: Store, scope: str, key: str) -> Job:
    """``job`` recorded as done by a stamp holding ``key``: the job writes it when it succeeds,
    and the graph skips it while the stamp's key is the same. A plan is done when the summary
    that takes its place (stamped with the same key) has run."""
    path = str(store.layout.stamp(scope, job.id))
    done = partial(_has_stamp, path, key)
    if job.plan is not None:
        return replace(job, done=done)
    return replace(job, run=partial(_stamp_after, job.run, path, key), done=done)


def _describe(what: Any) -> Any:
    """What a stage computes, as JSON data: a partial as its function's name and its arguments
    (nested partials unwrapped), a function as its name, a settings record (a dataclass) and
    the store as `_record`, plain data as itself. Anything else is refused rather than written
    as its str(), which may differ from process to process (an address) and so never match."""
    if isinstance(what, partial):
        return [what.func.__name__, [_describe(a) for a in what.args],
                {k: _describe(v) for k, v in sorted(what.keywords.items())}]
    if isinstance(what, (list, tuple)):
        return [_describe(v) for v in what]
    if isinstance(what, dict):
        return {k: _describe(v) for k, v in what.items()}
    if isinstance(what, (str, int, float, bool, type(None))):
        return what
    if isinstance(what, Store) or (is_dataclass(what) and not isinstance(what, type)):
        return _record(what)
    if callable(what) and hasattr(what, "__name__"):
        return what.__name__
    raise TypeError(f"a stage's key has no form for a {type(what).__qualname__}; give its "
                    "settings as a dataclass or plain data")


def _record(value: Any) -> str:
    """A settings record as its stamp key holds it: its class name and, in order, each field
    that decides what the stage computes, written as Python writes them (the form the stamps
    of existing stores hold). A field declared ``repr=False`` says how a stage runs (a
    DeepSpeed config), not what it computes, and is left out; the store is its root."""
    if isinstance(value, Store):
        return f"Store({str(value.root)!r})"
    if is_dataclass(value) and not isinstance(value, type):
        return f"{type(value).__qualname__}(" + ", ".join(
            f"{f.name}={_record(getattr(value, f.name))}" for f in fields(value) if f.repr) + ")"
    if isinstance(value, tuple):
        return f"({', '.join(map(_record, value))}{',' if len(value) == 1 else ''})"
    if isinstance(value, list):
        return f"[{', '.join(map(_record, value))}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_record(k)}: {_record(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (str, int, float, bool, type(None), enum.Enum, PurePath)):
        return repr(value)
    raise TypeError(f"a stage's key has no form for a {type(value).__qualname__} in a "
                    "settings record; make it a dataclass or plain data")


def _stamp_after(run: Callable[[], dict], path: str, key: str) -> dict:
    result = run()
    atomic_write_json(path, {"key": key, "result": result})
    return result


def _has_stamp(path: str, key: str) -> bool:
    stamp = Path(path)
    return stamp.exists() and json.loads(stamp.read_text())["key"] == key
