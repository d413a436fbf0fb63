"""The recommendation checked against measured transfer: leave one task out of a study store.

Each task T of a model's transfer matrix in turn is the "new" task, its own prompts hidden:
the candidates are the model's prompts of the other tasks (and other models' prompts through
projectors not trained on T), ranked as `ptdist recommend` ranks them (zero-shot on T's
training rows; with ``probe_steps``, a probe compared by the indicator that the study's
correlation ranks best *without T*). The ranking is then compared with what the study
measured on T's evaluation rows (the matrix: each source task's mean zero-shot score over its
prompts) and, where the study ran TPT on T, with the TPT runs' best scores:

- top-1 hit: the first-ranked source task is the measured best; top-3: the best is among the
  first three;
- Spearman between the predicted order and the measured scores (targets with 3 or more source
  tasks only);
- regret: the measured best score minus the chosen source's.

Only the model's own prompts have measured scores, so a projected or file candidate is ranked
but not counted. Three baselines get the same measures, in expectation over their random
choices: a random source task; a source task of the target's type as the registry declares it
(the others after it; a random source where none has the type); and no transfer (the
random prompt's score: its regret only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ptdist.neurons.correlation import correlation_rows
from ptdist.recommend.candidates import projected_candidates, store_candidates
from ptdist.recommend.evidence import Estimate, estimate, paired, verdict
from ptdist.recommend.ranking import can_capture, pick_indicator
from ptdist.recommend.recommendation import (RecommendSettings, recommend, study_settings,
                                             train_probe)
from ptdist.statistics import spearman
from ptdist.store import Store
from ptdist.store.layout import TPT_SUMMARY
from ptdist.store.results import IndicatorRow, MatrixRow, TptSummaryRow
from ptdist.store.tables import read_records
from ptdist.training.evaluation import inference_backbone, inference_precision
from ptdist.transfer.matrix import cells, own_prompts, unusable_tasks

MIN_SPEARMAN = 3  # source tasks a fold needs for its Spearman coefficient


@dataclass(frozen=True)
class Fold:
    """One task as the new one: the predicted order of its source tasks beside the measured
    scores."""

    model: str
    target: str
    target_type: str
    learned: bool  # its own prompts clearly above its majority class and a random prompt
    predicted: list[str]  # source tasks, best first (each at its best-ranked prompt)
    measured: dict[str, float]  # source task -> mean zero-shot score on the target (matrix)
    types: dict[str, str]  # source task -> its type
    random_score: float  # the random prompts' score on the target (no transfer)
    tpt: dict[str, float] = field(default_factory=dict)  # source -> mean TPT best score

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
                "learned": self.learned, "predicted": self.predicted, "measured": self.measured,
                "best": self.best, "regret": self.regret, "spearman": self.spearman,
                "random_score": self.random_score, "tpt": self.tpt}


def leave_one_task_out(store: Store, model: str, settings: RecommendSettings,
                       probe_steps: int | None = None) -> list[Fold]:
    """A fold per task of ``model``'s transfer matrix (module docstring), the model loaded
    once."""
    matrix = read_records(store.layout.matrix(model), MatrixRow)
    manifests = {m.id: m for m in own_prompts(store.prompts.select(model))}
    used = [manifests[r.source_prompt] for r in matrix if r.source_task == r.target_task]
    refs = {m.task: m.task_ref for m in used}
    study = study_settings(used)
    data_dir = used[0].data_dir if settings.data_dir is None else settings.data_dir
    indicator_table = store.layout.indicators(model)
    indicators = read_records(indicator_table, IndicatorRow) if indicator_table.exists() else []
    learned_not = unusable_tasks(matrix)
    folds = []
    with inference_backbone(model, settings.max_length,
                            inference_precision(used, settings.precision),
                            settings.device) as backbone:
        for target, ref in refs.items():
            candidates = store_candidates(store, model, target) + \
                projected_candidates(store, model, target)
            probe = indicator = None
            if probe_steps is not None:
                probe = train_probe(store, model, ref, probe_steps, candidates, study, data_dir)
                held_out = [r for r in matrix if target not in (r.source_task, r.target_task)]
                indicator = pick_indicator(
                    correlation_rows(model, held_out, indicators) if indicators else [], model,
                    can_capture(backbone))
            result = recommend(store, model, ref, candidates, settings, probe, indicator,
                               backbone)
            folds.append(_fold(model, target, matrix, result.rows, target not in learned_not,
                               _tpt_scores(store, model, target)))
    return folds


def _fold(model: str, target: str, matrix: Sequence[MatrixRow], ranking, learned: bool,
          tpt: dict[str, float]) -> Fold:
    column = [r for r in matrix if r.target_task == target]
    measured = {source: float(np.mean(values))
                for (source, to), values in cells(column, "score").items()
                if to == target and source != target and values}
    predicted = list(dict.fromkeys(r.source_task for r in ranking
                                   if r.origin == "store" and r.source_task in measured))
    return Fold(model, target, column[0].target_type, learned, predicted, measured,
                {r.source_task: r.source_type for r in column}, column[0].random_score, tpt)


def _tpt_scores(store: Store, model: str, target: str) -> dict[str, float]:
    """Each source task's mean best TPT score on ``target`` over the study's seeds."""
    table = store.layout.tpt_dir(target, model=model) / TPT_SUMMARY
    if not table.exists():
        return {}
    found: dict[str, list[float]] = {}
    for r in read_records(table, TptSummaryRow):
        if r.source_task is not None:
            found.setdefault(r.source_task, []).append(r.best_score)
    return {source: float(np.mean(scores)) for source, scores in found.items()}


@dataclass(frozen=True)
class Measure:
    """One measure of the recommendation beside its baselines, over the folds."""

    name: str
    recommended: Estimate
    baselines: dict[str, Estimate]
    comparisons: dict[str, str]  # baseline -> the paired difference in words


def summarise(folds: Sequence[Fold]) -> list[Measure]:
    """Top-1, top-3, Spearman, regret and (where the study ran TPT from two or more sources)
    the TPT top-1, each over the folds with its interval, beside the baselines, with paired
    comparisons worded by `evidence.verdict` (a hit rate not distinguishable from a random
    source's is at chance)."""
    def measure(name: str, mine: list[float], baselines: dict[str, list[float]],
                lower_is_better: bool = False) -> Measure:
        words = {}
        for base, values in baselines.items():
            # the recommendation's improvement over the baseline, fold by fold
            gain = paired(values, mine, "folds") if lower_is_better else \
                paired(mine, values, "folds")
            said = verdict(gain, f"better than {base}", f"worse than {base}")
            if said == "not distinguishable" and base == "a random source":
                said = "at chance (not distinguishable from a random source)"
            words[base] = f"{said}; improvement {gain.short()}"
        return Measure(name, estimate(mine, "folds"),
                       {b: estimate(v, "folds") for b, v in baselines.items()}, words)

    out = [measure(f"top-{k} hit rate", [f.hit(k) for f in folds],
                   {"a random source": [f.random_hit(k) for f in folds],
                    "the same task type": [f.same_type_hit(k) for f in folds]})
           for k in (1, 3)]
    out.append(measure("Spearman (predicted order vs measured)", [f.spearman for f in folds],
                       {"a random source": [0.0 if np.isfinite(f.spearman) else np.nan
                                            for f in folds]}))
    out.append(measure("regret (best - chosen, score points)", [f.regret for f in folds],
                       {"a random source": [f.random_regret() for f in folds],
                        "the same task type": [f.same_type_regret() for f in folds],
                        "no transfer": [f.no_transfer_regret() for f in folds]},
                       lower_is_better=True))
    tpt = [f.tpt_hit() for f in folds]
    if any(hit is not None for hit in tpt):
        out.append(Measure("TPT top-1 (best TPT score)", estimate(tpt, "folds"), {}, {}))
    return out
