"""What the process of every job attempt does first, whoever started it (a graph task, a Tune
trial, a worker of a Ray Train group): ptdist's logger at the driver's level, library chatter
off, torch's threads sized to the CPUs Ray reserved for it, and the attempt marked for failure
rehearsal (`ptdist.faults`)."""

from __future__ import annotations

import logging
import os

from ptdist import logs
from ptdist.faults import reach

log = logging.getLogger(__name__)


def begin(site: str, level: int, in_ray_worker: bool = True) -> None:
    """Prepare this process for an attempt of the job (or worker) ``site``, logging at the
    driver's ``level`` with the job's id on each line; a job that runs in the calling process
    (--local) keeps that process's threads and logger."""
    if in_ray_worker:
        logs.setup(level, job=site)
        size_threads()
    reach(site)


def size_threads() -> None:
    """As many torch intra-op threads as CPUs Ray reserved for this worker process, so the
    jobs on a node never run more compute threads than it has cores. A fractional request (a
    process that only coordinates a worker group) gets one thread."""
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
    torch.set_num_threads(max(1, int(cpus)))
    log.debug(f"process {os.getpid()}: {cpus:g} CPU reserved, {torch.get_num_threads()} torch "
              "thread(s)")
