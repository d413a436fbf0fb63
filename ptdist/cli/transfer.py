"""`ptdist transfer matrix|tpt`: cross-task transfer of one model's prompts, as jobs (on Ray
unless --local)."""

from __future__ import annotations

import argparse

from ptdist.cli.options import (absolute, add_budget, add_data, add_eval, add_execution,
                                add_job_resources, add_precision, add_sharding, add_store,
                                add_tolerance, budget, emit, execution, frozen_model_job,
                                job_resources, model_help, store_of, task_args, task_help)


def matrix(args: argparse.Namespace) -> None:
    from ptdist.orchestration.stages import run_matrix
    from ptdist.reporting.figures import matrix_figure
    from ptdist.store.prompts import by_task
    from ptdist.tasks import get_task
    from ptdist.transfer import MatrixSettings, cells
    from ptdist.transfer.matrix import unusable_tasks

    resources, sharded = frozen_model_job(args)
    store = store_of(args)
    names = [get_task(t).name for t in task_args(args.tasks, store)]
    prompts = [m for mine in by_task(store.prompts.select(args.model, names), names,
                                     f"of model '{args.model}' in store {store.root}").values()
               for m in mine]
    settings = MatrixSettings(eval_limit=args.eval_limit or None, batch_size=args.batch_size,
                              data_dir=absolute(args.data_dir), precision=args.precision,
                              ds_config=sharded)
    result = run_matrix(store, prompts, settings, execution(args), resources)
    figure = matrix_figure(result.rows, store.layout.matrix_figure(args.model))
    lines = [f"relative performance (%) of {args.model}'s prompts (each against the target's "
             "own prompt of its seed), mean over seeds; rows: source, columns: target",
             *_grid(result.tasks, cells(result.rows)),
             "chance-normalised (%): 100 x (score - majority class) / (own - majority class)",
             *_grid(result.tasks, cells(result.rows, "normalized"))]
    flagged = unusable_tasks(result.rows)
    if flagged:
        lines.append("own prompts not clearly above the majority class or a random prompt: "
                     + ", ".join(flagged))
    lines.append(f"table: {result.table}\nheatmap: {figure}")
    emit(args, "\n".join(lines), {"table": str(result.table), "heatmap": str(figure),
                                  "rows": result.rows})


def _grid(tasks: list[str], values: dict[tuple[str, str], dict[int, float]]) -> list[str]:
    width = max(len(t) for t in tasks) + 2
    lines = [" " * width + "".join(f"{t[:10]:>11}" for t in tasks)]
    for source in tasks:
        lines.append(f"{source:<{width}}" + "".join(
            f"{sum(v.values()) / len(v):>11.1f}" if (v := values[source, t]) else f"{'-':>11}"
            for t in tasks))
    return lines


def tpt(args: argparse.Namespace) -> None:
    from ptdist.orchestration.stages import run_tpt
    from ptdist.transfer import task_plan

    store = store_of(args)
    train = budget(args)
    if args.prompt_length is not None:
        train["prompt_length"] = args.prompt_length
    targets = task_args(args.targets, store)
    sources = [s if store.prompts.has(s) else task_args([s], store)[0] for s in args.sources]
    plan = task_plan(store, args.model, targets, sources, store.prompts.select(args.model),
                     train, data_dir=absolute(args.data_dir), ds_config=args.ds_config,
                     tolerance=args.tolerance)
    show_tpt(args, run_tpt(store, plan, job_resources(args), execution(args)), store)


def show_tpt(args: argparse.Namespace, result, store) -> None:
    """A TPT result: one line per run with its speed-up, and each target's figure."""
    from ptdist.reporting.figures import tpt_figure
    from ptdist.store.layout import TPT_CURVES, TPT_FIGURE
    from ptdist.store.results import TptCurveRow
    from ptdist.store.tables import read_records
    from ptdist.transfer.tpt import run_seeds

    lines = []
    for r in result.summary:
        reached = (f"reaches vanilla's best ({r.vanilla_best:.2f}) at step "
                   f"{r.steps_to_vanilla_best}" if r.steps_to_vanilla_best is not None
                   else "never reaches vanilla's best")
        speed = f", speed-up {r.speedup:.2f}x" if r.speedup is not None else ""
        near = (f"; {r.tolerance:.0%} of it at step {r.steps_to_tolerance}, speed-up "
                f"{r.speedup_tolerance:.2f}x" if r.steps_to_tolerance is not None else
                f"; never reaches {r.tolerance:.0%} of it")
        start = "-" if r.start_score is None else f"{r.start_score:.2f}"
        lines.append(f"{r.target_task}: {r.run}: {r.metric} {start} at step 0, best "
                     f"{r.best_score:.2f} @ {r.best_step}; {reached}{speed}{near}")
    for folder in result.folders:
        summary = [r for r in result.summary if r.target_task == folder.name]
        curves = read_records(folder / TPT_CURVES, TptCurveRow)
        figure = tpt_figure(curves, summary, folder / TPT_FIGURE, run_seeds(store, curves))
        lines.append(f"curves and tables: {folder} ({figure.name})")
    emit(args, "\n".join(lines), {"summary": result.summary,
                                  "folders": [str(f) for f in result.folders]})


def register(command, sub) -> None:
    transfer = sub.add_parser("transfer", help="cross-task transfer: the zero-shot matrix, TPT",
                              description="cross-task transfer of one model's prompts")
    steps = transfer.add_subparsers(dest="transfer_command", required=True, metavar="STEP")
    m = command("matrix", matrix, "evaluate every task's prompts on every task",
                "zero-shot transfer matrix of every stored prompt of the tasks (all seeds): "
                "raw, relative and chance-normalised scores with each target's majority-class "
                "and random-prompt baselines (Parquet) and a heatmap (PNG) in the store; a job "
                "per target task", group=steps)
    m.add_argument("--model", required=True, help=model_help())
    m.add_argument("--tasks", nargs="+", required=True, help=task_help("the tasks (>= 2)"))
    add_eval(m)
    add_precision(m)
    add_execution(m)
    add_job_resources(m)
    add_sharding(m)
    add_data(m)
    add_store(m)
    t = command("tpt", tpt, "vanilla PT vs PT initialised from other tasks' prompts",
                "TPT_task: vanilla prompt tuning and prompt tuning initialised from each "
                "source prompt, on each target, with the speed-up to vanilla's best score",
                group=steps)
    t.add_argument("--model", required=True, help=model_help())
    t.add_argument("--targets", nargs="+", required=True, help=task_help("the target tasks"))
    t.add_argument("--sources", nargs="+", required=True,
                   help="source tasks (their best stored prompt) or prompt ids")
    t.add_argument("--prompt-length", type=int, default=None,
                   help="default: the source prompts' length")
    add_budget(t)
    add_tolerance(t)
    add_execution(t)
    add_job_resources(t)
    add_data(t)
    add_store(t)
