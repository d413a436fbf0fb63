"""Where a study's time went: the driver's ledger of job costs, and the report's cost section
computed from it (hand-checked numbers)."""

from __future__ import annotations


from ptdist.orchestration.execution.graph import Job, JobOutcome
from ptdist.orchestration.jobs.job_costs import CostLedger, stage_of
from ptdist.reporting.timing import cost_section
from ptdist.store import Store
from ptdist.store.results import JobCostRow
from ptdist.store.tables import read_records


def test_the_ledger_keeps_the_latest_record_of_each_job(tmp_path):
    store = Store(tmp_path)
    ledger = CostLedger(store, "study")
    job = Job("prompt m/sst2/seed0/random", run=dict, resources={"CPU": 2.0})
    ledger(job, JobOutcome(job.id, "failed", attempts=2, started=10.0, finished=12.0))
    ledger(job, JobOutcome(job.id, "ran", result={"runs": {}, "examples": 640}, started=20.0,
                           finished=30.0, attempts=1, wall_s=9.5, cpu_s=15.0))
    [row] = read_records(store.layout.job_costs("study"), JobCostRow)
    assert (row.status, row.cpus, row.wall_s, row.cpu_s, row.examples) == \
        ("ran", 2.0, 9.5, 15.0, 640)
    assert CostLedger(store, "study").rows == {job.id: row}  # read back by the next run
    assert stage_of("pack m/sst2/seed0/random +3") == "prompt"


def _row(job: str, started: float, finished: float, wall: float, cpu: float,
         examples: int | None = None) -> JobCostRow:
    return JobCostRow(job=job, stage=stage_of(job), status="ran", attempts=1, cpus=1.0,
                      gpus=0.0, cores=2.0, wall_s=wall, cpu_s=cpu, examples=examples,
                      started=started, finished=finished)


def test_the_cost_section_states_shares_rates_and_the_compute_bound(tmp_path):
    """Two prompt jobs side by side (0-10 s, 0-8 s) on 2 cores, then a matrix (10-14 s):
    prompt 17 CPU-s over a 10 s span = 85 % of 2 cores, 1000 examples / 18 s = 55.6/s;
    the study spans 14 s, its 20 CPU-s need 10 s at least: 1.40x the bound."""
    store = Store(tmp_path)
    ledger = CostLedger(store, "s")
    ledger.rows = {r.job: r for r in [
        _row("prompt a", 0.0, 10.0, 10.0, 9.0, examples=600),
        _row("prompt b", 0.0, 8.0, 8.0, 8.0, examples=400),
        _row("matrix m", 10.0, 14.0, 4.0, 3.0)]}
    ledger(Job("report", run=dict), JobOutcome("report", "failed", started=14.0,
                                              finished=15.0))  # writes the table
    text = cost_section(store, "s", tmp_path)
    assert "| prompt | 2 | 10.0 | 17.0 | 85% | 55.6 |" in text
    assert "| matrix | 1 | 4.0 | 3.0 | 38% | - |" in text
    assert "| **total** | 3 | 14.0 | 20.0 | 71% | 55.6 |" in text
    assert "wall time is 1.40x the compute bound" in text
    assert "| prompt a | 10.0 | 9.0 | 45% | 1 | 60.0 |" in text
    assert (tmp_path / "costs.parquet").exists()
    assert cost_section(Store(tmp_path / "empty"), "s", tmp_path) == ""


def test_a_finished_job_reports_the_time_and_cpu_it_took_where_it_ran(tmp_path):
    from ptdist.orchestration.execution.failures import FailurePolicy
    from ptdist.orchestration.execution.graph import run_graph

    seen = []
    outcome = run_graph([Job("sleep", run=_sleep_and_spin)], policy=FailurePolicy(0),
                        local=True, say=lambda line: None,
                        finished=lambda job, out: seen.append((job.id, out.status)))
    done = outcome.outcome("sleep")
    assert seen == [("sleep", "ran")]
    # 0.3 s asleep, then 0.3 s of its own CPU time: at least 0.6 s of wall time, more on a
    # loaded machine (another test beside it stretches the spin).
    assert 0.55 <= done.wall_s < 10 and 0.25 <= done.cpu_s <= done.wall_s + 0.05


def _sleep_and_spin() -> dict:
    import time

    time.sleep(0.3)
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    return {}
