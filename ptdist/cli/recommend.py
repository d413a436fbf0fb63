"""`ptdist recommend`: which source prompt a task that has no prompt yet should start from,
ranked and explained (docs/recommend.md); with --then-tpt K, checked by training from the top
K (TPT runs as jobs, on Ray unless --local)."""

from __future__ import annotations

import argparse

from ptdist.cli.options import (absolute, add_data, add_execution, add_job_resources,
                                add_precision, add_store, add_tolerance, emit, execution,
                                job_resources, model_help, store_of, task_args, task_help)


def recommend(args: argparse.Namespace) -> None:
    from ptdist.errors import PtdistError
    from ptdist.recommend import (RecommendSettings, gather, recommend as rank, study_settings,
                                  train_probe, write_recommendation)
    from ptdist.reporting.figures import recommend_figure
    from ptdist.tasks import get_task, load_split
    from ptdist.transfer.matrix import own_prompts

    store = store_of(args)
    task_ref = task_args([args.task], store)[0]
    task = get_task(task_ref)
    if args.sample < 1 or (args.probe is not None and args.probe < 1):
        raise PtdistError("--sample and --probe take a positive number (rows, steps)")
    candidates = gather(store, args.model, task.name, args.hub or ())
    data_dir = absolute(args.data_dir)
    load_split(task, "train", limit=1, data_dir=data_dir)  # its data, before any model loads
    mine = own_prompts(store.prompts.select(args.model))
    study = study_settings(mine)
    seeds = tuple(args.seeds or sorted({m.seed for m in mine}) or (0,))
    train = _tpt_settings(args, task_ref, study) if args.then_tpt is not None else None
    probe = None if args.probe is None else \
        train_probe(store, args.model, task_ref, args.probe, candidates, study, data_dir)
    settings = RecommendSettings(sample=args.sample, sample_seed=args.sample_seed, seeds=seeds,
                                 batch_size=args.batch_size,
                                 max_length=study.get("max_length", 128), data_dir=data_dir,
                                 precision=args.precision)
    result = rank(store, args.model, task_ref, candidates, settings, probe)
    table = write_recommendation(store, result)
    figure = recommend_figure(result.rows,
                              store.layout.recommendation_figure(args.model, result.task))
    lines = ranking_lines(result) + [f"table: {table}\nfigure: {figure}"]
    payload = {**result.to_json(), "table": str(table), "figure": str(figure)}
    if train is not None:
        lines += _then_tpt(args, store, result, candidates, task_ref, train, seeds, payload)
    emit(args, "\n".join(lines), payload)


def _tpt_settings(args: argparse.Namespace, task_ref: str, study: dict) -> dict:
    """The TPT runs' settings (the study's, --steps, --lr, --eval-every over them), checked
    with their DeepSpeed config before any work starts."""
    from ptdist.errors import PtdistError
    from ptdist.training import TrainConfig
    from ptdist.training.engine import load_ds_config

    if args.then_tpt < 1:
        raise PtdistError(f"--then-tpt {args.then_tpt}: give how many of the top sources to "
                          "train from (at least 1)")
    train = {**study, **{k: v for k, v in (("steps", args.steps), ("lr", args.lr),
                                           ("eval_every", args.eval_every)) if v is not None}}
    TrainConfig(model=args.model, task=task_ref, **train)
    load_ds_config(args.ds_config)
    return train


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


def _then_tpt(args, store, result, candidates, task_ref, train, seeds, payload) -> list[str]:
    from ptdist.orchestration.stages import run_tpt
    from ptdist.recommend.evidence import compared, stated
    from ptdist.recommend.tpt import outcomes, top_sources, tpt_plan
    from ptdist.reporting.figures import tpt_figure
    from ptdist.store.layout import TPT_CURVES, TPT_FIGURE
    from ptdist.store.results import TptCurveRow
    from ptdist.store.tables import read_records
    from ptdist.transfer.tpt import run_seeds

    top = top_sources(result, candidates, args.then_tpt)
    plan = tpt_plan(result, top, task_ref, train, seeds, data_dir=absolute(args.data_dir),
                    ds_config=args.ds_config, tolerance=args.tolerance)
    summary = run_tpt(store, plan, job_resources(args), execution(args)).summary
    folder = plan.folder(store, result.task)
    curves = read_records(folder / TPT_CURVES, TptCurveRow)
    run_seed = run_seeds(store, curves)
    tpt_figure(curves, summary, folder / TPT_FIGURE, run_seed)
    measured = outcomes(summary, curves, run_seed, top)
    payload["tpt"] = {"folder": str(folder), "seeds": list(seeds),
                      "runs": [o.to_json() for o in measured]}
    lines = [f"TPT on {result.task}, seeds {', '.join(map(str, seeds))} (each seed's runs "
             f"against its vanilla run; evaluated {measured[0].grid}, so a speed-up is a ratio "
             "of two evaluation steps):"]
    for o in measured:
        predicted = "" if o.rank is None else f" (predicted rank {_rank(o)})"
        lines.append(f"{o.run}{predicted}: best {stated(o.best)}; at step 0 {stated(o.start)}")
        if o.gain is not None:
            per_seed = ", ".join(f"seed {s}: {_speedup(v)}" for s, v in o.speedups.items())
            lines += ["    best - vanilla's best: "
                      f"{compared(o.gain, 'higher', 'lower', ' points')}",
                      "    area under the learning curve - vanilla's: "
                      f"{compared(o.area_gain, 'higher', 'lower', ' points')}",
                      f"    speed-up to vanilla's best: {per_seed}"]
    return lines + [f"curves and tables: {folder} ({TPT_FIGURE})"]


def _speedup(value: float | None) -> str:
    if value is None:
        return "never reached"
    return "reached at step 0" if value == float("inf") else f"{value:.2f}x"


def register(command) -> None:
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
    r.add_argument("--ds-config", default="zero0",
                   help="TPT runs' DeepSpeed config (default zero0)")
    r.add_argument("--batch-size", type=int, default=64,
                   help="examples x prompts per forward pass of the scoring (default 64)")
    add_tolerance(r)
    add_precision(r)
    add_execution(r)
    add_job_resources(r)
    add_data(r)
    add_store(r)
