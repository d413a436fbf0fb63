"""The job graph on a real local Ray and in this process: order of dependencies, resuming from
stored outputs, the failure policy (user errors never retried, other errors and dead workers
retried up to max_failures), failures that block only their dependents, plans, graph
validation, concurrency and resources.

Jobs run in Ray worker processes, so they talk to the test through files: each job checks its
inputs' files exist, appends its id to runs.log and writes ``<id>.out`` holding the times it
started and ended."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ptdist.errors import PtdistError
from ptdist.orchestration.execution.failures import FailurePolicy
from ptdist.orchestration.execution.graph import Job, require_success, run_graph as _run_graph
from ptdist.runtime import ray_environment
from tests.test_progress_line import progress_fields

ONCE = FailurePolicy(max_failures=0)


def run_graph(jobs, policy: FailurePolicy = ONCE, **kwargs):
    """The graph with no retries unless a test asks for them."""
    return _run_graph(jobs, policy=policy, **kwargs)

CHAIN = {"a": (), "b": ("a",), "c": ("b",), "d": ()}


@pytest.fixture(scope="module")
def ray_local():
    ray_environment()
    import ray

    # "probe" is a custom resource, to see custom resources reach the task.
    ray.init(address="local", num_cpus=2, resources={"probe": 1}, _node_ip_address="127.0.0.1",
             include_dashboard=False)
    yield
    ray.shutdown()


MEET_S = 120  # how long a job waits for the jobs it must meet


@dataclass(frozen=True)
class Write:
    """A job's run: fails if an input is missing, logs that it ran, writes its output."""

    folder: str
    name: str
    inputs: tuple[str, ...] = ()
    seconds: float = 0.0
    error: str | None = None
    user_error: bool = False
    meet: tuple[str, ...] = ()  # jobs that must start while this one runs

    def __call__(self) -> dict:
        folder = Path(self.folder)
        missing = [name for name in self.inputs if not (folder / f"{name}.out").exists()]
        if missing:
            raise RuntimeError(f"{self.name} started before {missing} finished")
        with open(folder / "runs.log", "a") as log:
            log.write(f"{self.name}\n")
        started = time.time()
        while not set(self.meet) <= set(runs(folder)):
            if time.time() - started > MEET_S:
                raise RuntimeError(f"{self.name} ran {MEET_S} s without {self.meet} starting")
            time.sleep(0.05)
        time.sleep(self.seconds)
        if self.error:
            raise (PtdistError if self.user_error else ValueError)(self.error)
        (folder / f"{self.name}.out").write_text(f"{started} {time.time()}")
        return {"name": self.name}


def assigned_resources() -> dict:
    import ray

    return ray.get_runtime_context().get_assigned_resources()


@dataclass(frozen=True)
class Die:
    """A job's run whose first ``times`` attempts kill their worker process, as a lost node
    or the out-of-memory killer would."""

    folder: str
    times: int = 1

    def __call__(self) -> dict:
        log = Path(self.folder) / "attempts"
        with open(log, "a") as f:
            f.write("attempt\n")
        if len(log.read_text().split()) <= self.times:
            os._exit(1)
        return {"survived": True}


def job(folder: Path, name: str, needs: tuple[str, ...] = (), **write) -> Job:
    return Job(name, Write(str(folder), name, needs, **write), needs,
               done=lambda: (folder / f"{name}.out").exists())


def chain(folder: Path, fail: str | None = None) -> list[Job]:
    """a -> b -> c, and d on its own; ``fail`` raises ValueError("boom")."""
    return [job(folder, name, needs, error="boom" if name == fail else None)
            for name, needs in CHAIN.items()]


def runs(folder: Path) -> list[str]:
    log = folder / "runs.log"
    return log.read_text().split() if log.exists() else []


def interval(folder: Path, name: str) -> tuple[float, float]:
    started, ended = (folder / f"{name}.out").read_text().split()
    return float(started), float(ended)


