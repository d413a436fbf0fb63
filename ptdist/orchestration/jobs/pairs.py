"""Cross-model projectors for every ordered pair of a sweep's models, as one graph of jobs.

    prompt <model>/<task>/seed<s>/<init>   a prompt-tuning run of the sweep (stored: skipped)
    projector <A> -> <B>                   trains A -> B; needs the runs whose prompts it
                                           learns from (A's on the training tasks; for
                                           distance minimising B's too)
    eval <A> -> <B>                        the cross-model transfer table of that projector;
                                           needs it and both models' runs on the eval tasks

Each job starts when what it needs is in the store, as many at once as the cluster holds.
Every job is idempotent (prompts and projectors are content-addressed, tables are checked for
their tasks), so a re-run after a crash does only what is missing. Task tuning runs through
the target model, so its job gets the target's resources and DeepSpeed config (a Ray Train
worker group when the target asks for several workers); distance minimising needs one device.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from ptdist.errors import PtdistError
from ptdist.orchestration.execution.cluster import cluster_for
from ptdist.orchestration.execution.graph import Execution, GraphOutcome, Job, execute
from ptdist.orchestration.execution.worker_group import on_worker_group
from ptdist.orchestration.jobs.runs import PromptJobs, plan_sweep, prompt_jobs
from ptdist.orchestration.jobs.stages import model_job
from ptdist.orchestration.planning.plans import Packing, check_spec
from ptdist.orchestration.spec.sweep_spec import ModelEntry, Resources, SweepSpec
from ptdist.projection.config import ProjectorConfig, config_from_dict
from ptdist.projection.evaluation import evaluate_projector, evaluated
from ptdist.projection.modes import train_projector
from ptdist.scoring import EvalSettings
from ptdist.store import Store
from ptdist.store.results import ProjectorEvalRow
from ptdist.store.tables import read_records, write_records
from ptdist.tasks import get_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairSettings:
    """What the pair scheduler adds to a sweep spec: how projectors train (``mode``: distance
    or task; ``projector``: `ProjectorConfig` settings such as variant, hidden, steps, lr), the
    tasks they train on, and the tasks of the cross-model table (empty: the spec's)."""

    mode: str
    train_tasks: tuple[str, ...]
    eval_tasks: tuple[str, ...] = ()
    projector: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class PairsOutcome:
    """What the pair scheduler did: the ``spec`` it ran (as read, overrides applied), its
    ``jobs``, each one's outcome (``graph``; ``graph.failed``: those that failed or were
    blocked, which are there rather than raised) and the cross-model ``table``."""

    spec: SweepSpec
    jobs: list[Job]
    graph: GraphOutcome  # one outcome per job, in the same order
    table: Path | None  # every pair's evaluation rows (`StoreLayout.cross_model_table`)


@dataclass(frozen=True)
class Pair:
    """One ordered model pair of the graph: its projector and the tasks it is evaluated on."""

    source: ModelEntry
    target: ModelEntry
    projector_id: str
    eval_tasks: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.source.name} -> {self.target.name}"


@dataclass
class PairGraph:
    jobs: list[Job]
    pairs: list[Pair]


def pair_jobs(spec: SweepSpec, settings: PairSettings, prompts: PromptJobs) -> PairGraph:
    """Projector and evaluation jobs for every ordered model pair, after ``prompts``'s jobs."""
    _check_tasks(spec, settings)
    store = spec.store()
    graph = PairGraph(prompts.unique(), [])
    for source, target in itertools.permutations(spec.models, 2):
        train_tasks = _shared(spec, source, target, settings.train_tasks)
        eval_tasks = _shared(spec, source, target, settings.eval_tasks)
        if not train_tasks or not eval_tasks:
            continue  # e.g. an MLM and a T5 share no generation task
        config = ProjectorConfig(
            source_model=source.name, target_model=target.name, mode=settings.mode,
            tasks=train_tasks, source_prompts=prompts.needs(source.name, train_tasks),
            target_prompts=prompts.needs(target.name, train_tasks)
            if settings.mode == "distance" else (),
            ds_config=target.ds_config, data_dir=spec.data_dir, **settings.projector)
        config.require_prompts()
        pair = Pair(source, target, config.projector_id, eval_tasks)
        resources = target.resources if config.mode == "task" else target.resources.one_device()
        graph.jobs.append(Job(
            f"projector {pair.name}", partial(_train_projector, config.to_dict(), store,
                                              resources),
            needs=prompts.ids(config.source_prompts + config.target_prompts),
            done=partial(store.projectors.has, config.projector_id),
            resources=resources.job_bundle(), holds=resources.worker_group()))
        among = prompts.needs(source.name, eval_tasks) + prompts.needs(target.name, eval_tasks)
        scoring, sharded = target.inference()  # one device, or the target's ZeRO-3 group
        eval_settings = EvalSettings(eval_limit=config.eval_limit, data_dir=spec.data_dir,
                                     ds_config=sharded)
        graph.jobs.append(model_job(
            f"eval {pair.name}", partial(_evaluate, store, config.projector_id, eval_tasks,
                                         among, eval_settings),
            (f"projector {pair.name}", *prompts.ids(among)), scoring, store,
            done=partial(evaluated, store, config.projector_id, eval_tasks)))
        graph.pairs.append(pair)
    return graph


