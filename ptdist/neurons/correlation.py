"""How well each indicator predicts zero-shot transfer: Spearman's rank correlation between
indicator(P_source, P_target) and the relative performance of P_source on the target task.

- per target: across the source prompts of the transfer matrix, the target's own prompt
  excluded; then averaged over the targets that have at least 3 sources (fewer give no
  usable ranking);
- global: across all (source, target) pairs with source != target.

Inputs are the transfer matrix (`ptdist transfer matrix`) and the indicator table
(`ptdist neurons indicators`) of the same model; output: `StoreLayout.correlation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptdist.errors import PtdistError
from ptdist.store import Store
from ptdist.store.results import CorrelationRow, IndicatorRow, MatrixRow
from ptdist.store.tables import read_records, write_records

MIN_SOURCES = 3


@dataclass
class CorrelationResult:
    rows: list[CorrelationRow]
    table: Path


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (ties get their average rank)."""
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def correlate(store: Store, model: str) -> CorrelationResult:
    matrix_path, indicator_path = store.layout.matrix(model), store.layout.indicators(model)
    for path, command in ((matrix_path, "ptdist transfer matrix"),
                          (indicator_path, "ptdist neurons indicators")):
        if not path.exists():
            raise PtdistError(f"{path} does not exist; run `{command} --model {model}` first")
    matrix = read_records(matrix_path, MatrixRow)
    own = {r.target_task: r.source_prompt for r in matrix if r.source_task == r.target_task}
    values: dict[str, dict[tuple[str, str], float]] = {}
    for r in read_records(indicator_path, IndicatorRow):
        values.setdefault(r.indicator, {})[(r.prompt_a, r.prompt_b)] = r.value
    pairs = [(r.source_prompt, own[r.target_task], r.target_task, r.relative)
             for r in matrix if r.source_task != r.target_task and r.relative is not None]
    missing = sorted({p for a, b, _, _ in pairs for p in (a, b)} -
                     {a for a, _ in next(iter(values.values()))})
    if missing:
        raise PtdistError(f"the transfer matrix uses prompts without indicators: "
                          f"{', '.join(missing)}; capture them (`ptdist neurons capture`) and "
                          "recompute the indicators")
    rows = [_row(model, name, table, pairs) for name, table in values.items()]
    out = write_records(store.layout.correlation(model), CorrelationRow, rows)
    return CorrelationResult(rows, out)


def by_strength(rows: list[CorrelationRow]) -> list[CorrelationRow]:
    """Correlation rows from the strongest global correlation down (undefined ones last)."""
    def key(row: CorrelationRow) -> tuple[bool, float]:
        rho = row.spearman_global
        return not np.isfinite(rho), -(rho if np.isfinite(rho) else 0.0)

    return sorted(rows, key=key)


def _row(model: str, name: str, table: dict, pairs: list[tuple]) -> CorrelationRow:
    per_target = []
    for target in sorted({t for _, _, t, _ in pairs}):
        mine = [(table[(s, own)], rel) for s, own, t, rel in pairs if t == target]
        if len(mine) >= MIN_SOURCES:
            rho = spearman([v for v, _ in mine], [r for _, r in mine])
            if np.isfinite(rho):
                per_target.append(rho)
    return CorrelationRow(
        model=model, indicator=name,
        spearman_per_target=float(np.mean(per_target)) if per_target else None,
        targets=len(per_target),
        spearman_global=spearman([table[(s, o)] for s, o, _, _ in pairs],
                                 [r for *_, r in pairs]),
        pairs=len(pairs))
