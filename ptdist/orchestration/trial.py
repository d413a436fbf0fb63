"""Sweep jobs inside Ray Tune trials (or graph jobs): one run, or a pack of runs that share a
backbone (`ptdist.training.packed`).

A one-worker job trains in the trial's own process, on the CPUs and GPU Ray reserved for it. A
job with more workers starts a Ray Train worker group from the trial; every worker runs the same
DeepSpeed recipe, in one process group that Ray Train sets up. Either way a worker that dies is
restarted by Ray (Tune's or Train's failure config) and each run resumes from its last
checkpoint in the store, so it ends where an uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from ptdist.errors import PtdistError
from ptdist.orchestration.spec import Resources, RunSpec
from ptdist.training.config import TrainConfig
from ptdist.training.packed import SHARED

# Tune requires a non-empty bundle per trial. A multi-worker trial only coordinates (its Ray
# Train workers hold the real resources), so it reserves a sliver of a CPU.
COORDINATOR_CPU = 0.05

Planned = tuple[RunSpec, str]  # a run and its prompt id


def pack_runs(runs: list[Planned]) -> list[list[Planned]]:
    """The runs grouped into jobs: in order, each run joins the last open job of runs that can
    share its backbone (same resources and `SHARED` settings) until that job holds the run's
    ``pack`` runs. With ``pack`` 1 every run is its own job."""
    jobs: list[list[Planned]] = []
    open_jobs: dict[tuple, list[Planned]] = {}
    for run, prompt_id in runs:
        key = (run.resources, run.pack, *(getattr(run.config, name) for name in SHARED))
        job = open_jobs.get(key)
        if job is None or len(job) >= run.pack:
            job = open_jobs[key] = []
            jobs.append(job)
        job.append((run, prompt_id))
    return jobs


def job_to_dict(job: list[Planned]) -> dict:
    """A job as data a Ray task or trial carries: its runs, a name and a label."""
    first, prompt_id = job[0]
    return {"runs": [{"config": run.config.to_dict(), "label": run.label, "prompt_id": pid}
                     for run, pid in job],
            "id": prompt_id if len(job) == 1 else f"pack-{prompt_id}+{len(job) - 1}",
            "label": first.label if len(job) == 1 else
            f"pack of {len(job)} runs of {first.config.model}",
            "resources": asdict(first.resources)}


def job_bundle(resources: Resources) -> dict[str, float]:
    """What the process that runs a job reserves: its one worker's bundle, or, when the job
    starts a worker group (which reserves the real resources), a coordinator's sliver."""
    return resources.per_worker() if resources.workers == 1 else {"CPU": COORDINATOR_CPU}


def trial_resources(trial_config: dict):
    """The placement group of a trial."""
    from ray import tune

    return tune.PlacementGroupFactory([job_bundle(Resources(**trial_config["job"]["resources"]))])


def run_trial(trial_config: dict) -> None:
    """Tune's function trainable: train the job, report its runs' results once."""
    from ray import tune

    from ptdist.runtime import quiet_libraries

    quiet_libraries()
    try:
        result = {"runs": train_job(trial_config["job"], trial_config["store"],
                                    trial_config["max_failures"])}
    except PtdistError as exc:
        # A user error (a model the node cannot load, data without labels...) fails the same
        # way on every attempt: report it instead of raising, so Ray does not retry it.
        result = {"error": str(exc)}
    tune.report(result)


def train_job(job: dict, store_root: str, max_failures: int) -> dict[str, dict]:
    """Train a job (as `job_to_dict` gives it) from the process Ray placed it in: here for one
    worker, else on a Ray Train worker group. Returns each run's result scalars by prompt id."""
    from ptdist.store.prompts import PromptStore
    from ptdist.training.loop import stored_result

    resources = Resources(**job["resources"])
    if resources.workers == 1:
        results = _train_here([TrainConfig(**run["config"]) for run in job["runs"]],
                              store_root)
    else:
        on_worker_group(_worker_loop, {"configs": [run["config"] for run in job["runs"]],
                                       "store": store_root},
                        resources, job["id"], store_root, max_failures)
        # Rank 0 stored every prompt and its manifest; whether the group was restarted (and
        # from which step each run resumed) is recorded there.
        store = PromptStore(store_root)
        results = [stored_result(store, run["prompt_id"], skipped=False) for run in job["runs"]]
    # The learning curve is in each prompt's manifest; a job reports scalars.
    return {r.prompt_id: {k: v for k, v in r.to_dict().items() if k != "history"}
            for r in results}


def _train_here(configs: list[TrainConfig], store_root: str) -> list:
    from ptdist.store.prompts import PromptStore
    from ptdist.training import train
    from ptdist.training.packed import train_packed

    store = PromptStore(store_root)
    return [train(configs[0], store)] if len(configs) == 1 else train_packed(configs, store)


def _worker_loop(loop_config: dict) -> None:
    """What each Ray Train worker runs: the same recipe, in Ray Train's process group."""
    from ptdist.runtime import quiet_libraries

    quiet_libraries()
    _train_here([TrainConfig(**c) for c in loop_config["configs"]], loop_config["store"])


def on_worker_group(loop: Callable[[dict], None], loop_config: dict, resources: Resources,
                    name: str, store_root: str, max_failures: int) -> None:
    """Run ``loop(loop_config)`` on ``resources.workers`` Ray Train workers in one process
    group (NCCL on GPUs, gloo on CPUs); raises once the group failed more than
    ``max_failures`` times (each restart resumes from the store's checkpoint)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        loop, train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers, use_gpu=resources.gpus > 0,
            resources_per_worker=resources.per_worker()),
        torch_config=TorchConfig(backend="nccl" if resources.gpus else "gloo"),
        run_config=ray.train.RunConfig(
            name=name, storage_path=f"{store_root}/ray/train",
            failure_config=ray.train.FailureConfig(max_failures=max_failures)),
    )
    trainer.fit()
