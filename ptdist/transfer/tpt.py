"""TPT: prompt tuning on a target task initialised from another prompt (the prompt only:
optimizer state, schedule and step counter start fresh, as for any ``prompt:`` init), run beside
vanilla prompt tuning with the same settings, under one learning-rate schedule (which the
summary records: under a linear decay vanilla PT tends to peak at its last evaluation, which
favours any run that gets there sooner), with the speed-up read off their learning curves
(every run is evaluated at step 0, before its first update, so a curve starts where its prompt
did):

    speed-up = steps vanilla PT needs to reach its best evaluation score
               / steps TPT needs to first reach that score

and, with a tolerance t (default 0.99), the same ratio for the first step at which each run
reaches t x vanilla's best: a best score reached once, late, by a noisy curve no longer decides
the whole comparison. A run that reaches the threshold at step 0 (its starting prompt already
does) has an infinite speed-up; two runs that both start there have a speed-up of 1.

Steps-to-target is known only to the nearest evaluation (`evaluation_grid`): on a grid of every
100 of 300 steps a speed-up is a ratio of two of 100, 200 and 300. Beside it, the area under
each learning curve (`curve_area`: its mean score over the steps both runs cover) compares the
whole curves, not one crossing.

A `TptPlan` says which runs a comparison needs (vanilla and each source on each target); the
runs are ordinary prompt-tuning runs, trained (or found in the store) by whoever runs the plan,
and `tpt_summary` reads their curves from the store. TPT_task starts from another task's prompt
of the same model (`task_plan`); TPT_model (`ptdist.projection.tpt`) from a projected prompt of
another model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptdist.errors import PtdistError
from ptdist.store import Store
from ptdist.store.layout import TPT_CURVES, TPT_SUMMARY
from ptdist.store.manifests import PromptManifest
from ptdist.store.prompts import best_per_task
from ptdist.store.results import TptCurveRow, TptSummaryRow
from ptdist.store.tables import write_records
from ptdist.tasks import get_task
from ptdist.training.config import TrainConfig
from ptdist.training.run import plan_run

TASK_PLACEHOLDER, PROMPT_PLACEHOLDER = "{task}", "{prompt}"
TOLERANCE = 0.99


@dataclass(frozen=True)
class TptSource:
    """One kind of TPT run: its label, the init it starts from (``{task}`` stands for the
    target task's name, ``{prompt}`` for the id of its prompt), and per (target task name,
    seed) the prompt it comes from (whose task and id the summary reports)."""

    label: str
    init: str
    prompts: dict[tuple[str, int], PromptManifest]

    def init_for(self, target: str, seed: int) -> str:
        return self.init.replace(TASK_PLACEHOLDER, target).replace(
            PROMPT_PLACEHOLDER, self.prompts[target, seed].id)


@dataclass(frozen=True)
class TptPlan:
    """Vanilla PT and each source's TPT run on each target task, with the same settings, once
    per seed (a seed's TPT runs start from that seed's source prompts, and are compared with
    that seed's vanilla run: each seed is one replicate of the comparison)."""

    model: str
    targets: tuple[str, ...]  # task names or task YAML paths
    sources: tuple[TptSource, ...]
    train: dict[str, Any] = field(hash=False)  # TrainConfig settings: steps, lr...
    data_dir: str | None = None
    ds_config: str = "zero0"
    projector: str | None = None  # TPT_model: the projector of the sources' prompts
    tolerance: float = TOLERANCE  # the tolerance speed-up's threshold, x vanilla's best
    seeds: tuple[int, ...] = (0,)

    def runs(self) -> list[tuple[str, int, str, TrainConfig]]:
        """``(target name, seed, run label, config)`` of every run, vanilla first per target
        and seed."""
        out = []
        for ref in self.targets:
            name = get_task(ref).name
            for seed in self.seeds:
                for label, init in [("vanilla", "random"),
                                    *((s.label, s.init_for(name, seed)) for s in self.sources)]:
                    out.append((name, seed, label, TrainConfig(
                        model=self.model, task=ref, init=init, ds_config=self.ds_config,
                        data_dir=self.data_dir, **dict(self.train, seed=seed))))
        return out

    def folder(self, store: Store, target: str) -> Path:
        return store.layout.tpt_dir(target, model=self.model, projector=self.projector)


def check_lengths(sources: Sequence[TptSource], train: dict[str, Any]) -> dict[str, Any]:
    """``train`` with the sources' prompt length: TPT starts from them, so every source and
    an explicit ``prompt_length`` must agree."""
    lengths = {m.prompt_length for s in sources for m in s.prompts.values()}
    if len(lengths) > 1 or ("prompt_length" in train and train["prompt_length"] not in lengths):
        raise PtdistError(f"the source prompts have length(s) {sorted(lengths)}; TPT starts from "
                          "them, so every source and --prompt-length must agree")
    return dict(train, prompt_length=lengths.pop())


def resolve_source(store: Store, model: str, ref: str,
                   prompts: Sequence[PromptManifest]) -> PromptManifest:
    """A source prompt given as a store id, or as a task (its best prompt among ``prompts``)."""
    if store.prompts.has(ref):
        manifest = store.prompts.manifest(ref)
        if manifest.model != model:
            raise PtdistError(f"prompt {ref} was trained on '{manifest.model}', not '{model}'; "
                              "a prompt transfers across models only through a projector")
        return manifest
    name = get_task(ref).name
    return best_per_task(prompts, [name], f"of model '{model}' in store {store.root}")[name]


def task_plan(store: Store, model: str, targets: Sequence[str], sources: Sequence[str],
              prompts: Sequence[PromptManifest], train: dict[str, Any],
              seeds: Sequence[int] | None = None, **placement: Any) -> TptPlan:
    """TPT_task: vanilla PT and TPT from each source (a prompt id, or a task) on each target;
    ``placement``: data_dir, ds_config, tolerance. Given ``seeds`` (a study's), once per seed,
    a task's source being its best prompt among ``prompts`` of that seed; else with the seed of
    ``train``, a task's source being its best prompt among all of ``prompts``."""
    names = [get_task(t).name for t in targets]
    runs = []
    for ref in sources:
        found = ({seed: resolve_source(store, model, ref, [m for m in prompts if m.seed == seed])
                  for seed in seeds} if seeds else
                 {train.get("seed", TrainConfig.seed): resolve_source(store, model, ref, prompts)})
        first = next(iter(found.values()))
        runs.append(TptSource(f"tpt from {first.task}", f"prompt:{PROMPT_PLACEHOLDER}",
                              {(n, seed): m for n in names for seed, m in found.items()}))
    return TptPlan(model, tuple(targets), tuple(runs), check_lengths(runs, train),
                   seeds=tuple(seeds or (train.get("seed", TrainConfig.seed),)), **placement)


@dataclass
class TptResult:
    summary: list[TptSummaryRow]
    folders: list[Path]  # one per target: curves.parquet, summary.parquet


def first_reach(history: list[dict], metric: str, threshold: float) -> dict | None:
    """The first evaluation of a learning curve that scores at least ``threshold``."""
    return next((h for h in history if h[metric] >= threshold), None)


def speedup(vanilla_steps: int, steps: int | None) -> float | None:
    """Vanilla's steps over a run's (None: the run never got there)."""
    if steps is None:
        return None
    if steps == 0:
        return float("inf") if vanilla_steps else 1.0
    return vanilla_steps / steps


def curve_area(steps: Sequence[int], scores: Sequence[float], until: int) -> float:
    """The area under a learning curve from step 0 to ``until`` (trapezoids between
    evaluations), divided by ``until``: the curve's mean score over those steps (its score at
    step 0 when ``until`` is 0). The curve must be evaluated at step 0 and at ``until``."""
    points = sorted((step, score) for step, score in zip(steps, scores) if step <= until)
    if not points or points[0][0] != 0 or points[-1][0] != until:
        raise PtdistError(f"a learning curve evaluated at steps {sorted(steps)} does not cover "
                          f"steps 0 to {until}")
    if until == 0:
        return points[0][1]
    area = sum((b - a) * (sa + sb) / 2 for (a, sa), (b, sb) in zip(points, points[1:]))
    return area / until


def evaluation_grid(steps: Sequence[int]) -> str:
    """A curve's evaluation steps in words: "every 100 of 300 steps" or the list."""
    ordered = sorted(set(steps))
    gaps = {b - a for a, b in zip(ordered, ordered[1:])}
    if ordered and ordered[0] == 0 and len(gaps) == 1:
        return f"every {gaps.pop()} of {ordered[-1]} steps"
    return "at steps " + ", ".join(map(str, ordered))


def speedup_rows(vanilla: PromptManifest,
                 runs: list[tuple[str, PromptManifest | None, PromptManifest]],
                 tolerance: float = TOLERANCE) -> list[TptSummaryRow]:
    """Summary rows for the vanilla run and each (label, source prompt, TPT run)."""
    metric = vanilla.metric
    schedules = {m.config.get("schedule", TrainConfig.IMPLICIT["schedule"])
                 for m in [vanilla, *(run for _, _, run in runs)]}
    if len(schedules) > 1:
        raise PtdistError(f"TPT compares vanilla and transferred runs under one learning-rate "
                          f"schedule; the runs on {vanilla.task} used "
                          f"{', '.join(sorted(schedules))}: train them with the same --schedule")
    schedule = schedules.pop()
    best = max(h[metric] for h in vanilla.history)
    target = tolerance * best
    vanilla_hit = first_reach(vanilla.history, metric, best)
    vanilla_near = first_reach(vanilla.history, metric, target)
    rows = []
    for label, source, run in [("vanilla", None, vanilla), *runs]:
        hit, near = first_reach(run.history, metric, best), first_reach(run.history, metric,
                                                                        target)
        start = next((h[metric] for h in run.history if h["step"] == 0), None)
        rows.append(TptSummaryRow(
            model=vanilla.model, target_task=vanilla.task, run=label,
            source_task=source.task if source else None,
            source_prompt=source.id if source else None, prompt_id=run.id, metric=metric,
            start_score=start, best_score=run.score, best_step=run.best_step,
            vanilla_best=best, steps_to_vanilla_best=hit["step"] if hit else None,
            time_to_vanilla_best_s=hit["time_s"] if hit else None,
            speedup=speedup(vanilla_hit["step"], hit["step"] if hit else None),
            tolerance=tolerance, steps_to_tolerance=near["step"] if near else None,
            speedup_tolerance=speedup(vanilla_near["step"], near["step"] if near else None),
            schedule=schedule))
    return rows


def tpt_summary(store: Store, plan: TptPlan) -> TptResult:
    """Curves and speed-ups of a plan whose runs are all in the store, written per target
    under `TptPlan.folder` (every seed's runs in one table)."""
    ids = {(target, seed, label): plan_run(config, store).prompt_id
           for target, seed, label, config in plan.runs()}
    summary, folders = [], []
    for target in dict.fromkeys(t for t, _, _ in ids):
        rows, curves = [], []
        for seed in plan.seeds:
            vanilla = store.prompts.manifest(ids[(target, seed, "vanilla")])
            runs = [(s.label, s.prompts[target, seed],
                     store.prompts.manifest(ids[(target, seed, s.label)])) for s in plan.sources]
            rows += speedup_rows(vanilla, runs, plan.tolerance)
            curves += [TptCurveRow(model=vanilla.model, target_task=target, run=label,
                                   source_task=source.task if source else None, prompt_id=m.id,
                                   step=h["step"], score=h[vanilla.metric], time_s=h["time_s"])
                       for label, source, m in [("vanilla", None, vanilla), *runs]
                       for h in m.history]
        folder = plan.folder(store, target)
        write_records(folder / TPT_CURVES, TptCurveRow, curves)
        write_records(folder / TPT_SUMMARY, TptSummaryRow, rows)
        folders.append(folder)
        summary += rows
    return TptResult(summary, folders)