def statuses(outcome) -> dict[str, str]:
    return {job.id: job.status for job in outcome.jobs}


def test_runs_each_job_once_after_what_it_needs(ray_local, tmp_path):
    lines: list[str] = []
    outcome = run_graph(chain(tmp_path), say=lines.append)

    assert statuses(outcome) == dict.fromkeys(CHAIN, "ran")
    assert sorted(runs(tmp_path)) == sorted(CHAIN)
    for name, needs in CHAIN.items():
        assert outcome.outcome(name).result == {"name": name}
        for need in needs:
            assert outcome.outcome(name).started >= outcome.outcome(need).finished
    assert lines[0] == "graph: 4 jobs, 0 already stored, 4 to run"
    assert "start c" in lines
    assert any(line.startswith("done c in ") for line in lines)
    last = progress_fields(lines[-2])
    assert (last["done"], last["total"], last["running"], last["failed"], last["waiting"],
            last["eta"]) == (4, 4, 0, 0, 0, None)
    assert lines[-1].startswith("graph finished in ") and "4 ran, 0 stored" in lines[-1]
    require_success(outcome)


def test_rerun_runs_nothing_when_every_output_is_stored(ray_local, tmp_path):
    run_graph(chain(tmp_path), say=lambda line: None)
    lines: list[str] = []
    outcome = run_graph(chain(tmp_path), say=lines.append)

    assert statuses(outcome) == dict.fromkeys(CHAIN, "stored")
    assert outcome.outcome("a").started is None
    assert len(runs(tmp_path)) == len(CHAIN)
    assert lines == ["nothing to run: all 4 jobs are already stored"]


def test_rerun_runs_only_the_missing_job(ray_local, tmp_path):
    run_graph(chain(tmp_path), say=lambda line: None)
    (tmp_path / "c.out").unlink()
    outcome = run_graph(chain(tmp_path), say=lambda line: None)

    assert statuses(outcome) == {"a": "stored", "b": "stored", "c": "ran", "d": "stored"}
    assert runs(tmp_path)[len(CHAIN):] == ["c"]


def test_failure_blocks_dependents_only_and_is_not_retried(ray_local, tmp_path):
    lines: list[str] = []
    outcome = run_graph(chain(tmp_path, fail="b"), say=lines.append)

    assert statuses(outcome) == {"a": "ran", "b": "failed", "c": "blocked", "d": "ran"}
    assert outcome.outcome("b").error == "ValueError: boom"
    assert "b" in outcome.outcome("c").error
    assert runs(tmp_path).count("b") == 1
    assert "start c" not in lines
    failed_at = next(i for i, line in enumerate(lines) if line.startswith("failed b after "))
    at_failure = progress_fields(lines[failed_at])
    assert at_failure["event"].endswith("ValueError: boom")
    # c is blocked (counted as failed) before the line is said
    assert (at_failure["failed"], at_failure["waiting"]) == (2, 0)
    assert lines[failed_at + 1] == "blocked c: waits for b, which failed"
    assert [job.id for job in outcome.failed] == ["b", "c"]
    with pytest.raises(PtdistError, match="2 of 4 jobs") as raised:
        require_success(outcome)
    assert "\n  b: failed: ValueError: boom" in str(raised.value)
    assert "\n  c: blocked: waits for b" in str(raised.value)
    assert "re-running" in str(raised.value)


def test_a_job_blocked_through_another_names_the_failed_job(ray_local, tmp_path):
    outcome = run_graph(chain(tmp_path, fail="a"), say=lambda line: None)

    assert statuses(outcome) == {"a": "failed", "b": "blocked", "c": "blocked", "d": "ran"}
    assert outcome.outcome("c").error == "waits for a, which failed"


