"""A whole study's wall time beside the limit of this machine for its work.

Runs a study end to end with `ptdist replicate` as shipped (its jobs on a local Ray) and, side
by side in the same script, with `--local` (the same jobs one after another in one process),
each into a fresh store. From the cost ledger each run leaves (every job's wall time and the CPU
time of its process, `pipeline/<study>/costs.parquet`) it prints the command's wall time, the
span of the jobs, their CPU-seconds, and the compute bound: CPU-seconds / cores, the least time
the machine could take for that work. Then the per-stage table of the shipped run.

    python benchmarks/study.py                      # the quickstart (prepared data and models)
    python benchmarks/study.py --study STUDY.yaml --sides ray
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, header, table


def _run(study: Path, store: Path, local: bool) -> float:
    """Seconds `ptdist replicate` took, start to exit."""
    command = [sys.executable, "-m", "ptdist", "replicate", "--study", str(study), "--store",
               str(store)] + (["--local"] if local else [])
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, text=True, capture_output=True)
    if proc.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def _costs(store: Path, study: str) -> list:
    from ptdist.store import Store
    from ptdist.store.results import JobCostRow
    from ptdist.store.tables import read_records

    return read_records(Store(store).layout.job_costs(study), JobCostRow)


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", type=Path, default=REPO / "specs" / "quickstart.yaml")
    p.add_argument("--sides", nargs="+", choices=("ray", "local"), default=["ray", "local"])
    args = p.parse_args()
    from ptdist.orchestration.study import load_study

    name = load_study(args.study).spec.name
    header("a whole study vs this machine's compute bound",
           {"study": str(args.study), "sides": args.sides, "cores": os.cpu_count()})
    rows, shipped = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.sides:
            store = Path(tmp) / side
            wall = _run(args.study, store, local=side == "local")
            costs = _costs(store, name)
            cpu = sum(r.cpu_s for r in costs if r.cpu_s is not None)
            cores = max(r.cores for r in costs)
            span = max(r.finished for r in costs) - min(r.started for r in costs)
            rows.append([side, wall, span, cpu, cores, cpu / cores, wall / (cpu / cores)])
            if side == "ray":
                from ptdist.reporting.timing import cost_section
                from ptdist.store import Store

                shipped = cost_section(Store(store), name, Path(tmp))
    print(table(["side", "command s", "jobs span s", "CPU-s", "cores", "bound s",
                 "command / bound"], rows))
    if shipped:
        print(shipped)


if __name__ == "__main__":
    main()
