"""A dependency graph of jobs run as Ray tasks: each job starts as soon as the jobs it needs
have succeeded, as many at once as the cluster's resources (and ``max_concurrent``) allow.

Jobs are idempotent and keep their outputs in a store: a job whose ``done()`` says its output
is already there is skipped, so re-running a graph after a crash or a failure does only what is
missing. An exception raised by a job is not retried: jobs are deterministic, so a user error
fails the same way every time and a retry would only delay the report. Ray still re-runs a task
whose worker process died (``max_retries``): that is the cluster's failure, not the job's. A
failed job blocks the jobs that need it and nothing else; the caller decides whether that is
fatal (`require_success`).
"""

from __future__ import annotations

import difflib
import graphlib
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ptdist.errors import PtdistError


def _print(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class Job:
    """One unit of work. ``run`` executes in a Ray task (so it must be picklable) once every job
    named in ``needs`` has succeeded, and returns a small JSON-able summary. ``done`` runs on the
    driver before anything is scheduled: True means the output is already stored."""

    id: str
    run: Callable[[], dict]
    needs: tuple[str, ...] = ()
    done: Callable[[], bool] | None = None
    resources: Mapping[str, float] = field(default_factory=lambda: {"CPU": 1.0})


@dataclass
class JobOutcome:
    """What became of one job: "stored" (its output existed; it did not run), "ran", "failed",
    or "blocked" (a job it needs failed). While the graph runs it may be "waiting" or "running".
    ``started`` and ``finished`` are the driver's clock at submission and at completion."""

    id: str
    status: str
    result: dict | None = None
    error: str | None = None
    started: float | None = None
    finished: float | None = None


@dataclass
class GraphOutcome:
    jobs: list[JobOutcome]  # in the order the jobs were given

    @property
    def failed(self) -> list[JobOutcome]:
        """The jobs that did not succeed: failed, or blocked by a failure."""
        return [job for job in self.jobs if job.status in ("failed", "blocked")]

    def outcome(self, job_id: str) -> JobOutcome:
        for job in self.jobs:
            if job.id == job_id:
                return job
        raise KeyError(f"no job {job_id!r} in this graph")


def run_graph(jobs: Sequence[Job], *, max_concurrent: int | None = None, max_retries: int = 2,
              say: Callable[[str], None] = _print) -> GraphOutcome:
    """Run every job that is not stored on the Ray cluster this process has joined, and return
    once each has succeeded, failed or been blocked.

    The whole graph is checked first, so a mistyped need fails now rather than hours into a run.
    ``max_concurrent`` caps the jobs in flight; by default Ray queues them by their resources.
    ``max_retries`` is how often Ray re-runs a job whose worker process died. ``say`` gets one
    short progress line per event."""
    import ray

    _check_graph(jobs)
    if max_concurrent is not None and max_concurrent < 1:
        raise PtdistError(f"max_concurrent must be at least 1, not {max_concurrent}")
    if not ray.is_initialized():
        raise PtdistError("run_graph needs a Ray cluster: call it inside "
                          "ptdist.orchestration.cluster.ray_session")
    return _Schedule(jobs, max_concurrent, max_retries, say).run()


def describe_jobs(jobs: Sequence[Job]) -> str:
    """A dry run's listing: each job, whether its output is stored, what it needs and asks."""
    from ptdist.orchestration.resources import describe

    return "\n".join(f"  {job.id} [{'stored' if job.done and job.done() else 'to run'}] "
                     f"needs {len(job.needs)} job(s), {describe(dict(job.resources))}"
                     for job in jobs)


def require_success(outcome: GraphOutcome) -> None:
    """Raise PtdistError naming every job that failed or was blocked, with its error."""
    if not outcome.failed:
        return
    lines = "".join(f"\n  {job.id}: {job.status}: {job.error}" for job in outcome.failed)
    raise PtdistError(f"{len(outcome.failed)} of {len(outcome.jobs)} jobs did not succeed:"
                      f"{lines}\nThe jobs that finished are kept: re-running the graph runs "
                      "only what is missing.")


def _check_graph(jobs: Sequence[Job]) -> None:
    """Stop before anything runs if some job could never start."""
    ids = [job.id for job in jobs]
    duplicates = sorted(job_id for job_id, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise PtdistError(f"job ids must be unique; given more than once: {', '.join(duplicates)}")
    known = set(ids)
    for job in jobs:
        for need in job.needs:
            if need not in known:
                close = difflib.get_close_matches(need, ids, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise PtdistError(f"job '{job.id}' needs '{need}', which is no job of this "
                                  f"graph{hint}")
    try:
        graphlib.TopologicalSorter({job.id: job.needs for job in jobs}).prepare()
    except graphlib.CycleError as err:
        # graphlib lists each job before the one that needs it; reversed, each needs the next.
        cycle = " -> ".join(reversed(err.args[1]))
        raise PtdistError(f"jobs need each other in a cycle, so none of them can start: "
                          f"{cycle} (each needs the next)") from None


def _run_job(run: Callable[[], dict]) -> dict:
    return run()


def _task_options(resources: Mapping[str, float], max_retries: int) -> dict[str, Any]:
    # Ray takes CPU and GPU as keywords of their own and rejects them among custom resources.
    custom = {name: amount for name, amount in resources.items() if name not in ("CPU", "GPU")}
    return {"num_cpus": resources.get("CPU", 0.0), "num_gpus": resources.get("GPU", 0.0),
            "resources": custom, "max_retries": max_retries, "retry_exceptions": False}


def _one_line(err: Exception) -> str:
    """``Type: message`` on one line. A job's exception reaches the driver wrapped in a
    RayTaskError whose text is the whole remote traceback; its cause is what the job raised."""
    from ray.exceptions import RayTaskError

    shown = err.cause if isinstance(err, RayTaskError) and err.cause is not None else err
    message = " ".join(str(shown).split())
    return f"{type(shown).__name__}: {message}" if message else type(shown).__name__


class _Schedule:
    """One run of a graph: each job's outcome so far, and the Ray task of each running job."""

    def __init__(self, jobs: Sequence[Job], max_concurrent: int | None, max_retries: int,
                 say: Callable[[str], None]):
        import ray

        self.jobs = jobs
        self.max_concurrent = max_concurrent
        self.max_retries = max_retries
        self.say = say
        # max_calls=1: each job gets a fresh worker process, so nothing one job leaves behind
        # (a torch.distributed group, DeepSpeed state, cached GPU memory) reaches the next.
        self.remote = ray.remote(max_calls=1)(_run_job)
        self.outcomes = {job.id: JobOutcome(job.id, "stored" if job.done and job.done()
                                            else "waiting") for job in jobs}
        self.running: dict[Any, Job] = {}  # Ray ObjectRef -> job

    def run(self) -> GraphOutcome:
        counts = self._counts()
        if counts["waiting"]:
            self.say(f"graph: {len(self.jobs)} jobs, {counts['stored']} already stored, "
                     f"{counts['waiting']} to run")
            self._run_waiting()
        else:
            self.say(f"nothing to run: all {len(self.jobs)} jobs are already stored")
        return GraphOutcome(list(self.outcomes.values()))

    def _run_waiting(self) -> None:
        import ray

        began = time.time()
        self._submit_ready()
        while self.running:
            [ref], _ = ray.wait(list(self.running), num_returns=1)
            self._finish(ref)
            self._submit_ready()
        counts = self._counts()
        self.say(f"graph finished in {time.time() - began:.1f}s: {counts['ran']} ran, "
                 f"{counts['stored']} stored, {counts['failed']} failed, "
                 f"{counts['blocked']} blocked")

    def _submit_ready(self) -> None:
        for job in self.jobs:
            if self.max_concurrent is not None and len(self.running) >= self.max_concurrent:
                return
            if self.outcomes[job.id].status == "waiting" and all(
                    self.outcomes[need].status in ("stored", "ran") for need in job.needs):
                self._submit(job)

    def _submit(self, job: Job) -> None:
        options = _task_options(job.resources, self.max_retries)
        self.running[self.remote.options(**options).remote(job.run)] = job
        outcome = self.outcomes[job.id]
        outcome.status, outcome.started = "running", time.time()
        self.say(f"start {job.id}")

    def _finish(self, ref: Any) -> None:
        import ray
        from ray.exceptions import RayError

        outcome = self.outcomes[self.running.pop(ref).id]
        outcome.finished = time.time()
        seconds = outcome.finished - outcome.started
        try:
            outcome.result = ray.get(ref)
        except RayError as err:
            outcome.status, outcome.error = "failed", _one_line(err)
            blocked = self._block_dependents(outcome.id)
            self.say(f"failed {outcome.id} after {seconds:.1f}s: {outcome.error} "
                     f"{self._progress()}")
            for job in blocked:
                self.say(f"blocked {job.id}: {job.error}")
            return
        outcome.status = "ran"
        self.say(f"done {outcome.id} in {seconds:.1f}s {self._progress()}")

    def _block_dependents(self, failed: str) -> list[JobOutcome]:
        """Block every waiting job that needs ``failed``, directly or through other jobs."""
        blocked: list[JobOutcome] = []
        lost = deque([failed])
        while lost:
            lost_id = lost.popleft()
            for job in self.jobs:
                outcome = self.outcomes[job.id]
                if lost_id in job.needs and outcome.status == "waiting":
                    outcome.status, outcome.error = "blocked", f"waits for {failed}, which failed"
                    blocked.append(outcome)
                    lost.append(job.id)
        return blocked

    def _counts(self) -> Counter[str]:
        return Counter(outcome.status for outcome in self.outcomes.values())

    def _progress(self) -> str:
        counts = self._counts()
        finished = len(self.jobs) - counts["waiting"] - counts["running"]
        return (f"[{finished}/{len(self.jobs)} finished, {counts['running']} running, "
                f"{counts['waiting']} waiting]")
