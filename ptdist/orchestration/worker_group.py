"""Jobs that need several processes (a ZeRO-3 run over 8 GPUs): a Ray Train worker group, one
process group (NCCL on GPUs, gloo on CPUs), every worker running the same function.

Ray Train retries nothing here (``max_failures=0``): the job that started the group is what
the failure policy retries, so attempts are counted once (`failures.py`). A user error on any
worker is raised as itself, so the policy sees it and does not retry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ptdist.errors import PtdistError
from ptdist.orchestration.failures import user_error
from ptdist.orchestration.attempt import begin
from ptdist.orchestration.spec import Resources
from ptdist.store import Store
from ptdist.store.layout import segment


def on_worker_group(job_id: str, fn: Callable[..., Any], kwargs: dict[str, Any],
                    resources: Resources, store: Store) -> None:
    """Run ``fn(**kwargs)`` on ``resources.workers`` Ray Train workers in one process group."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        _worker, train_loop_config={"job": job_id, "fn": fn, "kwargs": kwargs},
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers, use_gpu=resources.gpus > 0,
            resources_per_worker=resources.per_worker()),
        torch_config=TorchConfig(backend="nccl" if resources.gpus else "gloo"),
        run_config=ray.train.RunConfig(
            name=f"{segment(job_id)}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(store.layout.ray_dir("train")),
            failure_config=ray.train.FailureConfig(max_failures=0)),
    )
    try:
        trainer.fit()
    except Exception as err:
        user = user_error(err)
        if user is not None:
            raise PtdistError(str(user)) from None
        raise


def _worker(config: dict) -> None:
    """What each worker of the group runs."""
    begin(f"{config['job']}@worker")
    config["fn"](**config["kwargs"])
