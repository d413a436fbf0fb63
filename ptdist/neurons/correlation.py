"""How well each indicator predicts zero-shot transfer: Spearman's rank correlation between
indicator(P_source, P_target) and the relative performance of P_source on the target task.

Each source prompt (every seed) is one observation per target; its indicator value is the mean
of indicator(P_source, P_own) over the target's own prompts of the other seeds (all of them
when they share the source's seed): a random-init run's starting prompt is drawn from its seed
alone, so prompts of one seed start equal whatever their task, and the embedding indicators
would measure that start (in the quickstart, E_concat between different tasks' prompts averaged
0.26-0.28 within a seed against 0.02 across seeds).

- **per target** (the paper's protocol, and the ranking's): across the source prompts of other
  tasks, for each target with at least 3 of them; then averaged over the targets;
- **global**: across all (source prompt, target) pairs of different tasks.

Each coefficient has a 95 % percentile bootstrap interval (`ptdist.statistics`): the global one
resamples the pairs; the per-target one resamples each target's sources, then averages over
the targets. Pairs whose source or target task has own prompts that are not clearly above
chance (`MatrixRow.clearly_above`) are left out: transfer to or from a prompt that learned
nothing is not evidence about transfer.

Inputs are the transfer matrix (`ptdist transfer matrix`) and the indicator table
(`ptdist neurons indicators`, or `ptdist neurons embedding` for prompts alone) of the same
model; output: `StoreLayout.correlation`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptdist.errors import PtdistError
from ptdist.statistics import (RESAMPLES, SEED, Interval, percentile_interval, resamples,
                               spearman)
from ptdist.store import Store
from ptdist.store.results import CorrelationRow, IndicatorRow, MatrixRow
from ptdist.store.tables import read_records, write_records
from ptdist.transfer.matrix import unusable_tasks

MIN_SOURCES = 3
Values = Mapping[str, Mapping[tuple[str, str], float]]  # indicator -> (prompt a, b) -> value


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


def transfers(rows: Sequence[MatrixRow], left_out: Sequence[str]) -> list[Transfer]:
    """The matrix's cells between different tasks, neither of them ``left_out``."""
    return [Transfer(r.source_prompt, r.source_task, r.target_task, r.relative, r.source_seed)
            for r in rows
            if r.source_task != r.target_task and r.relative is not None
            and r.source_task not in left_out and r.target_task not in left_out]


def correlate(store: Store, model: str) -> CorrelationResult:
    matrix_path, indicator_path = store.layout.matrix(model), store.layout.indicators(model)
    for path, command in ((matrix_path, "ptdist transfer matrix"),
                          (indicator_path, "ptdist neurons indicators")):
        if not path.exists():
            raise PtdistError(f"{path} does not exist; run `{command} --model {model}` first")
    rows = correlation_rows(model, read_records(matrix_path, MatrixRow),
                            read_records(indicator_path, IndicatorRow))
    return CorrelationResult(rows, write_records(store.layout.correlation(model),
                                                 CorrelationRow, rows))


def correlation_rows(model: str, matrix: Sequence[MatrixRow],
                     indicators: Sequence[IndicatorRow]) -> list[CorrelationRow]:
    """Each indicator's correlation with the transfer of ``matrix`` (its own prompts on their
    tasks say which prompts each target's are), strongest first."""
    owns: dict[str, list[tuple[str, int | None]]] = {}
    for r in matrix:
        if r.source_task == r.target_task:
            owns.setdefault(r.target_task, []).append((r.source_prompt, r.source_seed))
    left_out = unusable_tasks(matrix)
    return rank_indicators(model, transfers(matrix, left_out), owns,
                           indicator_values(indicators), left_out)


def indicator_values(rows: Iterable[IndicatorRow]) -> dict[str, dict[tuple[str, str], float]]:
    values: dict[str, dict[tuple[str, str], float]] = {}
    for r in rows:
        values.setdefault(r.indicator, {})[(r.prompt_a, r.prompt_b)] = r.value
    return values


