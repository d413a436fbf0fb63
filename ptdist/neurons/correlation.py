"""How well each indicator predicts zero-shot transfer: Spearman's rank correlation between
indicator(P_source, P_target) and the relative performance of P_source on the target task.

Within a seed, each source prompt is one observation per target; its indicator value is the
mean of indicator(P_source, P_own) over the target's own prompts of the same seed when prompts
start independently (`independent_starts`), else of the other seeds: a prompt whose random
init was drawn from its seed alone starts equal to the other tasks' prompts of that seed, and
the embedding indicators would measure that start (in the quickstart, E_concat between
different tasks' prompts averaged 0.26-0.28 within a seed against 0.02 across seeds).

The **seed is the unit**: a seed trains every task's prompt once, so one seed's prompts are one
replicate of the whole study. Each coefficient is computed within a seed (two seeds of one task
are never two sources of one coefficient), then averaged over seeds:

- **per target** (the paper's protocol, and the ranking's): within a seed, across the source
  prompts of other tasks, for each target with at least `MIN_SOURCES` of them; then averaged
  over those targets;
- **global**: within a seed, across all (source prompt, target) pairs of different tasks; the
  pairs of a seed share prompts, which is why a seed, not a pair, is what is resampled.

Each mean over seeds has a Student-t interval over the seeds (`ptdist.statistics`) only where
that interval holds its 95 % coverage (measured by simulation, `tests/test_statistics.py`):
the seeds' replicates must be independent (compared across seeds, two replicates share the
target's prompts, and the interval covers less than 90 % in simulation), and a
per-target coefficient over at least `CALIBRATED_TARGETS` targets of at least
`CALIBRATED_SOURCES` sources each, a global one over at least `CALIBRATED_PAIRS` pairs per seed;
a Spearman coefficient over fewer points takes so few values that no interval over a few seeds
covers. Pairs whose source or target task has own prompts that are not clearly above chance
(`MatrixRow.clearly_above`) are left out: transfer to or from a prompt that learned nothing is
not evidence about transfer.

Inputs are the transfer matrix (`ptdist transfer matrix`) and the indicator table
(`ptdist neurons indicators`, or `ptdist neurons embedding` for prompts alone) of the same
model; output: `StoreLayout.correlation`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ptdist.errors import PtdistError
from ptdist.statistics import Interval, over_replicates, spearman_rows
from ptdist.store import Store
from ptdist.store.manifests import PromptManifest
from ptdist.store.results import CorrelationRow, IndicatorRow, MatrixRow
from ptdist.store.tables import read_records, write_records
from ptdist.transfer.matrix import unusable_tasks

MIN_SOURCES = 3  # a per-target coefficient over fewer sources is not formed
CALIBRATED_TARGETS, CALIBRATED_SOURCES = 6, 5  # a per-target interval needs as many
CALIBRATED_PAIRS = 20  # a global interval needs as many pairs per seed
Values = Mapping[str, Mapping[tuple[str, str], float]]  # indicator -> (prompt a, b) -> value
Seed = int | None  # None: prompts of unknown seeds, one replicate


@dataclass(frozen=True)
class Transfer:
    """One source prompt on one target task."""

    source: str  # the source prompt (id or name)
    source_task: str
    target_task: str
    relative: float
    source_seed: int | None = None  # None: unknown (prompts named outside a store)


@dataclass
class CorrelationResult:
    rows: list[CorrelationRow]
    table: Path


@dataclass
class SeedCoefficients:
    """One indicator's coefficients in each seed's replicate."""

    per_target: dict[Seed, dict[str, float]] = field(default_factory=dict)  # seed -> target -> rho
    sources: dict[Seed, int] = field(default_factory=dict)  # the fewest of a counted target
    global_: dict[Seed, float] = field(default_factory=dict)
    pairs: dict[Seed, int] = field(default_factory=dict)
    independent: bool = True  # False: compared across seeds, the replicates share prompts

    def per_target_means(self) -> dict[Seed, float]:
        return {s: float(np.mean(list(t.values()))) for s, t in self.per_target.items() if t}

    def per_target_calibrated(self) -> bool:
        return self.independent and all(
            len(t) >= CALIBRATED_TARGETS and self.sources[s] >= CALIBRATED_SOURCES
            for s, t in self.per_target.items() if t)

    def global_calibrated(self) -> bool:
        return self.independent and all(n >= CALIBRATED_PAIRS for n in self.pairs.values())

def transfers(rows: Sequence[MatrixRow], left_out: Sequence[str]) -> list[Transfer]:
    """The matrix's cells between different tasks, neither of them ``left_out``."""
    return [Transfer(r.source_prompt, r.source_task, r.target_task, r.relative, r.source_seed)
            for r in rows
            if r.source_task != r.target_task and r.relative is not None
            and r.source_task not in left_out and r.target_task not in left_out]


