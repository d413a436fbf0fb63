"""`--then-tpt K`: the recommendation checked by training. The new task is prompt-tuned from
each of the top K candidates (the best-ranked prompt of each of the K best-ranked source tasks)
and from a random init (vanilla), once per seed of the study, as a TPT_task plan
(`ptdist.transfer.tpt`: the runs and their curves and speed-ups are stored like any TPT run's).
`outcomes` sets each source's measured speed-up and best score, over the seeds, beside its
predicted rank."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ptdist.recommend.candidates import Candidate
from ptdist.recommend.evidence import Estimate, estimate, paired
from ptdist.recommend.recommendation import Recommendation
from ptdist.store.results import RecommendRow, TptSummaryRow
from ptdist.transfer.tpt import TptPlan, TptSource, check_lengths


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
    """Vanilla PT and PT from each of ``top`` on the new task, for each of ``seeds``;
    ``placement``: data_dir, ds_config, tolerance."""
    sources = [TptSource(f"tpt from {c.label}", c.init, {result.task: c}) for _, c in top]
    return TptPlan(result.model, (task_ref,), tuple(sources), check_lengths(sources, train),
                   seeds=tuple(seeds), **placement)


@dataclass(frozen=True)
class TptOutcome:
    """One run label of the comparison over its seeds."""

    run: str  # "vanilla" or "tpt from <candidate>"
    rank: int | None  # the candidate's predicted rank (None: vanilla)
    rank_low: int | None
    rank_high: int | None
    best: Estimate  # best evaluation score
    start: Estimate  # score at step 0, before any update
    gain: Estimate | None  # best - vanilla's best of the same seed (None: vanilla)
    speedups: list[float | None]  # per seed: vanilla's steps to its best / this run's
    speedup: Estimate | None  # over the seeds where it is finite (None: vanilla)

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "rank": self.rank, "rank_low": self.rank_low,
                "rank_high": self.rank_high, "best": self.best.to_json(),
                "start": self.start.to_json(), "speedups": self.speedups,
                "gain": None if self.gain is None else self.gain.to_json(),
                "speedup": None if self.speedup is None else self.speedup.to_json()}


def outcomes(summary: Sequence[TptSummaryRow],
             top: Sequence[tuple[RecommendRow, Candidate]]) -> list[TptOutcome]:
    """Vanilla first, then each source in predicted order; every estimate over the seeds."""
    runs: dict[str, list[TptSummaryRow]] = {}
    for r in summary:
        runs.setdefault(r.run, []).append(r)
    vanilla = runs["vanilla"]
    out = [TptOutcome("vanilla", None, None, None,
                      estimate([r.best_score for r in vanilla], "seeds"),
                      estimate([r.start_score for r in vanilla], "seeds"), None,
                      [r.speedup for r in vanilla], None)]
    for row, candidate in top:
        mine = runs[f"tpt from {candidate.label}"]  # seed by seed, as vanilla's
        out.append(TptOutcome(
            f"tpt from {candidate.label}", row.rank, row.rank_low, row.rank_high,
            estimate([r.best_score for r in mine], "seeds"),
            estimate([r.start_score for r in mine], "seeds"),
            paired([r.best_score for r in mine], [r.best_score for r in vanilla], "seeds"),
            [r.speedup for r in mine], estimate([r.speedup for r in mine], "seeds")))
    return out
