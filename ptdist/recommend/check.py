"""The recommendation checked against measured transfer: leave one task out of a study store.

Each task T of a model's transfer matrix in turn is the "new" task, its own prompts hidden,
once per seed of the study: the candidates are the model's prompts of the other tasks of that
seed (and other models' prompts of that seed through projectors not trained on T), ranked as
`ptdist recommend` ranks them (zero-shot on T's training rows beside the random prompt of that
seed; with ``probe_steps``, a probe compared by the indicator that the study's correlation
ranks best *without T*). The ranking is then compared with what the study measured on T's
evaluation rows (the matrix: each source task's score on T, its prompts of that seed) and,
where the study ran TPT on T, with the TPT runs' best scores of that seed:

- top-1 hit: the first-ranked source task is the measured best; top-3: the best is among the
  first three;
- Spearman between the predicted order and the measured scores (folds with `MIN_SPEARMAN` or
  more source tasks only);
- regret: the measured best score minus the chosen source's.

Only the model's own prompts have measured scores, so a projected or file candidate is ranked
but not counted. A fold whose target's own prompts are not clearly above their baselines
(`unusable_tasks`) is listed but not counted: transfer to a task the model did not learn is
not evidence about transfer. Three baselines get the same measures, in expectation over their
random choices: a random source task; a source task of the target's type as the registry
declares it (the others after it; a random source where none has the type); and no transfer
(the matrix's random prompts' score on T: its regret only).

**The seed is the unit** (`evidence`): the folds of one seed share its prompts (each task is a
source in the others), so a measure is averaged over the counted folds of each seed, and its
interval and the paired comparison with each baseline are over the seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ptdist.neurons.correlation import correlation_rows, matrix_coefficients
from ptdist.recommend.candidates import projected_candidates, store_candidates
from ptdist.recommend.evidence import compared, difference, over_seeds
from ptdist.recommend.ranking import can_capture, pick_indicator
from ptdist.recommend.recommendation import (RecommendSettings, recommend, study_settings,
                                             train_probe)
from ptdist.scoring import inference_precision, load
from ptdist.statistics import Interval, spearman
from ptdist.store import Store
from ptdist.store.layout import TPT_SUMMARY
from ptdist.store.results import IndicatorRow, MatrixRow, TptSummaryRow
from ptdist.store.tables import read_records
from ptdist.transfer.matrix import cells, own_prompts, unusable_tasks
from ptdist.transfer.tpt import run_seeds

MIN_SPEARMAN = 3  # source tasks a fold needs for its Spearman coefficient
RANDOM = "a random source"


@dataclass(frozen=True)
class Fold:
    """One task as the new one, on one seed's prompts: the predicted order of its source
    tasks beside the measured scores."""

    model: str
    target: str
    target_type: str
    seed: int
    learned: bool  # its own prompts clearly above its majority class and a random prompt
    predicted: list[str]  # source tasks, best first
    measured: dict[str, float]  # source task -> its score on the target (matrix, this seed)
    types: dict[str, str]  # source task -> its type
    random_score: float  # the random prompts' score on the target (no transfer)
    tpt: dict[str, float] = field(default_factory=dict)  # source -> TPT best score, this seed

    @property
    def best(self) -> str:
        return max(self.measured, key=lambda s: (self.measured[s], s))

    @property
    def regret(self) -> float:
        return self.measured[self.best] - self.measured[self.predicted[0]]

    @property
    def spearman(self) -> float:
        if len(self.predicted) < MIN_SPEARMAN:
            return float("nan")
        return spearman([-k for k in range(len(self.predicted))],
                        [self.measured[s] for s in self.predicted])

    def hit(self, k: int) -> float:
        return float(self.best in self.predicted[:k])

    def random_hit(self, k: int) -> float:
        return min(k, len(self.measured)) / len(self.measured)

    def random_regret(self) -> float:
        top = self.measured[self.best]
        return float(np.mean([top - v for v in self.measured.values()]))

    def same_type(self) -> list[str]:
        return [s for s in self.measured if self.types[s] == self.target_type]

    def same_type_hit(self, k: int) -> float:
        """The chance that the best is among the first ``k`` of a ranking that puts the
        same-type sources first, each group in random order."""
        same = self.same_type()
        others = len(self.measured) - len(same)
        if self.best in same:
            return min(k, len(same)) / len(same)
        return max(0, k - len(same)) / others if others else 0.0

    def same_type_regret(self) -> float:
        same = self.same_type()
        if not same:
            return self.random_regret()
        return float(np.mean([self.measured[self.best] - self.measured[s] for s in same]))

    def no_transfer_regret(self) -> float:
        return self.measured[self.best] - self.random_score

    def tpt_hit(self) -> float | None:
        """Whether the first-predicted of the TPT sources had the best TPT score (None with
        fewer than two TPT sources: nothing to rank)."""
        ranked = [s for s in self.predicted if s in self.tpt]
        if len(ranked) < 2:
            return None
        return float(self.tpt[ranked[0]] == max(self.tpt.values()))

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "target": self.target, "target_type": self.target_type,
                "seed": self.seed, "learned": self.learned, "predicted": self.predicted,
                "measured": self.measured, "best": self.best, "regret": self.regret,
                "spearman": self.spearman, "random_score": self.random_score, "tpt": self.tpt}


def leave_one_task_out(store: Store, model: str, settings: RecommendSettings,
                       probe_steps: int | None = None) -> list[Fold]:
    """A fold per task of ``model``'s transfer matrix and seed of its prompts (module
    docstring), the model loaded once; a fold with fewer than two ranked and measured sources
    (nothing to choose between) is not formed."""
    matrix = read_records(store.layout.matrix(model), MatrixRow)
    manifests = {m.id: m for m in own_prompts(store.prompts.select(model))}
    used = [manifests[r.source_prompt] for r in matrix if r.source_task == r.target_task]
    refs = {m.task: m.task_ref for m in used}
    seeds = sorted({m.seed for m in used})
    study = study_settings(used)
    data_dir = used[0].data_dir if settings.data_dir is None else settings.data_dir
    indicator_table = store.layout.indicators(model)
    indicators = read_records(indicator_table, IndicatorRow) if indicator_table.exists() else []
    learned_not = unusable_tasks(matrix)
    folds = []
    with load(model, settings.max_length, inference_precision(used, settings.precision),
              settings.device) as backbone:
        for target, ref in refs.items():
            candidates = store_candidates(store, model, target) + \
                projected_candidates(store, model, target)
            probe = indicator = None
            if probe_steps is not None:
                probe = train_probe(store, model, ref, probe_steps, candidates, study, data_dir)
                held_out = [r for r in matrix if target not in (r.source_task, r.target_task)]
                indicator = pick_indicator(
                    correlation_rows(model, *matrix_coefficients(store, held_out, indicators))
                    if indicators else [], model, can_capture(backbone))
            tpt = _tpt_scores(store, model, target)
            for seed in seeds:
                measured = _measured(matrix, target, seed)
                mine = [c for c in candidates if c.seed == seed]
                if len(measured) < 2 or not mine:
                    continue
                result = recommend(store, model, ref, mine, replace(settings, seeds=(seed,)),
                                   probe, indicator, backbone)
                predicted = list(dict.fromkeys(r.source_task for r in result.rows
                                               if r.origin == "store" and r.source_task in
                                               measured))
                if len(predicted) < 2:
                    continue
                column = [r for r in matrix if r.target_task == target]
                folds.append(Fold(model, target, column[0].target_type, seed,
                                  target not in learned_not, predicted, measured,
                                  {r.source_task: r.source_type for r in column},
                                  column[0].random_score, tpt.get(seed, {})))
    return folds


def _measured(matrix: Sequence[MatrixRow], target: str, seed: int) -> dict[str, float]:
    """Each source task's score on ``target`` by its prompts of ``seed`` (`cells`)."""
    return {source: values[seed]
            for (source, to), values in cells(matrix, "score").items()
            if to == target and source != target and seed in values}


