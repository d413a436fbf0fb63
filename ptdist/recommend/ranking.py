"""The signals a recommendation ranks candidates by, and the one rule that combines them.

**Zero-shot score.** Every candidate on a seeded sample of the new task's *training* rows (its
evaluation rows stay unseen for the runs that follow), the candidates a batch dimension of one
pass over the rows (`scoring.score`, as the transfer matrix runs it), beside the matrix's two
baselines on the same rows: the majority class and a random-init prompt (of the candidate's
seed where it has one among the seeds given, else of the first, drawn as a random-init run on
the new task starts: from the seed and the task). A candidate is *clearly above* when the
paired bootstrap over the rows puts the lower end of its 95 % interval above both
(`ptdist.transfer.baselines`; no majority class for a generation task: the random prompt's).
Below `ptdist.statistics.MIN_ROWS` sampled rows the row bootstrap gives no interval: no score
interval, no candidate clearly above anything, and no rank interval.

**Probe indicator** (optional). A short prompt-tuning run on the new task (the probe) compared
with each candidate by the indicator the store's correlation study ranks best among those that
can be computed here: ON and its layer-wise variants where the model's FFN activations can be
read, the embedding indicators otherwise (and E_concat, D_concat only between prompts of one
length). Its weight is the store's Spearman coefficient of that indicator with zero-shot
transfer (per target, else global), floored at 0; without a correlation study of the model the
indicator is shown and breaks ties but weighs nothing.

**The rule.** Each signal ranks the candidates (1 = best; ties share their mean rank; a
candidate without an indicator value ranks last on it). A candidate's combined score is

    (rank by zero-shot score + w x rank by indicator) / (1 + w)

(w = the indicator's weight; lower is better): zero-shot on the task's own rows is a direct
measurement of what is predicted, so it weighs as a perfect predictor would, and an indicator
weighs as much as the store's evidence says it predicts. The predicted rank puts the
candidates clearly above both baselines first (transfer measured above chance on the task's
own rows is evidence that no proxy overrides), then orders each group by the combined score,
ties broken by the indicator, then the zero-shot score, then the name. Its 95 % interval, and
the share of resamples in which a candidate ranks first, come from resampling the sampled rows
(the same draws for every candidate, so their scores stay paired) and ranking again; the
indicator and the groups are held fixed. It says how sure the order is on these rows, not how
well the rule generalises (`ptdist.recommend.check`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ptdist.backbones import Backbone
from ptdist.errors import PtdistError
from ptdist.neurons.capture import ffn_sites
from ptdist.neurons.collect import activation_states
from ptdist.neurons.correlation import by_strength
from ptdist.neurons.indicators import embedding_indicators, neuron_indicators
from ptdist.recommend.candidates import Candidate
from ptdist.scoring import score
from ptdist.statistics import (LEVEL, MIN_ROWS, RESAMPLES, SEED, Interval, resamples,
                               row_interval)
from ptdist.store import Store
from ptdist.store.results import CorrelationRow
from ptdist.store.tables import read_records
from ptdist.tasks import TaskRecord, compute_metrics, get_task
from ptdist.transfer.baselines import (majority_baseline, margin, random_prompts,
                                       resampled_scores)

DEFAULT_INDICATORS = ("ON", "E_avg")  # without a study: the paper's best, else embedding


@dataclass(frozen=True)
class ZeroShot:
    """Each candidate (in the order given) on the sampled training rows, with the
    baselines."""

    task: TaskRecord
    metric: str
    rows: int
    scores: np.ndarray  # [K]
    replicates: np.ndarray  # [RESAMPLES, K]: the scores on each resample of the rows
    chance: float | None  # None: a generation task, which has no majority class
    random_scores: list[float]  # [K]: the random prompt each candidate is compared with
    # [K]: the lower ends of the 95 % row-bootstrap intervals of (score - chance) and (score -
    # its random prompt); None where there is no interval (below MIN_ROWS rows, no chance)
    above_chance_low: list[float | None]
    above_random_low: list[float | None]

    @property
    def clearly_above(self) -> list[bool]:
        return [r is not None and r > 0 and (self.chance is None or (c is not None and c > 0))
                for c, r in zip(self.above_chance_low, self.above_random_low)]

    def interval(self, k: int) -> Interval:
        """Candidate ``k``'s score with its 95 % row-bootstrap interval (none below
        `MIN_ROWS` rows)."""
        return row_interval(float(self.scores[k]), self.replicates[:, k], self.rows)


def zero_shot(backbone: Backbone, task_ref: str, candidates: Sequence[Candidate],
              seeds: Sequence[int], *, sample: int, sample_seed: int, data_dir: str | None,
              batch_size: int, max_new_tokens: int) -> ZeroShot:
    """The zero-shot signal of every candidate: candidates of one prompt length are scored in
    one pass with their random prompts (one per seed of ``seeds``)."""
    for c in candidates:
        try:
            backbone.check_prompt(c.tensor)
        except PtdistError as exc:
            raise PtdistError(f"candidate {c.label} ({c.origin}): {exc}") from None
    k = len(candidates)
    name = get_task(task_ref).name
    predictions: list = [None] * k
    baseline: list = [None] * k
    scored = None
    for length in dict.fromkeys(c.prompt_length for c in candidates):
        group = [i for i, c in enumerate(candidates) if c.prompt_length == length]
        prompts = torch.cat([torch.stack([candidates[i].tensor for i in group]),
                             random_prompts(backbone, name, seeds, length)])
        scored = score(backbone, task_ref, prompts, data_dir=data_dir, limit=sample,
                       batch_size=batch_size, max_new_tokens=max_new_tokens, split="train",
                       seed=sample_seed)
        randoms = dict(zip(seeds, scored.predictions[len(group):]))
        for j, i in enumerate(group):
            predictions[i] = scored.predictions[j]
            baseline[i] = randoms.get(candidates[i].seed, randoms[seeds[0]])
    task, refs = scored.task, scored.references
    metric = task.primary_metric
    draws = resamples(len(refs), RESAMPLES, SEED)
    majority, chance = majority_baseline(task, metric, refs)
    scores = [compute_metrics(task, p, refs)[metric] for p in predictions]
    return ZeroShot(
        task=task, metric=metric, rows=len(refs), scores=np.array(scores),
        replicates=np.stack([resampled_scores(task, metric, p, refs, draws)
                             for p in predictions], axis=1),
        chance=chance, random_scores=[compute_metrics(task, b, refs)[metric] for b in baseline],
        above_chance_low=[None if majority is None else
                          margin(task, metric, p, majority, refs).bounds()[0]
                          for p in predictions],
        above_random_low=[margin(task, metric, p, b, refs).bounds()[0]
                          for p, b in zip(predictions, baseline)])


@dataclass(frozen=True)
class IndicatorChoice:
    """The probe's indicator, its weight in the rule, and why it was chosen."""

    name: str
    weight: float
    why: str


