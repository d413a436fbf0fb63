"""`ptdist neurons capture|indicators|correlate|embedding`: activated FFN neurons of one
model's prompts, and embedding indicators of any prompts. Capture runs as jobs (on Ray unless
--local); the others run in this process."""

from __future__ import annotations

import argparse

from ptdist.cli.options import (add_data, add_execution, add_job_resources, add_precision,
                                add_sharding, add_store, emit, execution, frozen_model_job,
                                model_help, task_help)


def capture(args: argparse.Namespace) -> None:
    from ptdist.api.neurons import capture as capture_run
    from ptdist.neurons.collect import CaptureSettings

    resources, sharded = frozen_model_job(args)
    settings = CaptureSettings(protocol=args.protocol, examples=args.examples,
                               batch_size=args.batch_size, data_dir=args.data_dir,
                               precision=args.precision, ds_config=sharded)
    result = capture_run(args.model, args.tasks, store=args.store, settings=settings,
                         chunks=args.chunks, execution=execution(args), resources=resources)
    emit(args, f"captured {result.captured} prompt(s) ({result.skipped} already stored) "
               f"into {result.folder}",
         {"captured": result.captured, "skipped": result.skipped, "folder": str(result.folder)})


def indicators(args: argparse.Namespace) -> None:
    from ptdist.api.neurons import indicators as pairwise

    result = pairwise(args.model, protocol=args.protocol, store=args.store)
    n = len(result.prompts)
    emit(args, f"indicators for {n} prompts ({n * n} ordered pairs): {result.table}\n"
               "heatmaps: " + ", ".join(str(p) for p in result.heatmaps),
         {"table": str(result.table), "heatmaps": [str(p) for p in result.heatmaps]})


def correlate(args: argparse.Namespace) -> None:
    from ptdist.api.neurons import correlate as correlate_run

    result = correlate_run(args.model, store=args.store)
    lines = correlation_lines(result.rows)
    lines.append(f"table: {result.table}\nlayer-wise ON curve: {result.layer_curve}")
    emit(args, "\n".join(lines), {"table": str(result.table), "rows": result.rows,
                                  "layer_curve": str(result.layer_curve)})


def embedding(args: argparse.Namespace) -> None:
    from ptdist.api.neurons import embedding_indicators

    result = embedding_indicators(args.model, prompts=args.prompts, matrix=args.matrix,
                                  out=args.out, name=args.name, store=args.store)
    n = len({r.prompt_a for r in result.indicators})
    lines = [f"embedding indicators of {n} prompts ({n ** 2} ordered pairs): "
             f"{result.indicators_table}"]
    if result.correlation:
        lines += correlation_lines(result.correlation) + [f"table: {result.correlation_table}"]
    else:
        lines.append("no transfer matrix: indicators only (give --matrix, or run `ptdist "
                     "transfer matrix` for the model's prompts)")
    emit(args, "\n".join(lines), {"indicators": str(result.indicators_table),
                                  "correlation": str(result.correlation_table)
                                  if result.correlation else None,
                                  "rows": result.correlation})


def correlation_lines(rows) -> list[str]:
    """Correlation rows as a table, strongest mean per-target coefficient first, each with its
    95 % bootstrap interval."""
    from ptdist.statistics import Interval

    lines = [f"{'indicator':<18}{'per target [95% CI]':>26}{'targets':>9}"
             f"{'global [95% CI]':>26}{'pairs':>7}"]
    for r in rows:
        per_target = Interval.of(r.spearman_per_target, r.per_target_low, r.per_target_high)
        overall = Interval.of(r.spearman_global, r.global_low, r.global_high)
        lines.append(f"{r.indicator:<18}{str(per_target):>26}{r.targets:>9}"
                     f"{str(overall):>26}{r.pairs:>7}")
    if rows and rows[0].left_out:
        lines.append(f"left out (own prompts not clearly above chance): {rows[0].left_out}")
    return lines


def register(command, sub) -> None:
    neurons = sub.add_parser("neurons", help="activated neurons and transferability indicators",
                             description="activated FFN neurons of one model's prompts, and "
                                         "embedding indicators of any prompts")
    steps = neurons.add_subparsers(dest="neurons_command", required=True, metavar="STEP")
    c = command("capture", capture, "record FFN activations of stored prompts to Parquet",
                "record every layer's FFN activations of a model's stored prompts into the "
                "store's activations (docs/neurons.md), in --chunks jobs", group=steps)
    c.add_argument("--model", required=True, help=model_help())
    c.add_argument("--tasks", nargs="+", default=None,
                   help=task_help("only these tasks' prompts"))
    c.add_argument("--protocol", choices=("prompt", "data"), default="prompt",
                   help="prompt: no task input (the paper's); data: mean over N examples")
    c.add_argument("--examples", type=int, default=32, help="N for the data protocol")
    c.add_argument("--batch-size", type=int, default=16,
                   help="examples per forward (data protocol), prompts per forward (prompt "
                        "protocol)")
    c.add_argument("--chunks", type=int, default=2, help="jobs to split the prompts over")
    add_precision(c)
    add_execution(c)
    add_job_resources(c)
    add_sharding(c)
    add_data(c)
    add_store(c)
    i = command("indicators", indicators, "indicators for every pair of captured prompts",
                "E_concat, E_avg, E_tokmean, Euclidean variants, ON and layer-wise ON for every "
                "pair of captured prompts", group=steps)
    i.add_argument("--model", required=True, help=model_help())
    i.add_argument("--protocol", choices=("prompt", "data"), default="prompt")
    add_store(i)
    b = command("embedding", embedding, "embedding indicators of prompts alone, no activations",
                "E_concat, E_avg, E_tokmean and their Euclidean variants for any set of prompts "
                "(a model's prompts in the store, or prompt files / PEFT adapters) and, with a "
                "transfer matrix, their Spearman correlation with transfer; no model is loaded",
                group=steps)
    b.add_argument("--model", default=None,
                   help=model_help("use the prompts in the store of the model (and its "
                                   "transfer matrix), the model"))
    b.add_argument("--prompts", nargs="+", default=None, metavar="[TASK=]PATH",
                   help="prompt files (.safetensors), PEFT adapter folders, or folders of them; "
                        "a prompt's task is TASK, else its file or folder name")
    b.add_argument("--matrix", default=None,
                   help="transfer matrix (.csv/.parquet: source, target, relative or score)")
    b.add_argument("--out", default="embedding_indicators",
                   help="folder for the tables with --prompts (default ./embedding_indicators)")
    b.add_argument("--name", default="prompts", help="the model name the tables carry with "
                                                     "--prompts (default: prompts)")
    add_store(b)
    r = command("correlate", correlate, "Spearman correlation of indicators with transfer",
                "correlate each indicator with the zero-shot transfer matrix (per target and "
                "global) and plot layer-wise ON", group=steps)
    r.add_argument("--model", required=True, help=model_help())
    add_store(r)
