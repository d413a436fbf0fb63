"""Prompt-tuning runs as jobs: one run, or a pack of runs that share a backbone
(`ptdist.training.packed`), the unit that a sweep's Tune trial and a study's graph job both
execute (`train_job`).

A one-worker job trains in the process Ray placed it in, on the CPUs and GPU reserved for it.
A job with more workers starts a Ray Train worker group (`worker_group.py`) whose every worker
runs the same DeepSpeed recipe. Either way a job that is retried resumes each run from its last
checkpoint in the store, so it ends where an uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import partial

from ptdist.orchestration.execution.graph import Job
from ptdist.orchestration.execution.worker_group import on_worker_group
from ptdist.orchestration.spec.sweep_spec import Resources, RunSpec, SweepSpec
from ptdist.store import Store
from ptdist.tasks import get_task
from ptdist.training import TrainConfig, train
from ptdist.training.packed import SHARED, train_packed
from ptdist.training.run import TrainResult, plan_run, stored_result

Planned = tuple[RunSpec, str]  # a run and its prompt id


def plan_sweep(spec: SweepSpec, store: Store) -> list[Planned]:
    """Every distinct run of the spec with its prompt id (two entries that would compute the
    same prompt are one run)."""
    planned: dict[str, RunSpec] = {}
    for run in spec.runs():
        planned.setdefault(plan_run(run.config, store).prompt_id, run)
    return [(run, prompt_id) for prompt_id, run in planned.items()]


def pack_runs(runs: list[Planned],
              auto: Callable[[RunSpec, int], int] = lambda _run, _n: 1) -> list[list[Planned]]:
    """The runs grouped into jobs: in order, each run joins the last open job of runs that can
    share its backbone (same resources and `SHARED` settings) until that job holds its pack
    size. A run's ``pack`` is that size (1: every run its own job); ``pack`` None (the default)
    packs automatically: ``auto(run, n)`` is the size for a group of ``n`` such runs
    (`ptdist.orchestration.planning.plans.Packing`)."""
    def key(run: RunSpec) -> tuple:
        return (run.resources, run.pack, *(getattr(run.config, name) for name in SHARED))

    groups: dict[tuple, list[RunSpec]] = {}
    for run, _ in runs:
        groups.setdefault(key(run), []).append(run)
    size = {k: group[0].pack or auto(group[0], len(group)) for k, group in groups.items()}
    jobs: list[list[Planned]] = []
    open_jobs: dict[tuple, list[Planned]] = {}
    for run, prompt_id in runs:
        job = open_jobs.get(key(run))
        if job is None or len(job) >= size[key(run)]:
            job = open_jobs[key(run)] = []
            jobs.append(job)
        job.append((run, prompt_id))
    return jobs


def job_to_dict(job: list[Planned]) -> dict:
    """A job as data a Ray task or Tune trial carries: its runs, an id and a label."""
    first, prompt_id = job[0]
    return {"runs": [{"config": run.config.to_dict(), "label": run.label, "prompt_id": pid}
                     for run, pid in job],
            "id": f"prompt {first.label}" if len(job) == 1 else
            f"pack {first.label} +{len(job) - 1}",
            "label": first.label if len(job) == 1 else
            f"pack of {len(job)} runs of {first.config.model}",
            "resources": asdict(first.resources)}


def train_job(job: dict, store: Store) -> dict:
    """Train a job (as `job_to_dict` gives it) from the process Ray placed it in: here for one
    worker, else on a Ray Train worker group. Returns each run's result scalars by prompt id
    (``runs``) and the training examples the job processed (``examples``)."""
    resources = Resources(**job["resources"])
    configs = [run["config"] for run in job["runs"]]
    if resources.workers == 1:
        results = train_here(configs, store)
    else:
        on_worker_group(job["id"], train_here, {"configs": configs, "store": store},
                        resources, store)
        # Rank 0 stored every prompt and its manifest; whether the group was restarted (and
        # from which step each run resumed) is recorded there.
        results = [stored_result(store, run["prompt_id"], skipped=False) for run in job["runs"]]
    # The learning curve is in each prompt's manifest; a job reports scalars.
    return {"runs": {r.prompt_id: {k: v for k, v in r.to_dict().items() if k != "history"}
                     for r in results},
            "examples": sum(r.examples for r in results)}


def train_here(configs: list[dict], store: Store) -> list[TrainResult]:
    """The runs of one job in this process (one rank of a worker group, or alone)."""
    runs = [TrainConfig(**c) for c in configs]
    return [train(runs[0], store)] if len(runs) == 1 else train_packed(runs, store)


@dataclass
class PromptJobs:
    """Prompt-tuning runs as graph jobs, and which runs belong to which model and task (what
    later jobs need)."""

    jobs: dict[str, Job]  # prompt id -> its job
    runs_of: dict[tuple[str, str], list[str]]  # (model, task name) -> prompt ids

    def needs(self, model: str, tasks: Iterable[str]) -> tuple[str, ...]:
        """Prompt ids of ``model``'s runs on ``tasks`` (names or YAML paths)."""
        return tuple(pid for t in tasks
                     for pid in self.runs_of.get((model, get_task(t).name), []))

    def ids(self, prompt_ids: Iterable[str]) -> tuple[str, ...]:
        """The job ids that produce ``prompt_ids`` (a pack produces several)."""
        return tuple(dict.fromkeys(self.jobs[p].id for p in prompt_ids))

    def unique(self) -> list[Job]:
        """Each job once, in order."""
        return list({job.id: job for job in self.jobs.values()}.values())


def prompt_jobs(planned: list[Planned], store: Store,
                packing: Callable[[RunSpec, int], int]) -> PromptJobs:
    """Graph jobs for ``planned`` runs: the runs not yet stored are packed as a sweep packs
    them (`pack_runs` with ``packing``); each stored run is a job of its own that the graph
    skips."""
    todo = [(run, pid) for run, pid in planned if not store.prompts.has(pid)]
    done = [[(run, pid)] for run, pid in planned if store.prompts.has(pid)]
    jobs = {}
    for group in pack_runs(todo, packing) + done:
        job = job_to_dict(group)
        res = group[0][0].resources
        graph_job = Job(job["id"], partial(train_job, job, store),
                        done=partial(_all_stored, store, tuple(pid for _, pid in group)),
                        resources=res.job_bundle(), holds=res.worker_group())
        jobs.update({pid: graph_job for _, pid in group})
    runs_of: dict[tuple[str, str], list[str]] = {}
    for run, pid in planned:
        runs_of.setdefault((run.config.model, get_task(run.config.task).name), []).append(pid)
    return PromptJobs(jobs, runs_of)


def _all_stored(store: Store, prompt_ids: tuple[str, ...]) -> bool:
    return all(store.prompts.has(pid) for pid in prompt_ids)