def _tpt_scores(store: Store, model: str, target: str) -> dict[int, dict[str, float]]:
    """Per seed, each source task's best TPT score on ``target``."""
    table = store.layout.tpt_dir(target, model=model) / TPT_SUMMARY
    if not table.exists():
        return {}
    rows = read_records(table, TptSummaryRow)
    seeds = run_seeds(store, rows)
    found: dict[int, dict[str, float]] = {}
    for r in rows:
        if r.source_task is not None:
            found.setdefault(seeds[r.prompt_id], {})[r.source_task] = r.best_score
    return found


@dataclass(frozen=True)
class Measure:
    """One measure of the recommendation beside its baselines: each the mean over the seeds
    of its mean over the seed's counted folds."""

    name: str
    folds: int  # counted folds, over all seeds
    recommended: Interval
    baselines: dict[str, Interval]
    comparisons: dict[str, str]  # baseline -> the paired difference over seeds, in words


def summarise(folds: Sequence[Fold]) -> list[Measure]:
    """Top-1, top-3, Spearman, regret and (where the study ran TPT from two or more sources)
    the TPT top-1 over the counted folds, beside the baselines, each compared with them by
    the paired t-test over seeds (`evidence.compared`; a hit rate not distinguishable from a
    random source's is at chance)."""
    counted = [f for f in folds if f.learned]

    def per_seed(value: Callable[[Fold], float | None]) -> tuple[dict[int, float], int]:
        """Each seed's mean over its counted folds that define ``value``, and how many those
        are."""
        found: dict[int, list[float]] = {}
        for f in counted:
            v = value(f)
            if v is not None and math.isfinite(v):
                found.setdefault(f.seed, []).append(v)
        return ({seed: float(np.mean(values)) for seed, values in found.items()},
                sum(map(len, found.values())))

    def measure(name: str, mine: Callable[[Fold], float | None],
                baselines: dict[str, Callable[[Fold], float | None]],
                lower_is_better: bool = False) -> Measure:
        ours, n = per_seed(mine)
        theirs = {base: per_seed(value)[0] for base, value in baselines.items()}
        words = {}
        for base, values in theirs.items():
            # the recommendation's improvement over the baseline, seed by seed
            gain = difference(values, ours) if lower_is_better else difference(ours, values)
            same = "at chance (not distinguishable from a random source)" if \
                base == RANDOM and name.endswith("hit rate") else "not distinguishable"
            words[base] = compared(gain, f"better than {base}", f"worse than {base}",
                                   same=same)
        return Measure(name, n, over_seeds(ours), {b: over_seeds(v) for b, v in theirs.items()},
                       words)

    out = [measure(f"top-{k} hit rate", lambda f, k=k: f.hit(k),
                   {RANDOM: lambda f, k=k: f.random_hit(k),
                    "the same task type": lambda f, k=k: f.same_type_hit(k)})
           for k in (1, 3)]
    out.append(measure("Spearman (predicted order vs measured)", lambda f: f.spearman,
                       {RANDOM: lambda f: 0.0 if np.isfinite(f.spearman) else None}))
    out.append(measure("regret (best - chosen, score points)", lambda f: f.regret,
                       {RANDOM: Fold.random_regret, "the same task type": Fold.same_type_regret,
                        "no transfer": Fold.no_transfer_regret}, lower_is_better=True))
    if any(f.tpt_hit() is not None for f in counted):
        out.append(measure("TPT top-1 (best TPT score)", Fold.tpt_hit, {}))
    return out