def correlate(store: Store, model: str) -> CorrelationResult:
    rows = correlation_rows(model, *stored_coefficients(store, model))
    return CorrelationResult(rows, write_records(store.layout.correlation(model),
                                                 CorrelationRow, rows))


def stored_coefficients(store: Store, model: str) -> tuple[dict[str, SeedCoefficients],
                                                           list[str]]:
    """Each indicator's per-seed coefficients from the model's stored transfer matrix and
    indicator table, and the tasks left out."""
    matrix_path, indicator_path = store.layout.matrix(model), store.layout.indicators(model)
    for path, command in ((matrix_path, "ptdist transfer matrix"),
                          (indicator_path, "ptdist neurons indicators")):
        if not path.exists():
            raise PtdistError(f"{path} does not exist; run `{command} --model {model}` first")
    return matrix_coefficients(store, read_records(matrix_path, MatrixRow),
                               read_records(indicator_path, IndicatorRow))


def matrix_coefficients(store: Store, matrix: Sequence[MatrixRow],
                        indicators: Iterable[IndicatorRow]
                        ) -> tuple[dict[str, SeedCoefficients], list[str]]:
    """Each indicator's per-seed coefficients with the transfer of ``matrix`` (its own prompts
    on their tasks say which prompts each target's are; the store's manifests, how they
    started), and the tasks left out: a part of a stored matrix as well as the whole."""
    owns: dict[str, list[tuple[str, int | None]]] = {}
    for r in matrix:
        if r.source_task == r.target_task:
            owns.setdefault(r.target_task, []).append((r.source_prompt, r.source_seed))
    left_out = unusable_tasks(matrix)
    values = indicator_values(indicators)
    within = independent_starts(store.prompts.manifest(pid)
                                for pid in {r.source_prompt for r in matrix})
    return seed_coefficients(transfers(matrix, left_out), owns, values, within), left_out


def correlation_rows(model: str, found: Mapping[str, SeedCoefficients],
                     left_out: Sequence[str]) -> list[CorrelationRow]:
    """One row per indicator of ``found`` (`matrix_coefficients`), strongest first."""
    return by_strength([correlation_row(model, name, c, ", ".join(left_out))
                        for name, c in found.items()])


def indicator_values(rows: Iterable[IndicatorRow]) -> dict[str, dict[tuple[str, str], float]]:
    values: dict[str, dict[tuple[str, str], float]] = {}
    for r in rows:
        values.setdefault(r.indicator, {})[(r.prompt_a, r.prompt_b)] = r.value
    return values


def rank_indicators(model: str, pairs: Sequence[Transfer],
                    owns: Mapping[str, Sequence[tuple[str, int | None]]], values: Values,
                    left_out: Sequence[str] = (), within_seed: bool = False
                    ) -> list[CorrelationRow]:
    """One row per indicator, strongest first (`by_strength`). ``owns``: each target task's
    own prompts with their seeds (None: unknown); ``values``: every indicator for ordered
    prompt pairs; ``within_seed``: compare a source with the target's prompts of its seed
    (prompts that started independently, `independent_starts`)."""
    return correlation_rows(model, seed_coefficients(pairs, owns, values, within_seed), left_out)


