"""The quickstart's prompt stage with issue 28's levers on and off, side by side: what
`benchmarks/study.py --levers` runs.

Every case trains the same runs (the study's own, as its prompt stage plans them, or the subset
`--tasks/--models/--seeds/--steps` picks) on `--workers` processes of one torch thread each,
each case into a fresh store, the cases interleaved run by run (off, bucket, cut, stop, all
for the first run, then the second...) so a burst of load from another process hits every case
alike. A case's CPU-seconds are its worker's (`time.process_time`, all its threads) over its
runs' `train` calls, summed over runs; the padded-token fraction is that of the training
batches those runs trained on, counted from the batch order, the cut and the tokenizer (text
plus special tokens; the prompt is never padding); and each run's best score against the same
run's under `off`, as a paired t over the runs (a lever that keeps results holds 0).

The compile check times one model's training step eager and compiled (`torch.compile`,
`compiled.TrainingStep`) on the same real batches: the compile's own CPU-seconds, the median
step after it, and the steps a run needs before compiling pays.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

from common import load, setup, table

from ptdist.statistics import paired

# Each lever's "on" settings; "off" is TrainConfig's defaults, the runs of today's presets.
# The stop lever's min_steps is 2/3 of the run's steps (200 of the quickstart's 300).
LEVERS = {"bucket": dict(bucket_window=50), "cut": dict(length_quantile=0.99),
          "stop": dict(patience=1)}
CASES = ("off", *LEVERS, "all")


def _with(config, case: str, full_curves: tuple[str, ...]):
    """``config`` with ``case``'s levers; a run whose whole curve TPT compares never stops
    early, as in the study."""
    from ptdist.tasks import get_task

    names = list(LEVERS) if case == "all" else [case] if case in LEVERS else []
    settings = {k: v for name in names for k, v in LEVERS[name].items()}
    if "patience" in settings:
        settings["min_steps"] = config.steps * 2 // 3
    config = replace(config, **settings)
    return config.to_the_end() if get_task(config.task).name in full_curves else config


def planned_runs(study: Path, data_dir: str | None, tasks, models, seeds, steps):
    """The study's prompt-stage runs (levers off), narrowed to the subset asked for."""
    from ptdist.orchestration.spec.study_spec import load_study
    from ptdist.tasks import get_task

    spec = load_study(study, data_dir=data_dir).spec
    runs = [r.config for r in spec.runs()
            if (not tasks or get_task(r.config.task).name in tasks)
            and (not models or any(m in r.config.model for m in models))
            and (not seeds or r.config.seed in seeds)]
    return [replace(c, steps=steps) if steps else c for c in runs], spec.full_curves


def padded_fraction(config, steps: int, backbones: dict) -> tuple[int, int]:
    """(padding tokens, all tokens) of the training batches of ``steps`` steps of ``config``."""
    from ptdist.backbones import load_backbone
    from ptdist.tasks import get_task
    from ptdist.training.data import BatchOrder
    from ptdist.training.lengths import row_lengths, text_cut
    from ptdist.training.run import read_run_data

    key = config.model, config.max_length
    if key not in backbones:
        backbones[key] = load_backbone(config.model, max_length=config.max_length)
    backbone = backbones[key]
    rows = read_run_data(config, get_task(config.task)).train
    cut = None if config.length_quantile is None else \
        text_cut(backbone, rows, config.length_quantile)
    lengths = row_lengths(backbone, rows, cut)
    order = BatchOrder(len(rows), config.batch_size, config.seed, config.bucket_window, lengths)
    pad = total = 0
    for step in range(steps):
        sizes = lengths(order(step))
        pad += sum(max(sizes) - s for s in sizes)
        total += (max(sizes) + backbone.specials) * len(sizes)
    return pad, total


def run_levers(runs, full_curves, cases=CASES, workers: int = 1) -> None:
    """Train every run under every case of ``cases`` on ``workers`` processes (one torch
    thread each); print each run as it ends and the table of cases after each run's cases."""
    firsts = list({c.model: c for c in reversed(runs)}.values())
    sums = {c: dict(cpu=0.0, wall=0.0, steps=0, planned=0, pad=0, total=0, stopped=[],
                    scores={}) for c in cases}
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=_warm_up,
            initargs=(firsts, tmp)) as pool:
        done = [[pool.submit(_train_case, config, case, full_curves, tmp) for case in cases]
                for config in runs]
        for futures in done:
            for future in futures:
                r = future.result()
                s = sums[r["case"]]
                for key in ("cpu", "wall", "steps", "planned", "pad", "total"):
                    s[key] += r[key]
                if r["steps"] < r["planned"]:
                    s["stopped"].append(f"{r['task']} s{r['seed']} at {r['steps']}")
                s["scores"][r["model"], r["task"], r["seed"]] = r["score"]
                print(f"  {r['case']:6s} {r['model']} {r['task']} seed {r['seed']}: "
                      f"{r['steps']}/{r['planned']} steps, best {r['score']:.2f} at step "
                      f"{r['best']}, {r['cpu']:.1f} CPU-s", flush=True)
            load()
            _summary(sums)  # after each run's cases: a run cut short still leaves its figures


