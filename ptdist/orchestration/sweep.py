"""Run a sweep on Ray: every run of the spec whose prompt is not in the store becomes a Ray
Tune trial with the resources its model asks for; Ray runs as many at once as the cluster
holds (and the spec's ``max_concurrent`` allows), adding nodes on an autoscaling cluster.

Re-running a sweep does only what is missing: runs are content-addressed (the prompt id of
`plan_run`), finished ones are read from the store, and interrupted ones resume from their
checkpoints. The outcome of every run is written to ``<storage>/sweeps/<name>.parquet``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from ptdist.errors import PtdistError
from ptdist.orchestration.cluster import ray_session
from ptdist.orchestration.resources import (HEAD_NODE_CONFIG, check_runs_fit, describe,
                                            node_types_from_cluster_config,
                                            node_types_from_live_cluster)
from ptdist.orchestration.spec import RunSpec, SweepSpec
from ptdist.orchestration.trial import Planned, job_to_dict, pack_runs
from ptdist.store.prompts import PromptStore
from ptdist.store.tables import write_table
from ptdist.training.loop import plan_run

RESULT_SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("model", pa.string()), ("task", pa.string()),
    ("seed", pa.int64()), ("init", pa.string()),
    ("status", pa.string()),  # trained | resumed | stored | failed
    ("metric", pa.string()), ("score", pa.float64()), ("best_step", pa.int64()),
    ("steps", pa.int64()), ("resumed_from", pa.int64()), ("wall_time_s", pa.float64()),
    ("workers", pa.int64()), ("gpus", pa.int64()), ("error", pa.string()),
])


@dataclass
class SweepOutcome:
    rows: list[dict]
    table: Path | None
    trained: int  # runs this call trained (fresh or resumed)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "failed"]


def plan_sweep(spec: SweepSpec, store: PromptStore) -> list[tuple[RunSpec, str]]:
    """Every distinct run of the spec with its prompt id (two entries that would compute the
    same prompt are one run)."""
    planned: dict[str, RunSpec] = {}
    for run in spec.runs():
        planned.setdefault(plan_run(run.config, store).prompt_id, run)
    return [(run, prompt_id) for prompt_id, run in planned.items()]


def run_sweep(spec: SweepSpec, address: str | None = None, dry_run: bool = False) -> SweepOutcome:
    store = PromptStore(spec.storage_path)
    planned = plan_sweep(spec, store)
    todo = [(run, pid) for run, pid in planned if not store.has(pid)]
    _say(f"sweep {spec.name}: {len(planned)} runs ({len(spec.models)} model(s) x "
         f"{len(spec.tasks)} task(s) x {len(spec.seeds)} seed(s) x {len(spec.inits)} init(s)); "
         f"{len(planned) - len(todo)} already in the store {store.root}, {len(todo)} to run")
    jobs = pack_runs(todo)
    if len(jobs) < len(todo):
        _say(f"packed into {len(jobs)} job(s): runs of one model share its backbone")
    if dry_run:
        for job in jobs:
            res = job[0][0].resources
            if len(job) > 1:
                _say(f"  would run a pack of {len(job)} runs on {res.workers} worker(s) x "
                     f"{describe(res.per_worker())}:")
            for run, pid in job:
                _say(f"  {'  ' if len(job) > 1 else ''}would run {pid} {run.label}: "
                     f"{run.config.steps} steps, {res.workers} worker(s) x "
                     f"{describe(res.per_worker())}, {run.config.ds_config}")
        return SweepOutcome([], None, 0)
    results: dict[str, dict] = {}
    if todo:
        results = _run_on_ray(spec, jobs, store, address)
    else:
        _say("nothing new to run: every prompt of this sweep is already in the store")
    rows = [_row(run, pid, store, results.get(pid)) for run, pid in planned]
    table = write_table(store.root / "sweeps" / f"{spec.name}.parquet", rows, RESULT_SCHEMA)
    trained = sum(r["status"] in ("trained", "resumed") for r in rows)
    _say(f"sweep {spec.name} finished: {trained} trained, "
         f"{sum(r['status'] == 'stored' for r in rows)} already stored, "
         f"{sum(r['status'] == 'failed' for r in rows)} failed; results in {table}")
    return SweepOutcome(rows, table, trained)


def _run_on_ray(spec: SweepSpec, jobs: list[list[Planned]], store: PromptStore,
                address: str | None) -> dict[str, dict]:
    with ray_session(address) as where:
        return _tune(spec, jobs, store, where)


def _tune(spec: SweepSpec, jobs: list[list[Planned]], store: PromptStore,
          where: str) -> dict[str, dict]:
    """Run each job as a Tune trial; returns each run's result (or error) by prompt id."""
    import ray
    from ray import tune

    from ptdist.orchestration.progress import SweepProgress
    from ptdist.orchestration.trial import run_trial, trial_resources

    runs = [run for job in jobs for run, _ in job]
    _check_resources(spec, runs, local=where.startswith("a local"))
    _say(f"running {len(runs)} run(s) in {len(jobs)} job(s) on {where}; cluster resources: "
         f"{describe(ray.cluster_resources())}")
    store.root.mkdir(parents=True, exist_ok=True)
    tuner = tune.Tuner(
        tune.with_resources(run_trial, trial_resources),
        param_space={"job": tune.grid_search([job_to_dict(job) for job in jobs]),
                     "store": str(store.root), "max_failures": spec.max_failures},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=spec.max_concurrent, reuse_actors=False,
            trial_name_creator=lambda t: t.config["job"]["id"],
            trial_dirname_creator=lambda t: t.config["job"]["id"]),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(store.root / "ray" / "tune"), verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            callbacks=[SweepProgress(spec.name, len(runs))]),
    )
    results = {}
    for result in tuner.fit():
        job = result.config["job"]
        if result.error is not None:
            _say(f"job {job['id']} ({job['label']}) failed: {result.error}")
        metrics = result.metrics or {}
        error = {"error": _first_line(result.error)} if result.error is not None else \
            {"error": metrics["error"]} if "error" in metrics else None  # a user error
        for run in job["runs"]:
            results[run["prompt_id"]] = error or metrics["runs"][run["prompt_id"]]
    return results


