"""A whole study's wall time beside the limit of this machine for its work.

Runs a study end to end with `ptdist replicate` as shipped (its jobs on a local Ray) and, side
by side in the same script, with `--local` (the same jobs one after another in one process),
each into a fresh store. From the cost ledger each run leaves (every job's wall time and the CPU
time of its process, `pipeline/<study>/costs.parquet`) it prints the command's wall time, the
span of the jobs, their CPU-seconds, and the compute bound: CPU-seconds / cores, the least time
the machine could take for that work. Then the per-stage table of the shipped run.

    python benchmarks/study.py                      # the quickstart (prepared data and models)
    python benchmarks/study.py --study STUDY.yaml --sides ray

With ``--levers``, the study's prompt stage instead, with issue 28's levers off, each alone,
and all on, side by side (`levers.py`), optionally on a subset of its runs; ``--compile-check``
times the first such run's training step eager and compiled:

    python benchmarks/study.py --levers --tasks tweets movie_sentences \
        --models paraphrase-MiniLM-L3-v2 --seeds 0 --data-dir data
    python benchmarks/study.py --compile-check --tasks tweets --models paraphrase-MiniLM-L3-v2
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, header, load, setup, table


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
    p.add_argument("--levers", action="store_true",
                   help="the prompt stage with the levers off, each alone, and all on")
    p.add_argument("--padding", action="store_true",
                   help="only the padded fraction of the runs' training batches, per case")
    p.add_argument("--compile-check", action="store_true",
                   help="the first run's training step, eager and compiled")
    p.add_argument("--tasks", nargs="+", help="only these tasks' runs (task names)")
    p.add_argument("--models", nargs="+", help="only the runs of models whose name has these")
    p.add_argument("--seeds", nargs="+", type=int, help="only these seeds' runs")
    p.add_argument("--steps", type=int, help="each run's steps instead of the study's")
    p.add_argument("--data-dir", help="the study's data folder instead of its own")
    p.add_argument("--workers", type=int, default=1,
                   help="with --levers: processes training runs at once (one torch thread each)")
    p.add_argument("--cases", nargs="+", help="with --levers: only these cases (off, bucket, "
                   "cut, stop, all; default all of them)")
    args = p.parse_args()
    if args.levers or args.compile_check or args.padding:
        return _levers(args)
    from ptdist.orchestration.spec.study_spec import load_study

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


def _levers(args) -> None:
    from levers import CASES, compile_check, padding_only, planned_runs, run_levers

    from ptdist.logs import setup as logs_at

    runs, full_curves = planned_runs(args.study, args.data_dir, args.tasks, args.models,
                                     args.seeds, args.steps)
    header("the prompt stage with the levers on and off" if args.levers else
           "the padded fraction of the prompt stage's training batches" if args.padding else
           "the training step eager and compiled",
           {"study": str(args.study), "runs": len(runs), "tasks": args.tasks,
            "models": args.models, "seeds": args.seeds, "steps": args.steps or "the study's",
            "full curves": list(full_curves), "cores": os.cpu_count(),
            "workers": args.workers})
    setup()
    logs_at(logging.WARNING)
    if args.compile_check:
        compile_check(runs[0], args.steps or 30)
    elif args.padding:
        padding_only(runs, full_curves)
    else:
        run_levers(runs, full_curves, args.cases or CASES, args.workers)
    load()


if __name__ == "__main__":
    main()
