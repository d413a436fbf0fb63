"""`ptdist recommend`: which source prompt a task that has no prompt yet should start from,
ranked and explained (docs/recommend.md); with --then-tpt K, checked by training from the top
K (TPT runs as jobs, on Ray unless --local)."""

from __future__ import annotations

import argparse

from ptdist.cli.options import (add_data, add_execution, add_job_resources, add_precision,
                                add_store, add_tolerance, emit, execution, job_resources,
                                model_help, task_help)


def recommend(args: argparse.Namespace) -> None:
    from ptdist.api.recommend import recommend_sources

    train = {"ds_config": args.ds_config,
             **{k: v for k, v in (("steps", args.steps), ("lr", args.lr),
                                  ("eval_every", args.eval_every)) if v is not None}}
    result = recommend_sources(
        args.model, args.task, hub=args.hub or (), probe=args.probe, then_tpt=args.then_tpt,
        sample=args.sample, sample_seed=args.sample_seed, seeds=args.seeds,
        batch_size=args.batch_size, precision=args.precision, data_dir=args.data_dir,
        train=train, tolerance=args.tolerance, store=args.store, execution=execution(args),
        resources=job_resources(args))
    lines = ranking_lines(result) + [f"table: {result.table}\nfigure: {result.figure}"]
    if result.tpt is not None:
        lines += tpt_lines(result.task, result.tpt)
    emit(args, "\n".join(lines), result.to_json())


def ranking_lines(result) -> list[str]:
    """The ranking as a table, the rule's inputs, and what it recommends, in words."""
    rows, zero = result.rows, result.zero
    random_mean = sum(r.random_score for r in rows) / len(rows)
    chance = "" if zero.chance is None else f"majority class {zero.chance:.1f}, "
    head = (f"source prompts for {result.task} on {result.model}: zero-shot {zero.metric} on "
            f"{zero.rows} training rows ({chance}random prompt {random_mean:.1f})")
    lines = [head, f"{'rank [95% CI]':<15}{'P(first)':>9}  {'candidate':<26}{'task (type)':<26}"
             f"{'score [95% CI]':>22}  {'clearly above':<14}"
             + (result.indicator.name if result.indicator else "") + "  origin"]
    for r in rows:
        value = "" if r.indicator is None else \
            ("-" if r.indicator_value is None else f"{r.indicator_value:.3f}")
        kind = r.source_type or "?"
        p_top = "-" if r.p_top is None else f"{r.p_top:.2f}"
        lines.append(f"{_rank(r):<15}{p_top:>9}  {r.label[:25]:<26}"
                     f"{f'{r.source_task} ({kind})'[:25]:<26}{_score(r):>22}  "
                     f"{'yes' if r.clearly_above else 'no':<14}{value}  {r.origin}")
    if result.indicator is not None:
        lines.append(f"probe {result.probe}: {result.indicator.name}, weight "
                     f"{result.indicator.weight:.2f}: {result.indicator.why}")
    lines.append("rule: those clearly above both baselines first, each group by (zero-shot "
                 "rank + w x indicator rank) / (1 + w); intervals and P(first): "
                 f"{zero.rows} rows resampled (docs/recommend.md)")
    lines.append(advice(rows[0]))
    return lines


def _rank(row) -> str:
    return str(row.rank) if row.rank_low is None else \
        f"{row.rank} [{row.rank_low}, {row.rank_high}]"


def _score(row) -> str:
    return f"{row.score:.1f}" if row.score_low is None else \
        f"{row.score:.1f} [{row.score_low:.1f}, {row.score_high:.1f}]"


def advice(top) -> str:
    """What the first-ranked candidate supports, with the test and n it rests on."""
    from ptdist.statistics import MIN_ROWS, too_few

    if top.score_low is None:
        return (f"{too_few(top.sample_rows, 'row')}: a row bootstrap needs {MIN_ROWS} rows, so "
                "no candidate is shown to beat the majority class or a random prompt; give "
                f"--sample {MIN_ROWS} or more, or measure with --then-tpt")
    test = f"paired bootstrap over {top.sample_rows} rows, 95 %"
    if not top.clearly_above:
        return (f"no candidate is clearly above both the majority class and a random prompt "
                f"({test}): zero-shot, none is shown to beat chance; start from a random "
                "init, or measure with --then-tpt whether a source trains faster")
    return (f"start from {top.label} ({top.source_task}, {top.origin}): zero-shot "
            f"{_score(top)}, clearly above the majority class and a random prompt ({test}); "
            f"predicted rank {_rank(top)}, first in {top.p_top:.0%} of the resamples")