def choose_indicator(store: Store, model: str, capturable: bool) -> IndicatorChoice:
    """The indicator the store's correlation studies of ``model`` (the activation one and
    `neurons embedding`'s) rank best among those computable here (`pick_indicator`)."""
    rows: list[CorrelationRow] = []
    for table in (store.layout.correlation(model), store.layout.embedding_correlation(model)):
        if table.exists():
            rows += read_records(table, CorrelationRow)
    return pick_indicator(rows, model, capturable)


def pick_indicator(rows: Sequence[CorrelationRow], model: str,
                   capturable: bool) -> IndicatorChoice:
    """The strongest of ``rows`` (correlations with transfer) whose indicator is computable
    (ON needs ``capturable`` activations), weighted by its coefficient; without one, the
    default of `DEFAULT_INDICATORS`, weight 0."""
    usable = [r for r in by_strength(list(rows)) if capturable or not r.indicator.startswith("ON")]
    if not usable:
        name = DEFAULT_INDICATORS[0] if capturable else DEFAULT_INDICATORS[1]
        return IndicatorChoice(name, 0.0, f"no correlation study of {model} in the store: "
                               f"{name} shown, weight 0 (it only breaks ties)")
    best = usable[0]
    per_target = best.spearman_per_target is not None
    rho = best.spearman_per_target if per_target else best.spearman_global
    weight = max(0.0, rho) if rho is not None and math.isfinite(rho) else 0.0
    low, high = ((best.per_target_low, best.per_target_high) if per_target
                 else (best.global_low, best.global_high))
    interval = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
    return IndicatorChoice(best.indicator, weight, (
        f"the store's correlation study of {model} ranks it best"
        + ("" if capturable else " among the embedding indicators (no FFN activations here)")
        + f": Spearman with zero-shot transfer {rho:.2f}{interval} "
        + (f"per target ({best.targets} targets)" if per_target else f"({best.pairs} pairs)")))


