"""Run a sweep: every run of the spec whose prompt is not in the store becomes a Ray Tune trial
with the resources its model asks for (a job of one run, or a pack); Ray runs as many at once as
the cluster holds (and the spec's ``max_concurrent`` allows), adding nodes on an autoscaling
cluster. Tune is started from the driver and never nested in another Ray task. With a local
execution the same jobs run one after another in this process instead.

Re-running a sweep does only what is missing: runs are content-addressed (the prompt id of
`plan_run`), finished ones are read from the store, and interrupted ones resume from their
checkpoints. The outcome of every run is written to `StoreLayout.sweep_table`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from ptdist import logs
from ptdist.errors import PtdistError
from ptdist.orchestration.execution.attempt import begin
from ptdist.orchestration.execution.cluster import cluster_for, ray_session
from ptdist.orchestration.execution.failures import one_line
from ptdist.orchestration.execution.graph import Execution, Job, execute
from ptdist.orchestration.jobs.runs import Planned, job_to_dict, pack_runs, plan_sweep, train_job
from ptdist.orchestration.planning.plans import (ModelPlan, Packing, check_spec, describe_plans,
                                                 describe_training)
from ptdist.orchestration.planning.resources import Cluster, describe
from ptdist.orchestration.spec.sweep_spec import RunSpec, SweepSpec
from ptdist.store import Store
from ptdist.store.layout import segment
from ptdist.store.results import SweepRow
from ptdist.store.run_lock import run_lock
from ptdist.store.tables import write_records

log = logging.getLogger(__name__)


@dataclass
class SweepOutcome:
    """What a sweep did: the ``spec`` it ran (as read, overrides applied), a row per run
    (``failed``: those that failed, which are there rather than raised), the results
    ``table``, how many runs this call ``trained``, and a dry run's ``listing``."""

    spec: SweepSpec
    rows: list[SweepRow]
    table: Path | None
    trained: int  # runs this call trained (fresh or resumed)
    listing: str | None = None  # a dry run's: the jobs it would run, and each model's plan
    to_run: int = 0  # runs whose prompt is not stored (those a dry run would train)

    @property
    def failed(self) -> list[SweepRow]:
        return [r for r in self.rows if r.status == "failed"]


def run_sweep(spec: SweepSpec, execution: Execution | None = None,
              dry_run: bool = False) -> SweepOutcome:
    """Train every run of ``spec`` that is not stored, holding the store's run lock (a dry run
    lists them and writes nothing); ``execution``'s address, concurrency and retries default to
    the spec's."""
    execution = execution or Execution()
    execution = replace(execution, max_failures=spec.max_failures,
                        max_concurrent=execution.max_concurrent or spec.max_concurrent)
    cluster = cluster_for(spec.cluster, execution.address, execution.local)
    # Refused before the lock is taken and before the first line (a refusal is the only line).
    plans = check_spec(spec, cluster, execution.local, execution.ignore_memory_plan)
    if dry_run:
        return _sweep(spec, execution, cluster, plans, dry_run)
    with run_lock(spec.store().layout):
        return _sweep(spec, execution, cluster, plans, dry_run)


def _sweep(spec: SweepSpec, execution: Execution, cluster: Cluster, plans: list[ModelPlan],
           dry_run: bool) -> SweepOutcome:
    store = spec.store()
    planned = plan_sweep(spec, store)
    todo = [(run, pid) for run, pid in planned if not store.prompts.has(pid)]
    log.info(f"sweep {spec.name}: {len(planned)} runs ({len(spec.models)} model(s) x "
             f"{len(spec.tasks)} task(s) x {len(spec.seeds)} seed(s) x {len(spec.inits)} "
             f"init(s)); {len(planned) - len(todo)} already in the store {store.root}, "
             f"{len(todo)} to run")
    jobs = pack_runs(todo, Packing(cluster, execution.max_concurrent, execution.local))
    if len(jobs) < len(todo):
        log.info(f"packed into {len(jobs)} job(s): runs of one model share its backbone")
    if dry_run:
        return SweepOutcome(spec, [], None, 0, "\n".join((
            describe_sweep(jobs), describe_training(spec), describe_plans(plans))), len(todo))
    results: dict[str, dict] = {}
    if not todo:
        log.info("nothing new to run: every prompt of this sweep is already in the store")
    elif execution.local:
        results = _run_here(jobs, store, execution)
    else:
        with ray_session(execution.address) as where:
            results = _tune(spec, jobs, store, where, execution)
    rows = [_row(run, pid, store, results.get(pid)) for run, pid in planned]
    table = write_records(store.layout.sweep_table(spec.name), SweepRow, rows)
    trained = sum(r.status in ("trained", "resumed") for r in rows)
    log.info(f"sweep {spec.name} finished: {trained} trained, "
             f"{sum(r.status == 'stored' for r in rows)} already stored, "
             f"{sum(r.status == 'failed' for r in rows)} failed; results in {table}")
    return SweepOutcome(spec, rows, table, trained)