def _warm_up(firsts, tmp: str) -> None:
    """A worker's untimed start: each model's first load and first steps."""
    import torch

    from ptdist.logs import setup as logs_at
    from ptdist.store import Store
    from ptdist.training import train

    torch.set_num_threads(1)
    setup()
    logs_at(logging.WARNING)
    for first in firsts:
        train(replace(first, steps=2, eval_every=2, eval_limit=16),
              Store(Path(tmp) / f"warm-{os.getpid()}"))


_BACKBONES: dict = {}  # a worker's tokenizers for the padded-fraction count


def _train_case(config, case: str, full_curves: tuple[str, ...], tmp: str) -> dict:
    """One run under one case in a fresh store of this worker: its CPU-seconds (this process,
    all threads, over ``train``), wall seconds, steps and padded-token count."""
    from ptdist.store import Store
    from ptdist.training import train

    c = _with(config, case, full_curves)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = train(c, Store(Path(tmp) / f"{case}-{os.getpid()}"))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    pad, total = padded_fraction(c, result.steps_run, _BACKBONES)
    return dict(case=case, model=c.model, task=Path(c.task).stem, seed=c.seed, cpu=cpu,
                wall=wall, steps=result.steps_run, planned=c.steps, best=result.best_step,
                score=result.score, pad=pad, total=total)


def _summary(sums: dict) -> None:
    """The table of cases: CPU-seconds against off's, and each run's best score against the
    same run's under off (a paired t over runs: a lever that keeps results holds 0)."""
    off = sums["off"]["cpu"] if "off" in sums else math.nan
    off_scores = sums["off"]["scores"] if "off" in sums else {}
    print(table(["case", "CPU-s", "CPU-s / off", "saving CPU-s", "wall s", "steps run",
                 "padded fraction", "stopped early", "best score - off's [95 %]"],
                [[case, s["cpu"], s["cpu"] / off, off - s["cpu"], s["wall"],
                  f"{s['steps']}/{s['planned']}", s["pad"] / s["total"],
                  ", ".join(s["stopped"]) or "-",
                  _score_change(s["scores"], off_scores)] for case, s in sums.items()]))


def _score_change(scores: dict, off: dict) -> str:
    change = paired(scores, off, "paired t over runs")
    return f"{change} ({change.basis('run')})"


def compile_check(config, steps: int) -> None:
    """One model's training step, eager and compiled, on the same ``steps`` real batches."""
    import torch

    from ptdist.backbones import load_backbone
    from ptdist.tasks import get_task
    from ptdist.training.compiled import TrainingStep
    from ptdist.training.data import global_batch
    from ptdist.training.run import read_run_data

    task = get_task(config.task)
    backbone = load_backbone(config.model, max_length=config.max_length)
    data = read_run_data(config, task)
    words = task.words_for(backbone.kind)
    batches = [backbone.collate([data.train[i] for i in global_batch(
        s, len(data.train), config.batch_size, config.seed)], words) for s in range(steps)]
    prompt0 = torch.randn(config.prompt_length, backbone.hidden_size) * 0.5
    rows = []
    for name, compile in (("eager", False), ("compiled", True)):
        step = TrainingStep(backbone, compile)
        times = []
        for batch in batches:
            prompt = prompt0.clone().requires_grad_(True)
            t0 = time.process_time()
            step(prompt, batch, 1)
            times.append(time.process_time() - t0)
        rows.append([name, times[0], statistics.median(times[1:]), step.compiled is not None])
    (_, eager_first, eager, _), (_, first, compiled, kept) = rows
    saving = eager - compiled
    print(table(["step", "first step CPU-s", "median step CPU-s (rest)", "compiled kept"], rows))
    print(f"compile overhead {first - eager_first:.1f} CPU-s; saving per step {saving:.4f} "
          f"CPU-s; pays after "
          + (f"{(first - eager_first) / saving:.0f} steps" if saving > 0 else "never"))


def padding_only(runs, full_curves) -> None:
    """The padded fraction of each run's planned training batches under each case, without
    training (every run counted to its planned steps: early stops are not known untrained)."""
    backbones: dict = {}
    rows = []
    for config in runs:
        cells = []
        for case in ("off", "bucket", "cut", "all"):
            c = _with(config, case, full_curves)
            pad, total = padded_fraction(c, c.steps, backbones)
            cells.append(pad / total)
        rows.append([f"{Path(config.task).stem} seed {config.seed}", config.model, *cells])
    print(table(["run", "model", "off", "bucket", "cut", "all"], rows))