def can_capture(backbone: Backbone) -> bool:
    """Whether the model's FFN activations can be read (ON needs them)."""
    return bool(ffn_sites(backbone))


def probe_values(backbone: Backbone, probe: torch.Tensor, candidates: Sequence[Candidate],
                 indicator: str) -> np.ndarray:
    """``indicator`` between the probe prompt and each candidate (NaN where it cannot be
    computed: an embedding indicator between prompts of different lengths)."""
    if indicator.startswith("ON"):
        states = activation_states(backbone, [probe, *(c.tensor for c in candidates)])
        return np.array([neuron_indicators(states[0], s)[indicator] for s in states[1:]])
    return np.array([embedding_indicators(probe.numpy(), c.tensor.numpy())[indicator]
                     if c.tensor.shape == probe.shape else math.nan for c in candidates])


@dataclass(frozen=True)
class Ranked:
    combined: np.ndarray  # [K], lower is better
    rank: np.ndarray  # [K], 1 = first
    low: np.ndarray | None  # [K]: the rank's 95 % interval; None below MIN_ROWS rows
    high: np.ndarray | None
    p_top: np.ndarray | None  # [K]: the share of the resamples in which it ranks first


def rank_candidates(zero: ZeroShot, indicator: np.ndarray | None, weight: float,
                    labels: Sequence[str]) -> Ranked:
    """The rule of the module docstring, with the interval of each predicted rank (from
    `MIN_ROWS` rows on)."""
    values = np.full(len(labels), np.nan) if indicator is None else indicator
    by_indicator = _ranks(values)
    names = np.argsort(np.argsort(np.array(labels)))  # the name's place: the last tie-break
    behind = ~np.array(zero.clearly_above)  # the group after the clearly-above candidates

    def positions(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        combined = (_ranks(scores) + weight * by_indicator) / (1 + weight)
        order = np.lexsort((names, -scores, -np.nan_to_num(values, nan=-np.inf), combined,
                            behind))
        place = np.empty(len(order), dtype=int)
        place[order] = np.arange(1, len(order) + 1)
        return combined, place

    combined, rank = positions(zero.scores)
    if zero.rows < MIN_ROWS:
        return Ranked(combined, rank, None, None, None)
    drawn = np.array([positions(r)[1] for r in zero.replicates])
    tail = 100 * (1 - LEVEL) / 2
    return Ranked(combined, rank,
                  np.percentile(drawn, tail, axis=0, method="lower").astype(int),
                  np.percentile(drawn, 100 - tail, axis=0, method="higher").astype(int),
                  (drawn == 1).mean(axis=0))


def _ranks(values: np.ndarray) -> np.ndarray:
    """1 for the highest value; ties share their mean rank; NaN ranks last."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=-np.inf)
    above = (v[None, :] > v[:, None]).sum(axis=1)
    tied = (v[None, :] == v[:, None]).sum(axis=1)
    return 1 + above + (tied - 1) / 2
