"""A dependency graph of jobs: each job starts as soon as the jobs it needs have succeeded, on
Ray (as many at once as the cluster's resources and ``max_concurrent`` allow) or, with
``local``, one after another in this process.

Jobs are idempotent and keep their outputs in the store: a job whose ``done()`` says its output
is already there is skipped, so re-running a graph after a crash does only what is missing.
Failures follow the one policy of `failures.py`: a user error fails the job at once, anything
else (an exception, a dead worker) is retried up to ``max_failures`` times; the driver counts the
attempts. A failed job blocks the jobs that need it and nothing else; the caller decides whether
that is fatal (`require_success`).

A job may also be a *plan*: a job whose work can only be named once its inputs exist (a TPT
comparison needs its source prompts' content to know its runs). When its needs are met, the
driver calls ``plan()``, which returns the jobs that do the work; the one among them with the
plan's own id takes its place, so the jobs that need the plan wait for it.
"""

from __future__ import annotations

import difflib
import graphlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ptdist import logs
from ptdist.errors import PtdistError
from ptdist.orchestration.execution.attempt import begin
from ptdist.orchestration.execution.failures import FailurePolicy, one_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One unit of work. ``run`` executes in a Ray task (so it must be picklable) once every job
    named in ``needs`` has succeeded, and returns a small JSON-able summary. ``done`` runs on the
    driver before anything is scheduled: True means the output is already stored. A job with
    ``plan`` instead of ``run`` is a plan (see the module's docstring)."""

    id: str
    run: Callable[[], dict] | None = None
    needs: tuple[str, ...] = ()
    done: Callable[[], bool] | None = None
    resources: Mapping[str, float] = field(default_factory=lambda: {"CPU": 1.0})
    plan: Callable[[], list["Job"]] | None = None
    # A job that leaves nothing behind (no process group, no DeepSpeed state) may run in a
    # CPU worker process an earlier such job used, and skip the imports a fresh one pays.
    reuse_process: bool = False
    # Everything the job holds while it runs, when more than its own bundle (`resources`): a
    # worker group's workers, which reserve their own resources.
    holds: Mapping[str, float] | None = None

    def stored(self) -> bool:
        return self.done is not None and self.done()


@dataclass
class JobOutcome:
    """What became of one job: "stored" (its output existed; it did not run), "ran", "failed",
    or "blocked" (a job it needs failed). While the graph runs it may be "waiting" or "running".
    ``started`` and ``finished`` are the driver's clock at the first submission and at the end;
    ``attempts`` counts the attempts it was given."""

    id: str
    status: str
    result: dict | None = None
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    attempts: int = 0
    wall_s: float | None = None  # of the attempt that succeeded, measured where it ran
    cpu_s: float | None = None  # CPU time of that attempt's process, all its threads


@dataclass
class GraphOutcome:
    jobs: list[JobOutcome]  # in the order the jobs were given; the jobs of a plan at the end

    @property
    def failed(self) -> list[JobOutcome]:
        """The jobs that did not succeed: failed, or blocked by a failure."""
        return [job for job in self.jobs if job.status in ("failed", "blocked")]

    def outcome(self, job_id: str) -> JobOutcome:
        for job in self.jobs:
            if job.id == job_id:
                return job
        raise KeyError(f"no job {job_id!r} in this graph")


Finished = Callable[[Job, JobOutcome], None]  # told of every job that ran or failed


def run_graph(jobs: Sequence[Job], *, policy: FailurePolicy, local: bool = False,
              max_concurrent: int | None = None, say: Callable[[str], None] = log.info,
              finished: Finished | None = None) -> GraphOutcome:
    """Run every job that is not stored and return once each has succeeded, failed or been
    blocked. On Ray (the cluster this process joined: `cluster.ray_session`) unless ``local``.

    The whole graph is checked first, so a mistyped need fails now rather than hours into a run.
    ``max_concurrent`` caps the jobs in flight; by default Ray queues them by their resources.
    ``say`` gets one short progress line per event; ``finished`` is called on the driver for
    each job that ran or failed, before any job that needs it starts."""
    _check_graph(jobs)
    if max_concurrent is not None and max_concurrent < 1:
        raise PtdistError(f"max_concurrent must be at least 1, not {max_concurrent}")
    executor = _LocalExecutor() if local else _RayExecutor()
    return _Schedule(jobs, policy, executor, 1 if local else max_concurrent, say,
                     finished or (lambda job, outcome: None)).run()


def describe_jobs(jobs: Sequence[Job]) -> str:
    """A dry run's listing: each job, whether its output is stored, what it needs and asks."""
    from ptdist.orchestration.planning.resources import describe

    def state(job: Job) -> str:
        if job.stored():
            return "stored"
        return "to plan: its runs are named once its inputs are stored" if job.plan \
            else "to run"

    def holds(job: Job) -> str:
        if job.holds is None:
            return describe(dict(job.resources))
        return f"{describe(dict(job.holds))} (a worker group on one node)"

    return "\n".join(f"  {job.id} [{state(job)}] needs {len(job.needs)} job(s), {holds(job)}"
                     for job in jobs)


def require_success(outcome: GraphOutcome) -> None:
    """Raise PtdistError naming every job that failed or was blocked, with its error."""
    if not outcome.failed:
        return
    lines = "".join(f"\n  {job.id}: {job.status}: {job.error}" for job in outcome.failed)
    raise PtdistError(f"{len(outcome.failed)} of {len(outcome.jobs)} jobs did not succeed:"
                      f"{lines}\nThe jobs that finished are kept: re-running the graph runs "
                      "only what is missing.")


def _check_graph(jobs: Sequence[Job], known: Sequence[str] = ()) -> None:
    """Stop before anything runs if some job could never start (``known``: ids of jobs that
    are already in the graph)."""
    ids = [job.id for job in jobs]
    duplicates = sorted(job_id for job_id, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise PtdistError(f"job ids must be unique; given more than once: {', '.join(duplicates)}")
    every = set(ids) | set(known)
    for job in jobs:
        if (job.run is None) == (job.plan is None):
            raise ValueError(f"job '{job.id}' needs exactly one of run and plan")
        for need in job.needs:
            if need not in every:
                close = difflib.get_close_matches(need, sorted(every), n=1)
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


def _attempt(job_id: str, run: Callable[[], dict], level: int,
             in_ray_worker: bool = True) -> tuple[dict, float, float]:
    """One attempt of a job, in the process that runs it (logging at the driver's ``level``):
    its result, and the wall and CPU seconds it took there."""
    begin(job_id, level, in_ray_worker)
    wall, cpu = time.time(), time.process_time()
    result = run()
    return result, time.time() - wall, time.process_time() - cpu


def _attempt_in_a_used_process(job_id: str, run: Callable[[], dict],
                               level: int) -> tuple[dict, float, float]:
    """`_attempt`, as a Ray task of its own so its workers may be reused (Ray sets how often a
    worker is reused per remote function, not per call)."""
    return _attempt(job_id, run, level)


class _RayExecutor:
    """Each attempt is a Ray task in a fresh worker process (``max_calls=1``), so nothing one
    job leaves behind (a torch.distributed group, DeepSpeed state, cached GPU memory) reaches
    the next; a job that leaves nothing behind may reuse a CPU worker. Ray itself retries
    nothing: the driver applies the failure policy."""

    def __init__(self):
        import ray

        if not ray.is_initialized():
            raise PtdistError("run_graph needs a Ray cluster: call it inside ptdist."
                              "orchestration.execution.cluster.ray_session, or pass local=True")
        self.fresh = ray.remote(max_calls=1)(_attempt)
        self.reused = ray.remote(max_calls=0)(_attempt_in_a_used_process)
        self.pending: dict[Any, str] = {}

    def submit(self, job: Job) -> None:
        custom = {k: v for k, v in job.resources.items() if k not in ("CPU", "GPU")}
        # A GPU job always gets a fresh process: one that ends releases its cached memory.
        reuse = job.reuse_process and not job.resources.get("GPU")
        ref = (self.reused if reuse else self.fresh).options(
            num_cpus=job.resources.get("CPU", 0.0), num_gpus=job.resources.get("GPU", 0.0),
            resources=custom, max_retries=0, retry_exceptions=False).remote(
                job.id, job.run, logs.level())
        self.pending[ref] = job.id

    def next_result(self) -> tuple[str, tuple | None, BaseException | None]:
        import ray
        from ray.exceptions import LocalRayletDiedError, RayError

        [ref], _ = ray.wait(list(self.pending), num_returns=1)
        job_id = self.pending.pop(ref)
        try:
            return job_id, ray.get(ref), None
        except LocalRayletDiedError:
            # Every later attempt would fail the same way: no retry can help.
            raise PtdistError("the Ray node this command runs on stopped (its raylet died: "
                              "killed, out of memory, or `ray stop` run elsewhere); the jobs "
                              "that finished are in the store: run the command again to do "
                              "the rest") from None
        except RayError as err:
            return job_id, None, err


class _LocalExecutor:
    """Attempts in this process, one at a time, in submission order."""

    def __init__(self):
        self.queue: deque[Job] = deque()

    @property
    def pending(self) -> deque[Job]:
        return self.queue

    def submit(self, job: Job) -> None:
        self.queue.append(job)

    def next_result(self) -> tuple[str, tuple | None, BaseException | None]:
        job = self.queue.popleft()
        try:
            return job.id, _attempt(job.id, job.run, logs.level(), in_ray_worker=False), None
        except Exception as err:  # the policy decides; KeyboardInterrupt still stops it all
            return job.id, None, err


@dataclass(frozen=True)
class Tally:
    """Where a graph's jobs or a sweep's runs stand, for a progress line: of ``total``, those
    ``done`` (finished well, in this call or found stored), ``running`` and ``failed`` (failed,
    or blocked behind a failure); ``executed``: those that finished in this call, well or not,
    on which the estimate of the time left is measured, ``elapsed_s`` after the start."""

    total: int
    done: int
    running: int
    failed: int
    executed: int
    elapsed_s: float

    @property
    def waiting(self) -> int:
        return self.total - self.done - self.running - self.failed

    @property
    def eta_s(self) -> float | None:
        left = self.waiting + self.running
        return self.elapsed_s / self.executed * left if self.executed and left else None


def progress_line(event: str, tally: Tally, note: str = "") -> str:
    """The one shape of the line that says a job (or run) finished, whatever schedules it: the
    graph here (`ptdist replicate`, `ptdist sweep --local`) or Ray Tune (`ptdist sweep` on Ray,
    `tune_progress.SweepProgress`): ``EVENT [D/T done, R running, F failed, W waiting, Ns, eta
    ~Ns] | NOTE``, the eta once something has finished and while something is left."""
    eta = "" if tally.eta_s is None else f", eta ~{tally.eta_s:.0f}s"
    return (f"{event} [{tally.done}/{tally.total} done, {tally.running} running, "
            f"{tally.failed} failed, {tally.waiting} waiting, {tally.elapsed_s:.0f}s{eta}]"
            + (f" | {note}" if note else ""))


class _Schedule:
    """One run of a graph: each job's outcome so far, and the jobs in flight."""

    def __init__(self, jobs: Sequence[Job], policy: FailurePolicy, executor,
                 max_concurrent: int | None, say: Callable[[str], None], finished: Finished):
        self.jobs = {job.id: job for job in jobs}
        self.policy, self.executor, self.say, self.finished = policy, executor, say, finished
        self.max_concurrent = max_concurrent
        self.outcomes = {job.id: JobOutcome(job.id, "stored" if job.stored() else "waiting")
                         for job in jobs}
        self.began = time.time()

    def run(self) -> GraphOutcome:
        counts = self._counts()
        if counts["waiting"]:
            self.say(f"graph: {len(self.jobs)} jobs, {counts['stored']} already stored, "
                     f"{counts['waiting']} to run")
            self._submit_ready()
            while self.executor.pending:
                self._finish(*self.executor.next_result())
                self._submit_ready()
            counts = self._counts()
            self.say(f"graph finished in {time.time() - self.began:.1f}s: {counts['ran']} ran, "
                     f"{counts['stored']} stored, {counts['failed']} failed, "
                     f"{counts['blocked']} blocked")
        else:
            self.say(f"nothing to run: all {len(self.jobs)} jobs are already stored")
        return GraphOutcome(list(self.outcomes.values()))

    def _ready(self) -> list[Job]:
        return [job for job in self.jobs.values() if self.outcomes[job.id].status == "waiting"
                and all(self.outcomes[n].status in ("stored", "ran") for n in job.needs)]

    def _submit_ready(self) -> None:
        """Submit the jobs whose needs are met, up to the concurrency cap; a plan whose needs
        are met is expanded first, and the jobs it names are considered in turn."""
        expanded = True
        while expanded:
            expanded = False
            for job in self._ready():
                if job.plan is not None:
                    self._expand(job)
                    expanded = True
                    break
                if self.max_concurrent is not None and \
                        len(self.executor.pending) >= self.max_concurrent:
                    return
                self._submit(job)

    def _submit(self, job: Job) -> None:
        outcome = self.outcomes[job.id]
        outcome.attempts += 1
        outcome.status = "running"
        outcome.started = outcome.started or time.time()
        self.executor.submit(job)
        self.say(f"start {job.id}" if outcome.attempts == 1 else
                 f"retry {job.id} (attempt {outcome.attempts} of {self.policy.attempts})")

    def _expand(self, plan: Job) -> None:
        """Replace a plan by the jobs it names now that its inputs are stored."""
        try:
            planned = plan.plan()
            _check_graph(planned, known=[i for i in self.jobs if i != plan.id])
            if plan.id not in {job.id for job in planned}:
                raise ValueError(f"plan '{plan.id}' named no job with its own id")
        except Exception as err:
            self._fail(plan.id, err)
            return
        del self.jobs[plan.id]
        del self.outcomes[plan.id]
        for job in planned:
            self.jobs[job.id] = job
            self.outcomes[job.id] = JobOutcome(job.id, "stored" if job.stored() else "waiting")
        self.say(f"planned {plan.id}: {len(planned) - 1} job(s) "
                 f"({sum(j.stored() for j in planned)} already stored)")

    def _finish(self, job_id: str, attempt: tuple | None, error: BaseException | None) -> None:
        outcome = self.outcomes[job_id]
        seconds = time.time() - outcome.started
        if error is None:
            outcome.status, outcome.finished = "ran", time.time()
            outcome.result, outcome.wall_s, outcome.cpu_s = attempt
            self.finished(self.jobs[job_id], outcome)
            self.say(progress_line(f"done {job_id} in {seconds:.1f}s", self._tally()))
        elif self.policy.retry(error, outcome.attempts):
            outcome.status = "waiting"
            self.say(f"attempt {outcome.attempts} of {job_id} failed: {one_line(error)}")
        else:
            self._fail(job_id, error)

    def _fail(self, job_id: str, error: BaseException) -> None:
        outcome = self.outcomes[job_id]
        outcome.status, outcome.error, outcome.finished = "failed", one_line(error), time.time()
        after = f" after {outcome.attempts} attempt(s)" if outcome.attempts else ""
        blocked = self._block_dependents(job_id)
        if job_id in self.jobs:
            self.finished(self.jobs[job_id], outcome)
        self.say(progress_line(f"failed {job_id}{after}: {outcome.error}", self._tally()))
        for job in blocked:
            self.say(f"blocked {job.id}: {job.error}")

    def _block_dependents(self, failed: str) -> list[JobOutcome]:
        """Block every waiting job that needs ``failed``, directly or through other jobs."""
        blocked: list[JobOutcome] = []
        lost = deque([failed])
        while lost:
            lost_id = lost.popleft()
            for job in self.jobs.values():
                outcome = self.outcomes[job.id]
                if lost_id in job.needs and outcome.status == "waiting":
                    outcome.status, outcome.error = "blocked", f"waits for {failed}, which failed"
                    blocked.append(outcome)
                    lost.append(job.id)
        return blocked

    def _counts(self) -> Counter[str]:
        return Counter(outcome.status for outcome in self.outcomes.values())

    def _tally(self) -> Tally:
        counts = self._counts()
        return Tally(total=len(self.jobs), done=counts["stored"] + counts["ran"],
                     running=counts["running"], failed=counts["failed"] + counts["blocked"],
                     executed=counts["ran"] + counts["failed"],
                     elapsed_s=time.time() - self.began)


@dataclass(frozen=True)
class Execution:
    """Where a command's jobs run, the same for every command: on Ray (the cluster at
    ``address`` or $RAY_ADDRESS, else a local Ray started for the command) or, with ``local``,
    one after another in this process; and the failure policy they run under.
    ``ignore_memory_plan`` launches runs the memory planner says do not fit their GPU
    (`ptdist.orchestration.planning.plans.check_plans`), for those who know better."""

    local: bool = False
    address: str | None = None
    max_concurrent: int | None = None
    max_failures: int = FailurePolicy.max_failures
    ignore_memory_plan: bool = False

    @property
    def policy(self) -> FailurePolicy:
        return FailurePolicy(self.max_failures)


def execute(jobs: Sequence[Job], execution: Execution,
            finished: Finished | None = None) -> GraphOutcome:
    """Run a graph of jobs where ``execution`` says (``finished``: see `run_graph`)."""
    from ptdist.orchestration.execution.cluster import ray_session

    if execution.local:
        return run_graph(jobs, policy=execution.policy, local=True, finished=finished)
    with ray_session(execution.address) as where:
        log.info(f"running on {where}")
        return run_graph(jobs, policy=execution.policy, max_concurrent=execution.max_concurrent,
                         finished=finished)
