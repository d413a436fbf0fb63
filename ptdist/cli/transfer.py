"""`ptdist transfer matrix|tpt`: cross-task transfer of one model's prompts, as jobs (on Ray
unless --local)."""

from __future__ import annotations

import argparse

from ptdist.cli.options import (add_budget, add_data, add_eval, add_execution, add_job_resources,
                                add_precision, add_sharding, add_store, add_tolerance, budget,
                                emit, execution, frozen_model_job, job_resources, model_help,
                                scoring, task_help)


def matrix(args: argparse.Namespace) -> None:
    from ptdist.api.transfer import transfer_matrix
    from ptdist.transfer import MatrixSettings, cells
    from ptdist.transfer.matrix import unusable_tasks

    resources, sharded = frozen_model_job(args)
    result = transfer_matrix(args.model, args.tasks, store=args.store,
                             settings=scoring(args, MatrixSettings, sharded),
                             execution=execution(args), resources=resources)
    lines = [f"relative performance (%) of {args.model}'s prompts (each against the target's "
             "own prompt of its seed), mean over seeds; rows: source, columns: target",
             *_grid(result.tasks, cells(result.rows)),
             "chance-normalised (%): 100 x (score - majority class) / (own - majority class)",
             *_grid(result.tasks, cells(result.rows, "normalized"))]
    flagged = unusable_tasks(result.rows)
    if flagged:
        lines.append("own prompts not clearly above the majority class or a random prompt: "
                     + ", ".join(flagged))
    lines.append(f"table: {result.table}\nheatmap: {result.heatmap}")
    emit(args, "\n".join(lines), {"table": str(result.table), "heatmap": str(result.heatmap),
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
    from ptdist.api.transfer import tpt as compare

    train = dict(budget(args), data_dir=args.data_dir, ds_config=args.ds_config)
    if args.prompt_length is not None:
        train["prompt_length"] = args.prompt_length
    show_tpt(args, compare(args.model, args.targets, args.sources, train=train,
                           tolerance=args.tolerance, store=args.store,
                           execution=execution(args), resources=job_resources(args)))


def show_tpt(args: argparse.Namespace, result) -> None:
    """A TPT comparison: one line per run with its speed-up, and each target's figure."""
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
    lines += [f"curves and tables: {folder} ({figure.name})"
              for folder, figure in zip(result.folders, result.figures)]
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
