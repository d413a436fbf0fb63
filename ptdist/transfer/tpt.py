"""TPT: prompt tuning on a target task initialised from another prompt (the prompt only:
optimizer state, schedule and step counter start fresh, as for any ``prompt:`` init), run beside
vanilla prompt tuning, with the speed-up read off their learning curves (every run is
evaluated at step 0, before its first update, so a curve starts where its prompt did):

    speed-up = steps vanilla PT needs to reach its best evaluation score
               / steps TPT needs to first reach that score

and, with a tolerance t (default 0.99), the same ratio for the first step at which each run
reaches t x vanilla's best: a best score reached once, late, by a noisy curve no longer decides
the whole comparison. A run that reaches the threshold at step 0 (its starting prompt already
does) has an infinite speed-up; two runs that both start there have a speed-up of 1.

A `TptPlan` says which runs a comparison needs (vanilla and each source on each target, for
one seed or for each of several: each seed is its own comparison); the runs are ordinary
prompt-tuning runs, trained (or found in the store) by whoever runs the plan,
and `tpt_summary` reads their curves from the store. TPT_task starts from another task's prompt
of the same model (`task_plan`); TPT_model (`ptdist.projection.tpt`) from a projected prompt of
another model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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

TASK_PLACEHOLDER = "{task}"
TOLERANCE = 0.99


class SourcePrompt(Protocol):
    """What a TPT summary reports of the prompt a run starts from: a stored prompt's manifest,
    or a prompt that is not the store's (a file, a projected prompt)."""

    id: str
    task: str

    @property
    def prompt_length(self) -> int: ...


@dataclass(frozen=True)
class TptSource:
    """One kind of TPT run: its label, the init it starts from (``{task}`` stands for the
    target task's name), and per target task name the prompt it comes from (whose task and id
    the summary reports)."""

    label: str
    init: str
    prompts: dict[str, SourcePrompt]


@dataclass(frozen=True)
class TptPlan:
    """Vanilla PT and each source's TPT run on each target task, with the same settings."""

    model: str
    targets: tuple[str, ...]  # task names or task YAML paths
    sources: tuple[TptSource, ...]
    train: dict[str, Any] = field(hash=False)  # TrainConfig settings: steps, lr, seed...
    data_dir: str | None = None
    ds_config: str = "zero0"
    projector: str | None = None  # TPT_model: the projector of the sources' prompts
    tolerance: float = TOLERANCE  # the tolerance speed-up's threshold, x vanilla's best
    seeds: tuple[int, ...] = ()  # a comparison per seed (none: the seed of ``train``)

    def runs(self) -> list[tuple[str, str, TrainConfig]]:
        """``(target name, run label, config)`` of every run, vanilla first per target and
        seed."""
        out = []
        for ref in self.targets:
            name = get_task(ref).name
            for seed in self.seeds or (None,):
                train = self.train if seed is None else dict(self.train, seed=seed)
                for label, init in [("vanilla", "random"),
                                    *((s.label, s.init) for s in self.sources)]:
                    out.append((name, label, TrainConfig(
                        model=self.model, task=ref, init=init.replace(TASK_PLACEHOLDER, name),
                        ds_config=self.ds_config, data_dir=self.data_dir, **train)))
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
              **placement: Any) -> TptPlan:
    """TPT_task: vanilla PT and TPT from each source (a prompt id, or a task: its best prompt
    among ``prompts``) on each target; ``placement``: data_dir, ds_config."""
    names = [get_task(t).name for t in targets]
    runs = [TptSource(f"tpt from {m.task}", f"prompt:{m.id}", dict.fromkeys(names, m))
            for m in (resolve_source(store, model, s, prompts) for s in sources)]
    return TptPlan(model, tuple(targets), tuple(runs), check_lengths(runs, train), **placement)


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


def speedup_rows(vanilla: PromptManifest,
                 runs: list[tuple[str, SourcePrompt | None, PromptManifest]],
                 tolerance: float = TOLERANCE) -> list[TptSummaryRow]:
    """Summary rows for the vanilla run and each (label, source prompt, TPT run)."""
    metric = vanilla.metric
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
            speedup_tolerance=speedup(vanilla_near["step"], near["step"] if near else None)))
    return rows


def tpt_summary(store: Store, plan: TptPlan) -> TptResult:
    """Curves and speed-ups of a plan whose runs are all in the store, written per target
    under `TptPlan.folder` (each seed's runs compared with that seed's vanilla run; a row's
    prompt id names its run, and so its seed)."""
    ids = {(target, label, config.seed): plan_run(config, store).prompt_id
           for target, label, config in plan.runs()}
    summary, folders = [], []
    for target in dict.fromkeys(t for t, _, _ in ids):
        rows, curves = [], []
        for seed in dict.fromkeys(s for t, _, s in ids if t == target):
            vanilla = store.prompts.manifest(ids[(target, "vanilla", seed)])
            runs = [(s.label, s.prompts[target],
                     store.prompts.manifest(ids[(target, s.label, seed)]))
                    for s in plan.sources]
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
