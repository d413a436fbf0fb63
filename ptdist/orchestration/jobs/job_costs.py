"""What a study's jobs cost: the driver records each job as it finishes (`JobCostRow`, in
`StoreLayout.job_costs`), so the report, which runs last, can say where the time went."""

from __future__ import annotations

import os

from ptdist.orchestration.execution.graph import Job, JobOutcome
from ptdist.store import Store
from ptdist.store.results import JobCostRow
from ptdist.store.tables import read_records, write_records


def stage_of(job_id: str) -> str:
    """The stage a job belongs to: the first word of its id (a pack is prompt tuning)."""
    stage = job_id.split(" ", 1)[0]
    return "prompt" if stage == "pack" else stage


class CostLedger:
    """A graph's ``finished`` callback: keeps the latest record of every job of a study."""

    def __init__(self, store: Store, study: str):
        self.path = store.layout.job_costs(study)
        self.rows = {r.job: r for r in read_records(self.path, JobCostRow)} \
            if self.path.exists() else {}

    def __call__(self, job: Job, outcome: JobOutcome) -> None:
        result = outcome.result or {}
        self.rows[job.id] = JobCostRow(
            job=job.id, stage=stage_of(job.id), status=outcome.status,
            attempts=outcome.attempts, cpus=float(job.resources.get("CPU", 0.0)),
            gpus=float(job.resources.get("GPU", 0.0)), cores=_cores(),
            wall_s=outcome.wall_s, cpu_s=outcome.cpu_s, examples=result.get("examples"),
            started=outcome.started or outcome.finished, finished=outcome.finished)
        write_records(self.path, JobCostRow, list(self.rows.values()))


def _cores() -> float:
    """The CPUs of the Ray cluster the graph runs on, or of this machine (--local)."""
    import ray

    if ray.is_initialized():
        return float(ray.cluster_resources().get("CPU", 0.0))
    return float(os.cpu_count() or 1)