@pytest.mark.parametrize("jobs, message", [
    ([("a", ()), ("b", ()), ("a", ())], "given more than once: a"),
    ([("prompt roberta-base", ()), ("project", ("prompt roberta-bse",))],
     "'project' needs 'prompt roberta-bse'.*did you mean 'prompt roberta-base'"),
    ([("a", ("c",)), ("b", ("a",)), ("c", ("b",)), ("d", ())], "cycle.*a -> c -> b -> a"),
    ([("a", ("a",))], "cycle.*a -> a"),
])
def test_invalid_graph_fails_before_anything_runs(tmp_path, jobs, message):
    checked: list[str] = []
    graph = [Job(name, Write(str(tmp_path), name), needs, done=lambda: checked.append("done"))
             for name, needs in jobs]
    with pytest.raises(PtdistError, match=message):
        run_graph(graph, say=checked.append)
    assert checked == []


def test_needs_a_ray_session(tmp_path, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(PtdistError, match="ray_session"):
        run_graph([job(tmp_path, "a")])


def test_max_concurrent_runs_one_at_a_time_in_the_given_order(ray_local, tmp_path):
    names = ["z", "x", "y"]
    outcome = run_graph([job(tmp_path, name, seconds=0.3) for name in names], max_concurrent=1,
                        say=lambda line: None)

    assert statuses(outcome) == dict.fromkeys(names, "ran")
    spans = [interval(tmp_path, name) for name in names]
    assert all(ended <= started for (_, ended), (started, _) in zip(spans, spans[1:]))


def test_independent_jobs_run_in_parallel(ray_local, tmp_path):
    """Each job waits for the other to start: run one after the other, the first would fail
    after MEET_S, however slow the machine is to start the second."""
    graph = [job(tmp_path, name, meet=(other,)) for name, other in (("x", "y"), ("y", "x"))]
    outcome = run_graph(graph, say=lambda line: None)

    assert statuses(outcome) == {"x": "ran", "y": "ran"}
    (x_start, x_end), (y_start, y_end) = interval(tmp_path, "x"), interval(tmp_path, "y")
    assert max(x_start, y_start) < min(x_end, y_end)


def test_resources_reach_the_task(ray_local):
    asked = {"one": {"CPU": 1.0}, "two": {"CPU": 2.0}, "probe": {"CPU": 1.0, "probe": 1.0}}
    outcome = run_graph([Job(name, assigned_resources, resources=resources)
                         for name, resources in asked.items()], say=lambda line: None)

    assert {job.id: job.result for job in outcome.jobs} == asked


@pytest.mark.parametrize("local", [False, True], ids=["ray", "local"])
def test_an_error_is_attempted_max_failures_plus_one_times(ray_local, tmp_path, local):
    lines: list[str] = []
    outcome = run_graph(chain(tmp_path, fail="b"), FailurePolicy(max_failures=2), local=local,
                        say=lines.append)

    assert runs(tmp_path).count("b") == 3 and outcome.outcome("b").attempts == 3
    assert statuses(outcome) == {"a": "ran", "b": "failed", "c": "blocked", "d": "ran"}
    assert "retry b (attempt 3 of 3)" in lines
    assert any(line.startswith("failed b after 3 attempt(s): ValueError: boom") for line in lines)


@pytest.mark.parametrize("local", [False, True], ids=["ray", "local"])
def test_a_user_error_is_not_retried_and_its_message_reaches_the_driver(ray_local, tmp_path,
                                                                         local):
    jobs = [job(tmp_path, "a", error="no prompt for task 'x'; train it first", user_error=True)]
    outcome = run_graph(jobs, FailurePolicy(max_failures=3), local=local, say=lambda line: None)

    assert runs(tmp_path) == ["a"] and outcome.outcome("a").attempts == 1
    assert outcome.outcome("a").error == "no prompt for task 'x'; train it first"


def test_a_dead_worker_is_retried_once_per_death(ray_local, tmp_path):
    lines: list[str] = []
    outcome = run_graph([Job("die", Die(str(tmp_path), times=2))], FailurePolicy(2),
                        say=lines.append)

    assert outcome.outcome("die").status == "ran" and outcome.outcome("die").attempts == 3
    assert outcome.outcome("die").result == {"survived": True}
    assert (tmp_path / "attempts").read_text().split() == ["attempt"] * 3
    assert sum(line.startswith("attempt ") and "WorkerCrashedError" in line
               for line in lines) == 2


def test_a_dead_worker_fails_the_job_once_retries_are_spent(ray_local, tmp_path):
    outcome = run_graph([Job("die", Die(str(tmp_path)))], say=lambda line: None)

    assert outcome.outcome("die").status == "failed"
    assert outcome.outcome("die").error.startswith("WorkerCrashedError: ")
    assert "\n" not in outcome.outcome("die").error


@dataclass(frozen=True)
class PlanAfter:
    """A plan that names a job per line of a file its need writes, and the job with its own
    id that needs them all."""

    folder: str

    def __call__(self) -> list[Job]:
        folder = Path(self.folder)
        names = (folder / "a.out").read_text().split()[:0] + ["p1", "p2"]
        work = [job(folder, name, ("a",)) for name in names]
        return [*work, job(folder, "plan", tuple(names))]


def test_a_plan_names_its_jobs_once_its_needs_are_stored(ray_local, tmp_path):
    lines: list[str] = []
    graph = [job(tmp_path, "a"), Job("plan", plan=PlanAfter(str(tmp_path)), needs=("a",)),
             job(tmp_path, "after", ("plan",))]
    outcome = run_graph(graph, say=lines.append)

    assert statuses(outcome) == dict.fromkeys(["a", "after", "p1", "p2", "plan"], "ran")
    assert runs(tmp_path).index("a") < runs(tmp_path).index("p1") < \
        runs(tmp_path).index("plan") < runs(tmp_path).index("after")
    assert "planned plan: 2 job(s) (0 already stored)" in lines


def torch_threads() -> dict:
    import torch

    return {"threads": torch.get_num_threads()}


def test_each_job_runs_as_many_torch_threads_as_cpus_it_asked(ray_local):
    outcome = run_graph([Job(f"cpus {n}", torch_threads, resources={"CPU": n})
                         for n in (1.0, 2.0, 0.05)], say=lambda line: None)

    assert {job.id: job.result["threads"] for job in outcome.jobs} == \
        {"cpus 1.0": 1, "cpus 2.0": 2, "cpus 0.05": 1}


def test_jobs_never_ask_more_cpus_at_once_than_the_machine_has(ray_local, tmp_path):
    """Six one-CPU jobs on a two-CPU Ray: at no moment do more than two run. (Jobs of 2 s: on
    a loaded machine a worker process can take longer to start than a shorter job to end, and
    then no two would ever overlap.)"""
    outcome = run_graph([job(tmp_path, f"j{k}", seconds=2) for k in range(6)],
                        say=lambda line: None)

    assert set(statuses(outcome).values()) == {"ran"}
    spans = [interval(tmp_path, f"j{k}") for k in range(6)]
    busiest = max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)
    assert busiest == 2


def pid() -> dict:
    return {"pid": os.getpid()}


def test_jobs_that_leave_nothing_behind_share_worker_processes(ray_local):
    """Six one-after-another jobs: each gets a fresh process, unless it may reuse one. Ray keeps
    up to one idle worker per CPU and hands a task to any of them, so reused jobs run in at most
    as many processes as the Ray has CPUs (2), not necessarily in one."""
    def chain_of(reuse: bool) -> list[Job]:
        return [Job(f"j{k}", pid, needs=(f"j{k - 1}",) if k else (), reuse_process=reuse)
                for k in range(6)]

    fresh = run_graph(chain_of(False), say=lambda line: None)
    reused = run_graph(chain_of(True), say=lambda line: None)
    assert len({job.result["pid"] for job in fresh.jobs}) == 6
    assert len({job.result["pid"] for job in reused.jobs}) <= 2
