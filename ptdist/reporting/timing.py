"""Where a study's time went: per stage and per job, wall time, CPU-seconds, the share of the
machine used (CPU-seconds / (wall x cores)) and, for prompt tuning, examples per second; and
the study's wall time beside its compute bound (the sum of its jobs' CPU-seconds divided by the
cores: the least time this machine could take for that work)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ptdist.store import Store
from ptdist.store.results import JobCostRow
from ptdist.store.tables import read_records, write_records


def cost_section(store: Store, study: str, folder: Path) -> str:
    """The report's cost section ("" before any job of the study has run)."""
    path = store.layout.job_costs(study)
    rows = [r for r in read_records(path, JobCostRow) if r.wall_s is not None] \
        if path.exists() else []
    if not rows:
        return ""
    write_records(folder / "costs.parquet", JobCostRow, rows)
    cores = max(r.cores for r in rows)
    stages: dict[str, list[JobCostRow]] = {}
    for r in rows:
        stages.setdefault(r.stage, []).append(r)
    lines = ["## Where the time went\n",
             f"Measured where each job ran, on {cores:g} cores; a job's share is its CPU-seconds "
             "/ (its wall time x the cores); a stage's wall time spans its first start to its "
             "last end. CPU-seconds of a multi-worker job count its coordinator only.\n",
             "| stage | jobs | wall (s) | CPU-s | share of the machine | examples/s |",
             "|---|---|---|---|---|---|"]
    lines += [_line(stage, mine, cores) for stage, mine in stages.items()]
    wall, cpu = _span(rows), sum(r.cpu_s for r in rows)
    lines += [_line("**total**", rows, cores), "",
              f"The study's jobs took {wall:.0f} s from the first start to the last end; their "
              f"compute ({cpu:.0f} CPU-s) on {cores:g} cores needs at least {cpu / cores:.0f} s: "
              f"wall time is {wall / (cpu / cores):.2f}x the compute bound.", "",
              "| job | wall (s) | CPU-s | share | attempts | examples/s |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r.job} | {r.wall_s:.1f} | {r.cpu_s:.1f} | "
              f"{r.cpu_s / (r.wall_s * cores):.0%} | {r.attempts} | {_rate([r])} |"
              for r in sorted(rows, key=lambda r: r.started)]
    return "\n".join(lines) + "\n"


def _line(name: str, rows: Sequence[JobCostRow], cores: float) -> str:
    wall, cpu = _span(rows), sum(r.cpu_s for r in rows)
    return (f"| {name} | {len(rows)} | {wall:.1f} | {cpu:.1f} | {cpu / (wall * cores):.0%} | "
            f"{_rate(rows)} |")


def _span(rows: Sequence[JobCostRow]) -> float:
    return max(r.finished for r in rows) - min(r.started for r in rows)


def _rate(rows: Sequence[JobCostRow]) -> str:
    """Training examples per second of the prompt-tuning jobs among ``rows``."""
    trained = [r for r in rows if r.examples]
    if not trained:
        return "-"
    return f"{sum(r.examples for r in trained) / sum(r.wall_s for r in trained):.1f}"
