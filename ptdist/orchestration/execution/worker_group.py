"""Jobs that need several processes (a ZeRO-3 run over 8 GPUs): a Ray Train worker group, one
process group (NCCL on GPUs, gloo on CPUs), every worker running the same function.

A group is placed on one node (``STRICT_PACK``): ZeRO-3 gathers every layer's weights at every
step, and across nodes that traffic would leave the intra-node links for the network. Its
processes meet on that node's address only (`rendezvous.py`).

Ray Train retries nothing here: not a worker failure (``max_failures=0``), not a node
preemption (``max_preemption_failures=0``), and not a group that cannot start
(``controller_failure_limit=0``; by default Train waits for the group's resources again and
again without end). The job that started the group is what the failure policy retries, so
attempts are counted once (`failures.py`). A user error on any worker is raised as itself, so
the policy sees it and does not retry it.

A group that cannot start (no node has room for all its workers: busy, or still being added by
the autoscaler) waits ``start_timeout_s`` for its resources; after ``REPORT_EVERY_S`` without
starting, and again every ``REPORT_EVERY_S``, the job says so in its log (which Ray forwards to
the driver), and when the wait is over its attempt fails with an error that says why.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ptdist import logs
from ptdist.errors import PtdistError
from ptdist.orchestration.execution.attempt import begin
from ptdist.orchestration.execution.failures import user_error
from ptdist.orchestration.planning.resources import describe
from ptdist.orchestration.spec.sweep_spec import Resources
from ptdist.store import Store
from ptdist.store.atomic import atomic_write_json
from ptdist.store.layout import segment

log = logging.getLogger(__name__)

# Ray Train's own wait for a group's placement group, read by its controller (which Ray Train
# gives the environment of the process that starts it).
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
# Ray Train sends every `print` of a worker to its root logger as well as to the stream (the
# same environment route): each line then came twice, and what a library captured by swapping
# sys.stdout was printed anyway (datasets' fingerprinting disassembles functions that way: the
# bytecode dumps seen in a ZeRO-3 group's log). ptdist logs through its own logger instead.
PRINT_PATCH_ENV = "RAY_TRAIN_ENABLE_PRINT_PATCH"
REPORT_EVERY_S = 60.0


class GroupNotStarted(RuntimeError):
    """A worker group found no room within its wait: retried under the policy (a busy cluster
    may have room later), not a user error."""


def on_worker_group(job_id: str, fn: Callable[..., Any], kwargs: dict[str, Any],
                    resources: Resources, store: Store) -> dict | None:
    """Run ``fn(**kwargs)`` on ``resources.workers`` Ray Train workers in one process group,
    on one node. Returns what ``fn`` returned on rank 0 when that is a job's summary (a
    JSON-able dict), else None."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from ptdist.orchestration.execution.rendezvous import BoundTorchConfig

    name = f"{segment(job_id)}-{time.strftime('%Y%m%d-%H%M%S')}"
    started, result = store.layout.group_started(name), store.layout.group_result(name)
    os.environ[START_TIMEOUT_ENV] = f"{resources.start_timeout_s:g}"
    os.environ[PRINT_PATCH_ENV] = "0"
    trainer = TorchTrainer(
        _worker, train_loop_config={"job": job_id, "fn": fn, "kwargs": kwargs,
                                    "started": str(started), "result": str(result),
                                    "log_level": logs.level()},
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers, use_gpu=resources.gpus > 0,
            resources_per_worker=resources.per_worker(), placement_strategy="STRICT_PACK"),
        torch_config=BoundTorchConfig(backend="nccl" if resources.gpus else "gloo"),
        run_config=ray.train.RunConfig(
            name=name, storage_path=store.ray_records("train"),
            logging_config=ray.train.LoggingConfig(
                log_level=logging.getLevelName(logs.library_level())),
            failure_config=ray.train.FailureConfig(max_failures=0, controller_failure_limit=0,
                                                   max_preemption_failures=0)),
    )
    try:
        with _report_while_waiting(started, job_id, resources):
            trainer.fit()
    except Exception as err:
        user = user_error(err)
        if user is not None:
            raise PtdistError(str(user)) from None
        if _start_timed_out(err):
            raise GroupNotStarted(
                f"{job_id}: its worker group did not start within {resources.start_timeout_s:g}"
                f" s (resources.start_timeout_s): no node had room for {_shape(resources)}. "
                "Free or add such a node, or give the group a longer wait") from None
        raise
    return json.loads(result.read_text()) if result.exists() else None


@contextmanager
def _report_while_waiting(started: Path, job_id: str, resources: Resources) -> Iterator[None]:
    """While the block runs, say every `REPORT_EVERY_S` that the group has not started yet."""
    done = threading.Event()

    def watch() -> None:
        waited = 0.0
        while not done.wait(REPORT_EVERY_S):
            waited += REPORT_EVERY_S
            if started.exists():
                return
            log.info(f"[ptdist] {job_id}: its worker group has not started after {waited:g} s: "
                     f"no node has room for {_shape(resources)} yet (busy, or being added by the "
                     f"autoscaler); waiting up to {resources.start_timeout_s:g} s")

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()


def _start_timed_out(err: Exception) -> bool:
    import ray.train
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    return isinstance(err, ray.train.ControllerError) and \
        isinstance(err.controller_failure, WorkerGroupStartupTimeoutError)


def _shape(resources: Resources) -> str:
    return (f"its {resources.workers} workers x {describe(resources.per_worker())} "
            f"({describe(resources.group())} on one node)")


def _worker(config: dict) -> None:
    """What each worker of the group runs."""
    import ray.train

    if ray.train.get_context().get_world_rank() == 0:
        Path(config["started"]).parent.mkdir(parents=True, exist_ok=True)
        Path(config["started"]).touch()
    begin(f"{config['job']}@worker", config["log_level"])
    summary = config["fn"](**config["kwargs"])
    if ray.train.get_context().get_world_rank() == 0 and isinstance(summary, dict):
        atomic_write_json(config["result"], summary)