def seed_coefficients(pairs: Sequence[Transfer],
                      owns: Mapping[str, Sequence[tuple[str, int | None]]],
                      values: Values, within_seed: bool) -> dict[str, SeedCoefficients]:
    """Each indicator's per-target and global coefficients in each seed's replicate, a source
    compared with the target's own prompts of its seed (``within_seed``) or of the others."""
    if not values:
        raise PtdistError("no indicator values to correlate")
    known = {a for a, _ in next(iter(values.values()))}
    missing = sorted({p for t in pairs for p in (t.source, *(o for o, _ in owns[t.target_task]))}
                     - known)
    if missing:
        raise PtdistError(f"the transfer matrix uses prompts without indicators: "
                          f"{', '.join(missing)}; compute their indicators (`ptdist neurons "
                          "capture` then `indicators`, or `ptdist neurons embedding`)")
    seeds = list(dict.fromkeys(t.source_seed for t in pairs))
    targets = list(dict.fromkeys(t.target_task for t in pairs))
    out = {}
    for name, table in values.items():
        found = SeedCoefficients(independent=within_seed and None not in seeds)
        for seed in seeds:
            x, y = replicate_arrays([t for t in pairs if t.source_seed == seed], targets, owns,
                                    table, within_seed)
            per_target = per_target_rows(x, y)
            counts = np.isfinite(y).sum(axis=0)
            found.per_target[seed] = {t: float(rho) for t, rho in zip(targets, per_target)
                                      if np.isfinite(rho)}
            found.sources[seed] = int(min((c for t, c in zip(targets, counts)
                                           if t in found.per_target[seed]), default=0))
            found.global_[seed] = float(global_rows(x, y))
            found.pairs[seed] = int(np.isfinite(y).sum())
        out[name] = found
    return out


def replicate_arrays(pairs: Sequence[Transfer], targets: Sequence[str],
                     owns: Mapping[str, Sequence[tuple[str, int | None]]],
                     table: Mapping[tuple[str, str], float],
                     within_seed: bool) -> tuple[np.ndarray, np.ndarray]:
    """One seed's ``x`` (indicator) and ``y`` (relative transfer) as ``[source prompt,
    target]`` arrays, NaN where a source has no cell."""
    sources = list(dict.fromkeys(t.source for t in pairs))
    row, col = {s: i for i, s in enumerate(sources)}, {t: j for j, t in enumerate(targets)}
    x = np.full((len(sources), len(targets)), np.nan)
    y = np.full_like(x, np.nan)
    for t in pairs:
        x[row[t.source], col[t.target_task]] = np.mean(
            [table[(t.source, o)] for o in compared_owns(t, owns[t.target_task], within_seed)])
        y[row[t.source], col[t.target_task]] = t.relative
    return x, y


def per_target_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each target (last axis) across its sources (the axis before),
    NaN for a target with fewer than `MIN_SOURCES` sources."""
    xt, yt = np.swapaxes(x, -1, -2), np.swapaxes(y, -1, -2)
    enough = (np.isfinite(xt) & np.isfinite(yt)).sum(axis=-1) >= MIN_SOURCES
    return np.where(enough, spearman_rows(xt, yt), np.nan)


def global_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho across every (source, target) cell of the last two axes."""
    flat = x.shape[:-2] + (-1,)
    return spearman_rows(x.reshape(flat), y.reshape(flat))


def per_target_estimate(c: SeedCoefficients) -> Interval:
    """The mean over seeds of the per-target coefficient, with its interval where calibrated."""
    return _calibrated(over_replicates(list(c.per_target_means().values())),
                       c.per_target_calibrated())


def global_estimate(c: SeedCoefficients) -> Interval:
    finite = [v for v in c.global_.values() if np.isfinite(v)]
    return _calibrated(over_replicates(finite), c.global_calibrated())