def rank_indicators(model: str, pairs: Sequence[Transfer],
                    owns: Mapping[str, Sequence[tuple[str, int | None]]], values: Values,
                    left_out: Sequence[str] = ()) -> list[CorrelationRow]:
    """One row per indicator, strongest first (`by_strength`). ``owns``: each target task's
    own prompts with their seeds (None: unknown); ``values``: every indicator for ordered
    prompt pairs."""
    if not values:
        raise PtdistError("no indicator values to correlate")
    known = {a for a, _ in next(iter(values.values()))}
    missing = sorted({p for t in pairs for p in (t.source, *(o for o, _ in owns[t.target_task]))}
                     - known)
    if missing:
        raise PtdistError(f"the transfer matrix uses prompts without indicators: "
                          f"{', '.join(missing)}; compute their indicators (`ptdist neurons "
                          "capture` then `indicators`, or `ptdist neurons embedding`)")
    rows = [_row(model, name, table, pairs, owns, ", ".join(left_out))
            for name, table in values.items()]
    return by_strength(rows)


def by_strength(rows: list[CorrelationRow]) -> list[CorrelationRow]:
    """Correlation rows from the strongest mean per-target correlation down, then by the
    global one (undefined ones last)."""
    def key(row: CorrelationRow) -> tuple:
        return tuple(x for v in (row.spearman_per_target, row.spearman_global)
                     for x in (not _finite(v), -(v if _finite(v) else 0.0)))

    return sorted(rows, key=key)


def _finite(value: float | None) -> bool:
    return value is not None and bool(np.isfinite(value))


def compared_owns(pair: Transfer, owns: Sequence[tuple[str, int | None]]) -> list[str]:
    """The target's own prompts ``pair``'s source is compared with: those of other seeds, or
    all of them when none has another seed or the seeds are unknown."""
    other = [o for o, seed in owns if pair.source_seed is not None and seed is not None
             and seed != pair.source_seed]
    return other or [o for o, _ in owns]


def _row(model: str, name: str, table: Mapping[tuple[str, str], float],
         pairs: Sequence[Transfer], owns: Mapping[str, Sequence[tuple[str, int | None]]],
         left_out: str) -> CorrelationRow:
    x = np.array([np.mean([table[(t.source, o)] for o in compared_owns(t, owns[t.target_task])])
                  for t in pairs])
    y = np.array([t.relative for t in pairs])
    per_target = _per_target(x, y, [t.target_task for t in pairs])
    overall = _global(x, y)
    return CorrelationRow(
        model=model, indicator=name, spearman_per_target=per_target.estimate
        if per_target is not None else None,
        per_target_low=_bound(per_target, "low"), per_target_high=_bound(per_target, "high"),
        targets=0 if per_target is None else per_target.targets,
        spearman_global=overall.estimate, global_low=_bound(overall, "low"),
        global_high=_bound(overall, "high"), pairs=len(pairs), left_out=left_out)


@dataclass(frozen=True)
class _PerTarget(Interval):
    targets: int = 0


def _per_target(x: np.ndarray, y: np.ndarray, targets: list[str]) -> _PerTarget | None:
    """The mean of the per-target coefficients, over targets with at least `MIN_SOURCES`
    sources and a defined coefficient; its interval resamples each target's sources."""
    groups = [np.flatnonzero([t == target for t in targets]) for target in dict.fromkeys(targets)]
    groups = [g for g in groups if len(g) >= MIN_SOURCES and np.isfinite(spearman(x[g], y[g]))]
    if not groups:
        return None
    replicates = np.full((len(groups), RESAMPLES), np.nan)
    for k, g in enumerate(groups):
        for r, idx in enumerate(resamples(len(g), RESAMPLES, SEED + k)):
            replicates[k, r] = spearman(x[g][idx], y[g][idx])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample may leave none defined
        means = np.nanmean(replicates, axis=0)
    interval = percentile_interval(float(np.mean([spearman(x[g], y[g]) for g in groups])),
                                   means)
    return _PerTarget(interval.estimate, interval.low, interval.high, len(groups))


def _global(x: np.ndarray, y: np.ndarray) -> Interval:
    rho = spearman(x, y)
    if not np.isfinite(rho):
        return Interval(rho, float("nan"), float("nan"))
    return percentile_interval(rho, [spearman(x[idx], y[idx])
                                     for idx in resamples(len(x), RESAMPLES, SEED)])


def _bound(interval: Interval | None, side: str) -> float | None:
    if interval is None or not interval.defined:
        return None
    return getattr(interval, side)