def describe_sweep(jobs: list[list[Planned]]) -> str:
    """A dry run's listing of a sweep's jobs, with what each holds while it runs."""
    lines = []
    for job in jobs:
        res = job[0][0].resources
        where = f"{res.workers} worker(s) x {describe(res.per_worker())}" + (
            f" = {describe(res.group())} on one node" if res.workers > 1 else "")
        if len(job) > 1:
            lines.append(f"  would run a pack of {len(job)} runs on {where}:")
        for run, pid in job:
            lines.append(f"  {'  ' if len(job) > 1 else ''}would run {pid} {run.label}: "
                         f"{run.config.steps} steps, {where}, {run.config.ds_config}")
    return "\n".join(lines)


def _run_here(jobs: list[list[Planned]], store: Store,
              execution: Execution) -> dict[str, dict]:
    """The jobs one after another in this process, under the same failure policy."""
    graph = [Job(job_to_dict(group)["id"], partial(train_job, job_to_dict(group), store),
                 resources=group[0][0].resources.job_bundle()) for group in jobs]
    outcome = execute(graph, execution)
    results = {}
    for group, job in zip(jobs, outcome.jobs):
        for _, pid in group:
            results[pid] = job.result["runs"][pid] if job.status == "ran" else \
                {"error": job.error}
    return results


def _tune(spec: SweepSpec, jobs: list[list[Planned]], store: Store, where: str,
          execution: Execution) -> dict[str, dict]:
    """Run each job as a Tune trial; returns each run's result (or error) by prompt id."""
    import ray
    from ray import tune

    from ptdist.orchestration.execution.tune_progress import SweepProgress

    runs = [run for job in jobs for run, _ in job]
    log.info(f"running {len(runs)} run(s) in {len(jobs)} job(s) on {where}; cluster "
             f"resources: {describe(ray.cluster_resources())}")
    store.root.mkdir(parents=True, exist_ok=True)
    tuner = tune.Tuner(
        tune.with_resources(run_trial, trial_resources),
        param_space={"job": tune.grid_search([job_to_dict(job) for job in jobs]),
                     "store": str(store.root), "ray_storage": store.ray_storage,
                     "log_level": logs.level()},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=execution.max_concurrent, reuse_actors=False,
            trial_name_creator=lambda t: t.config["job"]["id"],
            trial_dirname_creator=lambda t: t.config["job"]["runs"][0]["prompt_id"]),
        run_config=tune.RunConfig(
            name=f"{segment(spec.name)}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=store.ray_records("tune"), verbose=0,
            failure_config=tune.FailureConfig(max_failures=execution.max_failures),
            callbacks=[SweepProgress(len(runs), execution.policy.attempts)]),
    )
    results = {}
    for result in tuner.fit():
        job = result.config["job"]
        metrics = result.metrics or {}
        error = {"error": one_line(result.error)} if result.error is not None else \
            {"error": metrics["error"]} if "error" in metrics else None  # a user error
        for run in job["runs"]:
            results[run["prompt_id"]] = error or metrics["runs"][run["prompt_id"]]
    return results


def trial_resources(trial_config: dict):
    """The placement group of a trial."""
    from ray import tune

    from ptdist.orchestration.spec.sweep_spec import Resources

    return tune.PlacementGroupFactory([Resources(**trial_config["job"]["resources"]).job_bundle()])


def run_trial(trial_config: dict) -> None:
    """Tune's function trainable: one attempt of a job; reports its runs' results once."""
    from ray import tune

    job = trial_config["job"]
    try:
        begin(job["id"], trial_config["log_level"])
        result = train_job(job, Store(trial_config["store"], trial_config["ray_storage"]))
    except PtdistError as exc:
        # A user error fails the same way on every attempt: report it instead of raising, so
        # Tune does not retry it (failures.py).
        result = {"error": str(exc)}
    tune.report(result)


def _row(run: RunSpec, prompt_id: str, store: Store, result: dict | None) -> SweepRow:
    c, res = run.config, run.resources
    row = dict(prompt_id=prompt_id, model=c.model, task=c.task, seed=c.seed, init=str(c.init),
               workers=res.workers, gpus=res.gpus)
    if result is not None and "error" in result:
        return SweepRow(status="failed", error=result["error"], **row)
    try:
        m = store.prompts.manifest(prompt_id)
    except PtdistError as exc:  # a damaged record: this row fails, the sweep's others stand
        return SweepRow(status="failed", error=str(exc), **row)
    resumed = (result or {}).get("resumed_from")
    status = "stored" if result is None or result.get("skipped") else (
        "resumed" if resumed is not None else "trained")
    return SweepRow(status=status, metric=m.metric, score=m.score, best_step=m.best_step,
                    steps=m.steps, resumed_from=resumed,
                    wall_time_s=(result or {}).get("wall_time_s"), **row)


def require_no_failures(outcome: SweepOutcome) -> None:
    if outcome.failed:
        names = ", ".join(f"{r.model}/{r.task}/seed{r.seed} ({r.error})"
                          for r in outcome.failed)
        raise PtdistError(f"{len(outcome.failed)} run(s) failed: {names}. Finished runs are in "
                          "the store; run the same sweep again to retry only what is missing")