def _check_resources(spec: SweepSpec, runs: list[RunSpec], local: bool) -> None:
    if spec.cluster:
        check_runs_fit(runs, node_types_from_cluster_config(spec.cluster), spec.cluster)
    elif HEAD_NODE_CONFIG.exists():
        check_runs_fit(runs, node_types_from_cluster_config(HEAD_NODE_CONFIG),
                       str(HEAD_NODE_CONFIG))
    elif local:
        check_runs_fit(runs, node_types_from_live_cluster(), "this machine's local Ray")
    else:
        _say("note: resources are not checked against node types (no cluster config given); "
             "set 'cluster: cluster.yaml' in the spec to check them before scheduling")


def _row(run: RunSpec, prompt_id: str, store: PromptStore, result: dict | None) -> dict:
    c, res = run.config, run.resources
    row = {"prompt_id": prompt_id, "model": c.model, "task": c.task, "seed": c.seed,
           "init": c.init, "workers": res.workers, "gpus": res.gpus}
    if result is not None and "error" in result:
        return dict(row, status="failed", error=result["error"])
    m = store.manifest(prompt_id)
    resumed = (result or {}).get("resumed_from")
    status = "stored" if result is None or result.get("skipped") else (
        "resumed" if resumed is not None else "trained")
    return dict(row, status=status, metric=m["metric"], score=m["score"],
                best_step=m["best_step"], steps=m["steps"], resumed_from=resumed,
                wall_time_s=(result or {}).get("wall_time_s"))


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _say(text: str) -> None:
    print(text, file=sys.stdout, flush=True)


def require_no_failures(outcome: SweepOutcome) -> None:
    if outcome.failed:
        names = ", ".join(f"{r['model']}/{r['task']}/seed{r['seed']} ({r['error']})"
                          for r in outcome.failed)
        raise PtdistError(f"{len(outcome.failed)} run(s) failed: {names}. Finished runs are in "
                          "the store; run the same sweep again to retry only what is missing")
