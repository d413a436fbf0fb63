"""`--then-tpt K`: the recommendation checked by training. The new task is prompt-tuned from
each of the top K candidates (the best-ranked prompt of each of the K best-ranked source tasks)
and from a random init (vanilla), once per seed of the study, as a TPT_task plan
(`ptdist.transfer.tpt`: every seed's TPT run starts from the one candidate that was ranked and
is compared with that seed's vanilla run; the runs and their curves and speed-ups are stored
like any TPT run's). `outcomes` states each source's measured result over the seeds beside its
predicted rank (`evidence`: the seed is the unit, comparisons with vanilla are paired)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ptdist.recommend.candidates import Candidate
from ptdist.recommend.evidence import as_json, difference, over_seeds
from ptdist.recommend.recommendation import Recommendation
from ptdist.statistics import Interval
from ptdist.store.results import RecommendRow, TptCurveRow, TptSummaryRow
from ptdist.transfer.tpt import (Curve, TptPlan, TptSource, check_lengths, compared_areas,
                                 evaluation_grid)


def top_sources(result: Recommendation, candidates: Sequence[Candidate],
                k: int) -> list[tuple[RecommendRow, Candidate]]:
    """The best-ranked candidate of each of the ``k`` best-ranked source tasks (a task's
    other seeds would compare the seeds, not the sources)."""
    by_id = {c.id: c for c in candidates}
    chosen: dict[tuple[str, str], tuple[RecommendRow, Candidate]] = {}
    for row in result.rows:
        chosen.setdefault((row.origin, row.source_task), (row, by_id[row.candidate]))
    return list(chosen.values())[:k]


def tpt_plan(result: Recommendation, top: Sequence[tuple[RecommendRow, Candidate]],
             task_ref: str, train: dict[str, Any], seeds: Sequence[int],
             **placement: Any) -> TptPlan:
    """Vanilla PT and PT from each of ``top`` on the new task, for each of ``seeds``, every
    seed's run of a source starting from its one candidate; ``placement``: data_dir,
    ds_config, tolerance."""
    sources = [TptSource(f"tpt from {c.label}", c.init,
                         {(result.task, seed): c for seed in seeds}) for _, c in top]
    return TptPlan(result.model, (task_ref,), tuple(sources), check_lengths(sources, train),
                   seeds=tuple(seeds), **placement)


@dataclass(frozen=True)
class TptOutcome:
    """One run label of the comparison over its seeds."""

    run: str  # "vanilla" or "tpt from <candidate>"
    rank: int | None  # the candidate's predicted rank (None: vanilla)
    rank_low: int | None
    rank_high: int | None
    best: Interval  # best evaluation score, t over seeds
    start: Interval  # score at step 0, before any update
    gain: Interval | None  # best - vanilla's best of the same seed, paired (None: vanilla)
    area_gain: Interval | None  # area under the curve - vanilla's (`compared_areas`), paired
    speedups: dict[int, float | None]  # per seed: vanilla's steps to its best / this run's
    grid: str  # the evaluation steps, which bound every speed-up (`evaluation_grid`)

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "rank": self.rank, "rank_low": self.rank_low,
                "rank_high": self.rank_high, "best": as_json(self.best),
                "start": as_json(self.start),
                "gain": None if self.gain is None else as_json(self.gain),
                "area_gain": None if self.area_gain is None else as_json(self.area_gain),
                "speedups": {str(s): v for s, v in self.speedups.items()}, "grid": self.grid}


def outcomes(summary: Sequence[TptSummaryRow], curves: Sequence[TptCurveRow],
             seeds: Mapping[str, int],
             top: Sequence[tuple[RecommendRow, Candidate]]) -> list[TptOutcome]:
    """Vanilla first, then each source in predicted order; ``seeds``: each run's prompt id ->
    its seed (`ptdist.transfer.tpt.run_seeds`)."""
    points: dict[str, Curve] = {}
    for c in curves:
        steps, scores = points.setdefault(c.prompt_id, ([], []))
        steps.append(c.step)
        scores.append(c.score)
    runs: dict[str, dict[int, TptSummaryRow]] = {}
    for r in summary:
        runs.setdefault(r.run, {})[seeds[r.prompt_id]] = r
    vanilla = runs["vanilla"]

    def outcome(run: str, rows: dict[int, TptSummaryRow], row: RecommendRow | None
                ) -> TptOutcome:
        best = {s: r.best_score for s, r in rows.items()}
        areas = {s: compared_areas(points[r.prompt_id], points[vanilla[s].prompt_id])
                 for s, r in rows.items()}
        compared = row is not None
        return TptOutcome(
            run, row.rank if compared else None, row.rank_low if compared else None,
            row.rank_high if compared else None, over_seeds(best),
            over_seeds({s: r.start_score for s, r in rows.items()}),
            difference(best, {s: r.best_score for s, r in vanilla.items()}) if compared
            else None,
            difference({s: a for s, (a, _) in areas.items()},
                       {s: v for s, (_, v) in areas.items()}) if compared else None,
            {s: r.speedup for s, r in rows.items()} if compared else {},
            evaluation_grid(points[next(iter(rows.values())).prompt_id][0]))

    return [outcome("vanilla", vanilla, None)] + [
        outcome(f"tpt from {c.label}", runs[f"tpt from {c.label}"], row) for row, c in top]
