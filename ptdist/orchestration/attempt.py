"""What the process of every job attempt does first, whoever started it (a graph task, a Tune
trial, a worker of a Ray Train group): library chatter off, torch's threads sized to the CPUs
Ray reserved for it, and the attempt marked for failure rehearsal (`ptdist.faults`)."""

from __future__ import annotations

from ptdist.faults import reach
from ptdist.runtime import quiet_libraries


def begin(site: str, in_ray_worker: bool = True) -> None:
    """Prepare this process for an attempt of the job (or worker) ``site``; a job that runs
    in the calling process (--local) keeps that process's threads."""
    quiet_libraries()
    if in_ray_worker:
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
