"""Cross-model projectors for every ordered pair of a sweep's models, as one graph on Ray.

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
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ptdist.errors import PtdistError
from ptdist.orchestration.graph import GraphOutcome, Job, describe_jobs, run_graph
from ptdist.orchestration.spec import ModelEntry, Resources, SweepSpec
from ptdist.orchestration.sweep import plan_sweep
from ptdist.orchestration.trial import job_bundle, job_to_dict, pack_runs, train_job
from ptdist.projection.config import ProjectorConfig, config_from_dict
from ptdist.store.keys import model_key
from ptdist.store.projectors import ProjectorStore
from ptdist.store.prompts import PromptStore
from ptdist.store.tables import read_table, write_table
from ptdist.tasks import get_task


@dataclass(frozen=True)
class PairSettings:
    """What the pair scheduler adds to a sweep spec: how projectors train, and on what."""

    mode: str
    train_tasks: tuple[str, ...]
    eval_tasks: tuple[str, ...]
    projector: dict[str, Any]  # ProjectorConfig settings: variant, hidden, steps, lr...


@dataclass
class PairsOutcome:
    jobs: list[Job]
    graph: GraphOutcome  # one outcome per job, in the same order
    table: Path | None  # every pair's evaluation rows, <storage>/cross_model/<name>.parquet


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


@dataclass
class PromptJobs:
    """The prompt-tuning runs of a sweep as graph jobs, and which runs belong to which model
    and task (what later jobs need)."""

    jobs: dict[str, Job]  # prompt id -> its job
    runs_of: dict[tuple[str, str], list[str]]  # (model, task name) -> prompt ids

    def needs(self, model: str, tasks: tuple[str, ...]) -> tuple[str, ...]:
        """Prompt ids of ``model``'s runs on ``tasks``."""
        return tuple(pid for t in tasks
                     for pid in self.runs_of.get((model, get_task(t).name), []))

    def ids(self, prompt_ids: tuple[str, ...]) -> tuple[str, ...]:
        """The job ids that produce ``prompt_ids`` (a pack produces several)."""
        return tuple(dict.fromkeys(self.jobs[p].id for p in prompt_ids))

    def unique(self) -> list[Job]:
        """Each job once, in order."""
        return list({job.id: job for job in self.jobs.values()}.values())


def _all_stored(store: PromptStore, prompt_ids: list[str]) -> bool:
    return all(store.has(pid) for pid in prompt_ids)


def prompt_jobs(spec: SweepSpec) -> PromptJobs:
    store = PromptStore(spec.storage_path)
    planned = plan_sweep(spec, store)
    jobs = {}
    # Packs are formed from the runs not yet stored, as a sweep forms them.
    for group in pack_runs([(run, pid) for run, pid in planned if not store.has(pid)]) + \
            [[(run, pid)] for run, pid in planned if store.has(pid)]:
        job = job_to_dict(group)
        graph_job = Job(f"prompt {job['label']}" if len(group) == 1 else job["label"],
                        partial(train_job, job, store.root.as_posix(), spec.max_failures),
                        done=partial(_all_stored, store, [pid for _, pid in group]),
                        resources=job_bundle(group[0][0].resources))
        jobs.update({pid: graph_job for _, pid in group})
    runs_of: dict[tuple[str, str], list[str]] = {}
    for run, pid in planned:
        runs_of.setdefault((run.config.model, get_task(run.config.task).name), []).append(pid)
    return PromptJobs(jobs, runs_of)


def pair_jobs(spec: SweepSpec, settings: PairSettings,
              prompts: PromptJobs | None = None) -> PairGraph:
    """Projector and evaluation jobs for every ordered model pair, after the prompt jobs
    (built here unless given)."""
    _check_tasks(spec, settings)
    prompts = prompts or prompt_jobs(spec)
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
        pair = f"{source.name} -> {target.name}"
        graph.jobs.append(_projector_job(pair, config, spec, target, prompts.ids(
            config.source_prompts + config.target_prompts)))
        evaluated = prompts.needs(source.name, eval_tasks) + \
            prompts.needs(target.name, eval_tasks)
        graph.jobs.append(_eval_job(pair, config, spec, target, eval_tasks, evaluated,
                                    prompts.ids(evaluated)))
        graph.pairs.append(Pair(source, target, config.projector_id, eval_tasks))
    return graph


def _shared(spec: SweepSpec, source: ModelEntry, target: ModelEntry,
            tasks: tuple[str, ...]) -> tuple[str, ...]:
    """The ``tasks`` that both models of a pair run."""
    both = {get_task(t).name for t in spec.tasks_of(source)} & \
        {get_task(t).name for t in spec.tasks_of(target)}
    return tuple(t for t in tasks if get_task(t).name in both)


def _projector_job(pair: str, config: ProjectorConfig, spec: SweepSpec, target: ModelEntry,
                   needs: tuple[str, ...]) -> Job:
    resources = _job_resources(target, config.mode)
    return Job(f"projector {pair}",
               partial(_train_projector, config.to_dict(), spec.storage_path, asdict(resources),
                       spec.max_failures),
               needs=needs, done=partial(ProjectorStore(spec.storage_path).has,
                                         config.projector_id),
               resources=job_bundle(resources))