def paired_per_target(a: SeedCoefficients, b: SeedCoefficients) -> Interval:
    """Indicator a against b: per seed, the mean over the targets both have of the difference
    of their per-target coefficients; the paired t-interval over seeds where both are
    calibrated."""
    diffs = {}
    for seed, mine in a.per_target.items():
        common = [t for t in mine if t in b.per_target.get(seed, {})]
        if common:
            diffs[seed] = float(np.mean([mine[t] - b.per_target[seed][t] for t in common]))
    interval = over_replicates(list(diffs.values()), "paired t over seeds", test=True)
    return _calibrated(interval, a.per_target_calibrated() and b.per_target_calibrated())


def _calibrated(interval: Interval, calibrated: bool) -> Interval:
    if calibrated:
        return interval
    return Interval(interval.estimate, float("nan"), float("nan"), interval.n, interval.method)


def why_no_interval(c: SeedCoefficients) -> str:
    """Why a per-target coefficient has no interval, in words ("" when it has one)."""
    if c.per_target_calibrated():
        return ""
    seeds = len(c.per_target_means())
    if seeds < 2:
        return f"n = {seeds} seed" + ("s" if seeds != 1 else "")
    if not c.independent:
        return ("the sources were compared with the target's prompts of other seeds (their "
                "prompts share a start within a seed), so the seeds' replicates share prompts")
    targets = min(len(t) for t in c.per_target.values() if t)
    sources = min(c.sources[s] for s, t in c.per_target.items() if t)
    return (f"{targets} targets of {sources}+ sources per seed; an interval needs "
            f"{CALIBRATED_TARGETS} targets of {CALIBRATED_SOURCES}+")


def correlation_row(model: str, name: str, c: SeedCoefficients, left_out: str) -> CorrelationRow:
    per_target, overall = per_target_estimate(c), global_estimate(c)
    targets = [len(t) for t in c.per_target.values() if t]
    return CorrelationRow(
        model=model, indicator=name,
        spearman_per_target=per_target.estimate if targets else None,
        per_target_low=per_target.bounds()[0], per_target_high=per_target.bounds()[1],
        targets=min(targets, default=0),
        sources=min((c.sources[s] for s, t in c.per_target.items() if t), default=0),
        spearman_global=overall.estimate, global_low=overall.bounds()[0],
        global_high=overall.bounds()[1], pairs=min(c.pairs.values(), default=0),
        seeds=per_target.n if targets else overall.n, left_out=left_out)


def by_strength(rows: list[CorrelationRow]) -> list[CorrelationRow]:
    """Correlation rows from the strongest mean per-target correlation down, then by the
    global one (undefined ones last)."""
    def key(row: CorrelationRow) -> tuple:
        return tuple(x for v in (row.spearman_per_target, row.spearman_global)
                     for x in (not _finite(v), -(v if _finite(v) else 0.0)))

    return sorted(rows, key=key)


def _finite(value: float | None) -> bool:
    return value is not None and bool(np.isfinite(value))


def compared_owns(pair: Transfer, owns: Sequence[tuple[str, int | None]],
                  within_seed: bool) -> list[str]:
    """The target's own prompts ``pair``'s source is compared with: those of its seed
    (``within_seed``) or of the other seeds; all of them when there are none such or the seeds
    are unknown."""
    mine = [o for o, seed in owns if pair.source_seed is not None and seed is not None
            and (seed == pair.source_seed) == within_seed]
    return mine or [o for o, _ in owns]


def independent_starts(manifests: Iterable[PromptManifest]) -> bool:
    """Whether the prompts started independently of each other's tasks: each drawn at random
    from its seed and task. A prompt drawn from its seed alone (the rule before issue 26's
    ``init_rule``, which a manifest without that field has) or started from a text shares its
    start with the other tasks' prompts of its seed."""
    return all(m.init in ("random", "vocab") and getattr(m, "init_rule", "seed") != "seed"
               for m in manifests)