def _shared(spec: SweepSpec, source: ModelEntry, target: ModelEntry,
            tasks: tuple[str, ...]) -> tuple[str, ...]:
    """The ``tasks`` that both models of a pair run."""
    both = {get_task(t).name for t in spec.tasks_of(source)} & \
        {get_task(t).name for t in spec.tasks_of(target)}
    return tuple(t for t in tasks if get_task(t).name in both)


def _check_tasks(spec: SweepSpec, settings: PairSettings) -> None:
    """Projectors learn from and are evaluated on the sweep's own runs."""
    known = {get_task(t).name for t in spec.tasks}
    for flag, tasks in (("--train-tasks", settings.train_tasks),
                        ("--eval-tasks", settings.eval_tasks)):
        outside = [t for t in tasks if get_task(t).name not in known]
        if outside:
            raise PtdistError(f"{flag} {' '.join(outside)}: not among the tasks of sweep "
                              f"{spec.name} ({', '.join(sorted(known))}); the pair scheduler "
                              "trains the prompts it needs from the spec, so add the task to "
                              "its 'tasks'")


def run_pairs(spec: SweepSpec, settings: PairSettings, execution: Execution | None = None,
              dry_run: bool = False) -> PairsOutcome:
    """Train and evaluate a projector for every ordered pair of ``spec``'s models, training
    the prompts they need first; the table of every pair goes to
    `StoreLayout.cross_model_table` of the spec's name."""
    if len(spec.models) < 2:
        raise PtdistError(f"projectors map between models; sweep {spec.name} has one "
                          f"({spec.models[0].name}); add a second model to its 'models'")
    if not settings.eval_tasks:
        settings = replace(settings, eval_tasks=tuple(spec.tasks))
    store = spec.store()
    execution = execution or Execution()
    cluster = cluster_for(spec.cluster, execution.address, execution.local)
    check_spec(spec, cluster, execution.local, execution.ignore_memory_plan)
    packing = Packing(cluster, execution.max_concurrent or spec.max_concurrent, execution.local)
    prompts = prompt_jobs(plan_sweep(spec, store), store, packing)
    graph = pair_jobs(spec, settings, prompts)
    pairs = len(graph.pairs)
    log.info(f"projector pairs of {spec.name}: {len(spec.models)} models, {pairs} ordered "
             f"pairs ({settings.mode}, trained on {', '.join(settings.train_tasks)}); "
             f"{len(graph.jobs)} jobs: {len(graph.jobs) - 2 * pairs} prompt-tuning runs, "
             f"{pairs} projectors, {pairs} evaluations")
    if dry_run:
        return PairsOutcome(spec, graph.jobs, GraphOutcome([]), None)
    outcome = execute(graph.jobs, Execution(
        execution.local, execution.address, execution.max_concurrent or spec.max_concurrent,
        spec.max_failures))
    return PairsOutcome(spec, graph.jobs, outcome, _combine(spec, store, graph, outcome))


def _combine(spec: SweepSpec, store: Store, graph: PairGraph,
             outcome: GraphOutcome) -> Path | None:
    rows = []
    for pair in graph.pairs:
        if outcome.outcome(f"eval {pair.name}").status in ("ran", "stored"):
            rows += read_records(store.layout.projector_eval(pair.projector_id),
                                 ProjectorEvalRow)
    if not rows:
        return None
    return write_records(store.layout.cross_model_table(spec.name), ProjectorEvalRow, rows)


def _train_projector(config: dict, store: Store, resources: Resources) -> dict:
    projector = config_from_dict(config)
    if resources.workers == 1:
        manifest = train_projector(projector, store)
    else:
        on_worker_group(f"projector {projector.projector_id}", _projector_worker,
                        {"config": config, "store": store}, resources, store)
        manifest = store.projectors.manifest(projector.projector_id)
    return {"id": manifest.id, "mode": manifest.mode, "score": manifest.score,
            "distance": manifest.distance}


def _projector_worker(config: dict, store: Store) -> None:
    train_projector(config_from_dict(config), store)


def _evaluate(store: Store, projector_id: str, tasks: tuple[str, ...], among: tuple[str, ...],
              settings: EvalSettings) -> dict:
    manifest = store.projectors.manifest(projector_id)
    prompts = [m for model in (manifest.source_model, manifest.target_model)
               for m in store.prompts.select(model, ids=among)]
    rows = evaluate_projector(store, projector_id, tasks, prompts, settings)
    return {"projector": projector_id, "tasks": len(rows)}