def _eval_job(pair: str, config: ProjectorConfig, spec: SweepSpec, target: ModelEntry,
              tasks: tuple[str, ...], among: tuple[str, ...], needs: tuple[str, ...]) -> Job:
    """Evaluation of the pair's projector on ``tasks``, with the prompts ``among`` the
    sweep's runs."""
    return Job(f"eval {pair}",
               partial(_evaluate, spec.storage_path, config.projector_id, list(tasks),
                       spec.data_dir, config.eval_limit, among),
               needs=(f"projector {pair}", *needs),
               done=partial(_evaluated, spec.storage_path, config.projector_id, list(tasks)),
               resources=job_bundle(_job_resources(target, "eval")))


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


def run_pairs(spec: SweepSpec, settings: PairSettings, address: str | None = None,
              dry_run: bool = False) -> PairsOutcome:
    """Train and evaluate a projector for every ordered pair of ``spec``'s models, training
    the prompts they need first; the table of every pair goes to
    ``<storage>/cross_model/<spec name>.parquet``."""
    from ptdist.orchestration.cluster import ray_session

    if len(spec.models) < 2:
        raise PtdistError(f"projectors map between models; sweep {spec.name} has one "
                     f"({spec.models[0].name}); add a second model to its 'models'")
    graph = pair_jobs(spec, settings)
    pairs = len(graph.pairs)
    print(f"projector pairs of {spec.name}: {len(spec.models)} models, {pairs} ordered pairs "
          f"({settings.mode}, trained on {', '.join(settings.train_tasks)}); "
          f"{len(graph.jobs)} jobs: {len(graph.jobs) - 2 * pairs} prompt-tuning runs, {pairs} "
          f"projectors, {pairs} evaluations", flush=True)
    if dry_run:
        print(describe_jobs(graph.jobs), flush=True)
        return PairsOutcome(graph.jobs, GraphOutcome([]), None)
    with ray_session(address):
        outcome = run_graph(graph.jobs, max_concurrent=spec.max_concurrent)
    return PairsOutcome(graph.jobs, outcome, _combine(spec, graph, outcome))


CROSS_MODEL_DIR = "cross_model"


def _combine(spec: SweepSpec, graph: PairGraph, outcome: GraphOutcome) -> Path | None:
    from ptdist.projection.evaluation import EVAL_SCHEMA, eval_table

    store = ProjectorStore(spec.storage_path)
    rows = []
    for pair in graph.pairs:
        if outcome.outcome(f"eval {pair.name}").status in ("ran", "stored"):
            rows += read_table(eval_table(store, pair.projector_id))
    if not rows:
        return None
    return write_table(Path(spec.storage_path) / CROSS_MODEL_DIR / f"{model_key(spec.name)}"
                       ".parquet", rows, EVAL_SCHEMA)


def one_device(model: ModelEntry) -> Resources:
    """What evaluating ``model`` needs: one of its workers, with at most one GPU."""
    return Resources(workers=1, gpus=min(model.resources.gpus, 1), cpus=model.resources.cpus)


def _job_resources(target: ModelEntry, mode: str) -> Resources:
    """Task tuning runs through the target model on all its resources; distance minimising
    and evaluation need one device."""
    return target.resources if mode == "task" else one_device(target)


def _train_projector(config: dict, store_root: str, resources: dict,
                     max_failures: int) -> dict:
    from ptdist.orchestration.trial import on_worker_group
    from ptdist.projection.training import train_projector
    from ptdist.runtime import quiet_libraries

    quiet_libraries()
    res = Resources(**resources)
    if res.workers == 1:
        manifest = train_projector(config_from_dict(config), store_root)
    else:
        projector_id = config_from_dict(config).projector_id
        on_worker_group(_projector_worker, {"config": config, "store": store_root}, res,
                        f"projector-{projector_id}", store_root, max_failures)
        manifest = ProjectorStore(store_root).manifest(projector_id)
    return {k: manifest.get(k) for k in ("id", "mode", "score", "distance")}


def _projector_worker(loop_config: dict) -> None:
    from ptdist.projection.training import train_projector
    from ptdist.runtime import quiet_libraries

    quiet_libraries()
    train_projector(config_from_dict(loop_config["config"]), loop_config["store"])


def _evaluate(store_root: str, projector_id: str, tasks: list[str], data_dir: str | None,
              eval_limit: int | None, among: tuple[str, ...]) -> dict:
    from ptdist.projection.evaluation import evaluate_projector
    from ptdist.runtime import quiet_libraries

    quiet_libraries()
    rows = evaluate_projector(store_root, projector_id, tasks, data_dir=data_dir,
                              eval_limit=eval_limit, among=among)
    return {"projector": projector_id, "tasks": len(rows)}


def _evaluated(store_root: str, projector_id: str, tasks: list[str]) -> bool:
    from ptdist.projection.evaluation import evaluated

    return evaluated(store_root, projector_id, tasks)
