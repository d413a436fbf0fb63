"""One sweep run inside a Ray Tune trial.

A one-worker run trains in the trial's own process, on the CPUs and GPU Ray reserved for it. A
run with more workers starts a Ray Train worker group from the trial; every worker runs the same
DeepSpeed recipe, in one process group that Ray Train sets up. Either way a worker that dies is
restarted by Ray (Tune's or Train's failure config) and `train` resumes from the run's last
checkpoint in the store, so the run ends where an uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from ptdist.errors import PtdistError
from ptdist.orchestration.spec import Resources, RunSpec
from ptdist.training.config import TrainConfig

# Tune requires a non-empty bundle per trial. A multi-worker trial only coordinates (its Ray
# Train workers hold the real resources), so it reserves a sliver of a CPU.
COORDINATOR_CPU = 0.05


def run_to_dict(run: RunSpec, prompt_id: str) -> dict:
    return {"config": run.config.to_dict(), "resources": asdict(run.resources),
            "label": run.label, "prompt_id": prompt_id}


def run_from_dict(data: dict) -> RunSpec:
    return RunSpec(TrainConfig(**data["config"]), Resources(**data["resources"]))


def run_bundle(resources: Resources) -> dict[str, float]:
    """What the process that runs a job reserves: its one worker's bundle, or, when the job
    starts a worker group (which reserves the real resources), a coordinator's sliver."""
    return resources.per_worker() if resources.workers == 1 else {"CPU": COORDINATOR_CPU}


def trial_resources(trial_config: dict):
    """The placement group of a trial."""
    from ray import tune

    return tune.PlacementGroupFactory([run_bundle(run_from_dict(trial_config["run"]).resources)])


def run_trial(trial_config: dict) -> None:
    """Tune's function trainable: train the run, report its result once."""
    from ray import tune

    from ptdist.runtime import quiet_libraries

    quiet_libraries()
    try:
        result = train_run(trial_config["run"], trial_config["store"],
                           trial_config["max_failures"])
    except PtdistError as exc:
        # A user error (a model the node cannot load, data without labels...) fails the same
        # way on every attempt: report it instead of raising, so Ray does not retry it.
        result = {"error": str(exc)}
    tune.report(result)


def train_run(run_dict: dict, store_root: str, max_failures: int) -> dict:
    """Train one run (as `run_to_dict` gives it) from the process Ray placed it in: here for
    one worker, else on a Ray Train worker group. Returns the result's scalars."""
    run = run_from_dict(run_dict)
    if run.resources.workers == 1:
        return _train_here(run.config, store_root)
    from ptdist.store.prompts import PromptStore
    from ptdist.training.loop import stored_result

    on_worker_group(_worker_loop, {"config": run.config.to_dict(), "store": store_root},
                    run.resources, run_dict["prompt_id"], store_root, max_failures)
    # Rank 0 wrote the prompt and its manifest; whether the group was restarted (and from which
    # step it resumed) is recorded there.
    return _scalars(stored_result(PromptStore(store_root), run_dict["prompt_id"], skipped=False))


def _train_here(config: TrainConfig, store_root: str) -> dict:
    from ptdist.store.prompts import PromptStore
    from ptdist.training import train

    return _scalars(train(config, PromptStore(store_root)))


def _scalars(result) -> dict:
    # The learning curve is in the prompt's manifest; a trial reports scalars.
    return {k: v for k, v in result.to_dict().items() if k != "history"}


def _worker_loop(loop_config: dict) -> None:
    """What each Ray Train worker runs: the same recipe, in Ray Train's process group."""
    from ptdist.runtime import quiet_libraries

    quiet_libraries()
    _train_here(TrainConfig(**loop_config["config"]), loop_config["store"])


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