def tpt_lines(task: str, check) -> list[str]:
    """Each TPT run over the seeds: its best and starting score, and beside vanilla's the
    paired differences and each seed's speed-up."""
    from ptdist.recommend.evidence import compared, stated
    from ptdist.store.layout import TPT_FIGURE

    lines = [f"TPT on {task}, seeds {', '.join(map(str, check.seeds))} (each seed's runs "
             f"against its vanilla run; evaluated {check.runs[0].grid}, so a speed-up is a "
             "ratio of two evaluation steps):"]
    for o in check.runs:
        predicted = "" if o.rank is None else f" (predicted rank {_rank(o)})"
        lines.append(f"{o.run}{predicted}: best {stated(o.best)}; at step 0 {stated(o.start)}")
        if o.gain is not None:
            per_seed = ", ".join(f"seed {s}: {_speedup(v)}" for s, v in o.speedups.items())
            lines += ["    best - vanilla's best: "
                      f"{compared(o.gain, 'higher', 'lower', ' points')}",
                      "    area under the learning curve - vanilla's: "
                      f"{compared(o.area_gain, 'higher', 'lower', ' points')}",
                      f"    speed-up to vanilla's best: {per_seed}"]
    return lines + [f"curves and tables: {check.folder} ({TPT_FIGURE})"]


def _speedup(value: float | None) -> str:
    if value is None:
        return "never reached"
    return "reached at step 0" if value == float("inf") else f"{value:.2f}x"


def register(command) -> None:
    from ptdist.training.config import EvalSettings, TrainConfig

    r = command("recommend", recommend, "rank the stored prompts a new task could start from",
                "rank candidate source prompts for a task that has no prompt yet (the store's "
                "prompts of the model, --hub prompt files and adapters, and other models' "
                "prompts through the store's projectors to it) by their zero-shot score on a "
                "sample of its training rows beside the majority class and a random prompt, "
                "and with --probe by the indicator the store's correlation study ranks best; "
                "a table and figure in the store (docs/recommend.md)")
    r.add_argument("--model", required=True, help=model_help())
    r.add_argument("--task", required=True, help=task_help("the new task"))
    r.add_argument("--hub", nargs="+", default=None, metavar="[TASK=]PATH",
                   help="also rank these prompt files (.safetensors), PEFT adapter folders, or "
                        "folders of them; a prompt's task is TASK, else its file or folder name")
    r.add_argument("--sample", type=int, default=256,
                   help="training rows of the task the candidates are scored on (default 256)")
    r.add_argument("--sample-seed", type=int, default=0, help="which rows (default 0)")
    r.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="seeds of the random-prompt baselines and the TPT runs (default: the "
                        "seeds of the store's prompts of the model, the study's)")
    r.add_argument("--probe", type=int, default=None, metavar="STEPS",
                   help="also train the task for STEPS steps (the probe) and compare it with "
                        "each candidate by the indicator the store's correlation study ranks "
                        "best")
    r.add_argument("--then-tpt", type=int, default=None, metavar="K",
                   help="then prompt-tune the task from each of the top K sources and from a "
                        "random init, per seed, and report their best scores, curve areas and "
                        "speed-ups over the seeds beside the prediction (stored like any TPT "
                        "run)")
    r.add_argument("--steps", type=int, default=None,
                   help="TPT runs' steps (default: the study's, the store prompts' setting)")
    r.add_argument("--lr", type=float, default=None, help="TPT runs' learning rate (default: "
                                                          "the study's)")
    r.add_argument("--eval-every", type=int, default=None,
                   help="TPT runs' steps between evaluations (default: the study's)")
    r.add_argument("--ds-config", default=TrainConfig.ds_config,
                   help="TPT runs' DeepSpeed config (default %(default)s)")
    r.add_argument("--batch-size", type=int, default=EvalSettings.batch_size,
                   help="examples x prompts per forward pass of the scoring (default "
                        "%(default)s)")
    add_tolerance(r)
    add_precision(r)
    add_execution(r)
    add_job_resources(r)
    add_data(r)
    add_store(r)
