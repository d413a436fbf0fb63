"""`ptdist sweep` and `ptdist replicate`: a spec's prompt-tuning runs (Ray Tune trials), and a
whole study as one graph of jobs with a report; both on Ray unless --local."""

from __future__ import annotations

import argparse

from ptdist.cli.options import add_data, add_execution, add_store, emit, execution, pack_override


def sweep(args: argparse.Namespace) -> None:
    from ptdist.api.study import sweep as run
    from ptdist.orchestration.jobs.sweep import require_no_failures

    outcome = run(args.spec, store=args.store, data_dir=args.data_dir, cluster=args.cluster,
                  execution=execution(args), pack=pack_override(args), dry_run=args.dry_run)
    name = outcome.spec.name
    if args.dry_run:
        emit(args, outcome.listing, {"sweep": name, "dry_run": True,
                                     "store": outcome.spec.storage_path,
                                     "to_run": outcome.to_run})
    else:
        table = "\n".join(f"{r.status:<8} {r.model}/{r.task}/seed{r.seed}/{r.init} "
                          f"{r.prompt_id}: " + (f"{r.metric}={r.score:.2f}" if r.score is not None
                                                else r.error or "")
                          for r in outcome.rows)
        emit(args, f"{table}\nresults: {outcome.table}", {
            "sweep": name, "table": outcome.table, "trained": outcome.trained,
            "runs": outcome.rows})
    require_no_failures(outcome)


def replicate(args: argparse.Namespace) -> None:
    from ptdist.api.study import replicate as run
    from ptdist.orchestration.execution.graph import require_success

    outcome = run(args.study, preset=args.preset, store=args.store, data_dir=args.data_dir,
                  execution=execution(args), pack=pack_override(args), dry_run=args.dry_run)
    if args.dry_run:
        emit(args, outcome.listing, {"study": outcome.study.spec.name, "dry_run": True})
        return
    jobs = [{"id": o.id, "status": o.status, "error": o.error, "attempts": o.attempts}
            for o in outcome.jobs]
    emit(args, f"report: {outcome.report}" if outcome.report else "no report (see the failures)",
         {"report": str(outcome.report) if outcome.report else None, "jobs": jobs})
    require_success(outcome)


def register(command) -> None:
    s = command("sweep", sweep, "run a sweep spec's prompt-tuning runs on Ray Tune (a local Ray "
                                "unless --address or $RAY_ADDRESS names a cluster)")
    s.add_argument("--spec", required=True, help="sweep spec YAML (docs/sweeps.md), or the "
                                                 "name of a preset (tiny, paper...)")
    s.add_argument("--cluster", default=None,
                   help="Ray cluster config whose node types runs must fit (e.g. cluster.yaml)")
    s.add_argument("--dry-run", action="store_true",
                   help="validate the spec and list the runs to do, without running them")
    add_execution(s, spec=True)
    add_data(s, spec=True)
    add_store(s, spec=True)

    r = command("replicate", replicate, "the whole study as one graph of jobs, with a report",
                "prompt tuning, transfer matrix, activations, indicators and their "
                "correlation, cross-model projectors, TPT and a report, as one dependency "
                "graph; a re-run does only what is missing (docs/replicate.md)")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", help="study YAML (a sweep spec plus 'stages')")
    which.add_argument("--preset", help="a study that ships with ptdist (specs/ in a "
                                        "checkout): quickstart (offline, real models and data, "
                                        "CPU), paper-tasks (the paper's tasks from local files, "
                                        "--data-dir) or paper (the paper's grid, GPUs); it "
                                        "writes to $PTDIST_STORE or ./store")
    r.add_argument("--dry-run", action="store_true", help="list the jobs without running them")
    add_execution(r, spec=True)
    add_data(r, spec=True)
    add_store(r, spec=True)
