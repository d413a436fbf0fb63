"""The rows of every result table the store holds, as typed records (`tables.write_records`).

``SCHEMA`` is each record's schema version: bump it when a field changes meaning or type. A
record whose older tables can still be read defines ``upgrade(rows, version)``: the rows of an
older table (dicts) as this schema has them (`tables.read_records` applies it).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class MatrixRow:
    """One cell of a zero-shot transfer matrix: a source prompt on a target task, with the
    target's baselines on the same rows (`ptdist.transfer.matrix`).

    Schema 3 compares each source prompt with the target's own prompt of the same seed (a seed
    is one replicate of the study); schema 2 compared it with the mean of the target's own
    prompts, and is upgraded when read (`seed_paired`: the table holds the own prompts' rows)."""

    SCHEMA: ClassVar[int] = 3
    model: str
    source_task: str
    source_type: str
    source_prompt: str
    source_seed: int
    target_task: str
    target_type: str
    metric: str
    score: float
    # The score of the target's own prompt of the source's seed (their mean if several; the
    # mean of all its own prompts when it has none of that seed), on the same rows.
    own_score: float
    relative: float | None  # 100 x score / own_score; None when own_score is 0
    chance: float | None  # the majority-class score; None for a generation target
    normalized: float | None  # 100 x (score - chance) / (own_score - chance); None if undefined
    random_score: float  # the mean of random-init prompts (one per own seed)
    eval_examples: int
    # An own prompt on its own task (None on other rows): the lower ends of the 95 %
    # paired-bootstrap intervals of (score - majority class) and (score - random prompt).
    above_chance_low: float | None = None
    above_random_low: float | None = None
    clearly_above: bool | None = None  # both lower ends above 0 (no majority: random only)

    @classmethod
    def upgrade(cls, rows: list[dict[str, Any]], version: int) -> list[dict[str, Any]]:
        return seed_paired(rows)


def seed_paired(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Matrix rows (dicts holding every target's own-prompt rows) with ``own_score``,
    ``relative`` and ``normalized`` set against the target's own prompt of each source's seed.
    The chance-normalised value is defined only when every own prompt of the target is clearly
    above its baselines (else its denominator may be noise) and above chance."""
    own: dict[str, dict[int, list[float]]] = {}
    clear: dict[str, bool] = {}
    for r in rows:
        if r["source_task"] == r["target_task"]:
            own.setdefault(r["target_task"], {}).setdefault(r["source_seed"], []).append(
                r["score"])
            clear[r["target_task"]] = clear.get(r["target_task"], True) and \
                bool(r["clearly_above"])
    out = []
    for r in rows:
        seeds = own[r["target_task"]]
        mine = seeds.get(r["source_seed"]) or [s for scores in seeds.values() for s in scores]
        own_score = statistics.mean(mine)
        chance = r["chance"]
        usable = chance is not None and clear[r["target_task"]] and own_score > chance
        out.append(dict(r, own_score=own_score,
                        relative=100.0 * r["score"] / own_score if own_score else None,
                        normalized=100.0 * (r["score"] - chance) / (own_score - chance)
                        if usable else None))
    return out


@dataclass(frozen=True)
class IndicatorRow:
    """One indicator's value for an ordered pair of a model's prompts."""

    SCHEMA: ClassVar[int] = 1
    model: str
    protocol: str
    prompt_a: str
    task_a: str
    prompt_b: str
    task_b: str
    indicator: str
    value: float


@dataclass(frozen=True)
class CorrelationRow:
    """How well one indicator predicts zero-shot transfer (Spearman's rho): the mean over seeds
    of each seed's coefficient, with its Student-t interval over the seeds where that interval
    is calibrated (`ptdist.neurons.correlation`).

    Schema 2 pooled the seeds' prompts as sources and gave percentile-bootstrap intervals over
    them, which did not cover at these sizes: it is read with those intervals dropped and its
    seed counts unknown."""

    SCHEMA: ClassVar[int] = 3
    model: str
    indicator: str
    spearman_per_target: float | None  # mean over targets with enough sources (primary)
    per_target_low: float | None  # None: no calibrated interval
    per_target_high: float | None
    targets: int  # targets per seed (the fewest of any seed)
    spearman_global: float  # NaN when undefined (constant values)
    global_low: float | None
    global_high: float | None
    pairs: int  # (source, target) pairs per seed (the fewest of any seed)
    left_out: str  # tasks whose own prompts are not clearly above chance, comma-separated
    sources: int | None = None  # sources of the per-target coefficient's poorest target
    seeds: int | None = None  # the replicates averaged; None: unknown (schema 2)

    @classmethod
    def upgrade(cls, rows: list[dict[str, Any]], version: int) -> list[dict[str, Any]]:
        return [dict(r, per_target_low=None, per_target_high=None, global_low=None,
                     global_high=None, sources=None, seeds=None) for r in rows]


@dataclass(frozen=True)
class TptCurveRow:
    """One evaluation of a vanilla or TPT run's learning curve."""

    SCHEMA: ClassVar[int] = 1
    model: str
    target_task: str
    run: str  # "vanilla", "tpt from <task>", "tpt_model from <model>"
    source_task: str | None
    prompt_id: str
    step: int
    score: float
    time_s: float


@dataclass(frozen=True)
class TptSummaryRow:
    """A vanilla or TPT run on one target, with its speed-ups to vanilla's best score and to
    ``tolerance`` x that score (`ptdist.transfer.tpt`)."""

    SCHEMA: ClassVar[int] = 3
    model: str
    target_task: str
    run: str
    source_task: str | None
    source_prompt: str | None
    prompt_id: str
    metric: str
    start_score: float | None  # at step 0, before any update (None: not evaluated there)
    best_score: float
    best_step: int
    vanilla_best: float
    steps_to_vanilla_best: int | None
    time_to_vanilla_best_s: float | None
    speedup: float | None  # vanilla's steps to its best / this run's; None: never reached
    tolerance: float
    steps_to_tolerance: int | None  # first step at tolerance x vanilla's best
    speedup_tolerance: float | None  # vanilla's steps to that threshold / this run's
    # The learning-rate schedule vanilla and every TPT run of the comparison trained under
    # (one for all): "constant" or "linear" (a table of schema 2 was written before it was a
    # setting, when every run decayed linearly).
    schedule: str = "linear"


@dataclass(frozen=True)
class ProjectorEvalRow:
    """A projected prompt zero-shot on the target model, beside its baselines, with the
    row-level comparisons (`ptdist.projection.evaluation`). Schema 2 had no majority class nor
    row-level intervals: it is read with them None."""

    SCHEMA: ClassVar[int] = 3
    projector: str
    source_model: str
    target_model: str
    mode: str
    variant: str
    task: str
    task_type: str
    in_training: bool  # the projector trained on this task
    type_in_training: bool  # ... or on a task of its type
    source_prompt: str
    target_prompt: str
    metric: str
    score: float
    untrained_score: float
    own_score: float
    relative: float | None
    distance: float  # mean squared error to the target's own prompt
    untrained_distance: float
    eval_examples: int
    chance: float | None = None  # the majority-class score; None for a generation task
    # 95 % paired-bootstrap intervals over the evaluation rows (None below MIN_ROWS rows):
    gain_low: float | None = None  # of score - untrained_score
    gain_high: float | None = None
    above_chance_low: float | None = None  # of score - chance
    above_chance_high: float | None = None

    @classmethod
    def upgrade(cls, rows: list[dict[str, Any]], version: int) -> list[dict[str, Any]]:
        return [dict(r, chance=None, gain_low=None, gain_high=None, above_chance_low=None,
                     above_chance_high=None) for r in rows]


@dataclass(frozen=True)
class SweepRow:
    """What became of one run of a sweep."""

    SCHEMA: ClassVar[int] = 1
    prompt_id: str
    model: str
    task: str
    seed: int
    init: str
    status: str  # trained | resumed | stored | failed
    workers: int
    gpus: int
    metric: str | None = None
    score: float | None = None
    best_step: int | None = None
    steps: int | None = None
    resumed_from: int | None = None
    wall_time_s: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class PromptRow:
    """A study's prompt-tuning run, as its report lists it."""

    SCHEMA: ClassVar[int] = 1
    model: str
    task: str
    task_type: str
    seed: int
    init: str
    prompt_id: str
    metric: str
    score: float
    best_step: int


@dataclass(frozen=True)
class JobCostRow:
    """What one job of a study cost when it last ran: wall time and the CPU time of its
    process (a worker group's coordinator only: its workers' processes are not counted)."""

    SCHEMA: ClassVar[int] = 1
    job: str
    stage: str
    status: str  # ran | failed
    attempts: int
    cpus: float  # CPUs the job asked Ray for
    gpus: float
    cores: float  # CPUs of the whole cluster (or machine) it ran on
    wall_s: float | None  # of the successful attempt; None when it failed
    cpu_s: float | None
    examples: int | None  # prompt-tuning jobs: training examples processed
    started: float  # the driver's clock at its first submission
    finished: float


@dataclass(frozen=True)
class EstimateRow:
    """A quantity a report's findings rest on, with its 95 % interval, what the interval rests
    on and, for a difference, its p-value (`ptdist.reporting`). Schema 1 had percentile
    bootstrap intervals and neither method nor replicates."""

    SCHEMA: ClassVar[int] = 2
    section: str  # transfer | indicators | cross_model | tpt
    model: str
    quantity: str  # e.g. "same-type relative transfer"
    estimate: float
    low: float | None  # None: no interval (too few replicates, or none calibrated)
    high: float | None
    n: int  # the replicates (seeds, projector runs, evaluation rows)
    method: str = ""  # e.g. "t over seeds", "paired t over seeds"
    p_value: float | None = None  # of "the difference is 0", for a comparison
    replicates: str = ""  # each replicate's value, "seed: value, ..."

    @classmethod
    def upgrade(cls, rows: list[dict[str, Any]], version: int) -> list[dict[str, Any]]:
        return [dict(r, method="percentile bootstrap", p_value=None, replicates="")
                for r in rows]
