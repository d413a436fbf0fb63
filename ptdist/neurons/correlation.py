"""How well each indicator predicts zero-shot transfer: Spearman's rank correlation between
indicator(P_source, P_target) and the relative performance of P_source on the target task.

- per target: across the source prompts of the transfer matrix, the target's own prompt
  excluded; then averaged over the targets that have at least 3 sources (fewer give no
  usable ranking);
- global: across all (source, target) pairs with source != target.

Inputs are the transfer matrix (`ptdist transfer matrix`) and the indicator table
(`ptdist neurons indicators`) of the same model. Output: ``<store>/neurons/<model>/
correlation.parquet`` and ``layerwise_ON.png`` (correlation of ON of each layer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ptdist.errors import PtdistError
from ptdist.neurons.pairs import neurons_dir
from ptdist.store.prompts import PromptStore
from ptdist.store.tables import read_table, write_table

MIN_SOURCES = 3
CORRELATION_SCHEMA = pa.schema([
    ("model", pa.string()), ("indicator", pa.string()), ("spearman_per_target", pa.float64()),
    ("targets", pa.int64()), ("spearman_global", pa.float64()), ("pairs", pa.int64()),
])


@dataclass
class CorrelationResult:
    rows: list[dict]
    table: Path
    layer_curve: Path


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


def correlate(model: str, store: PromptStore) -> CorrelationResult:
    from ptdist.transfer.matrix import model_dir

    matrix_path = model_dir(store, model) / "matrix.parquet"
    indicator_path = neurons_dir(store, model) / "indicators.parquet"
    for path, command in ((matrix_path, "ptdist transfer matrix"),
                          (indicator_path, "ptdist neurons indicators")):
        if not path.exists():
            raise PtdistError(f"{path} does not exist; run `{command} --model {model}` first")
    matrix = read_table(matrix_path)
    own = {r["target_task"]: r["source_prompt"] for r in matrix
           if r["source_task"] == r["target_task"]}
    values: dict[str, dict[tuple[str, str], float]] = {}
    for r in read_table(indicator_path):
        values.setdefault(r["indicator"], {})[(r["prompt_a"], r["prompt_b"])] = r["value"]
    pairs = [(r["source_prompt"], own[r["target_task"]], r["target_task"], r["relative"])
             for r in matrix if r["source_task"] != r["target_task"] and r["relative"] is not None]
    missing = sorted({p for a, b, _, _ in pairs for p in (a, b)} -
                     {a for a, _ in next(iter(values.values()))})
    if missing:
        raise PtdistError(f"the transfer matrix uses prompts without indicators: "
                          f"{', '.join(missing)}; capture them (`ptdist neurons capture`) and "
                          "recompute the indicators")
    rows = [_row(model, name, table, pairs) for name, table in values.items()]
    folder = neurons_dir(store, model)
    out = write_table(folder / "correlation.parquet", rows, CORRELATION_SCHEMA)
    return CorrelationResult(rows, out, _layer_curve(model, rows, folder / "layerwise_ON.png"))


def by_strength(rows: list[dict]) -> list[dict]:
    """Correlation rows from the strongest global correlation down (undefined ones last)."""
    def key(row: dict) -> tuple[bool, float]:
        rho = row["spearman_global"]
        return rho is None, -(rho or 0.0)

    return sorted(rows, key=key)


def _row(model: str, name: str, table: dict, pairs: list[tuple]) -> dict:
    per_target = []
    for target in sorted({t for _, _, t, _ in pairs}):
        mine = [(table[(s, own)], rel) for s, own, t, rel in pairs if t == target]
        if len(mine) >= MIN_SOURCES:
            rho = spearman([v for v, _ in mine], [r for _, r in mine])
            if np.isfinite(rho):
                per_target.append(rho)
    return {"model": model, "indicator": name,
            "spearman_per_target": float(np.mean(per_target)) if per_target else None,
            "targets": len(per_target),
            "spearman_global": spearman([table[(s, o)] for s, o, _, _ in pairs],
                                        [r for *_, r in pairs]),
            "pairs": len(pairs)}


def _layer_curve(model: str, rows: list[dict], path: Path) -> Path:
    from ptdist.reporting.figures import learning_curves

    layers = sorted((int(m.group(1)), r) for r in rows
                    if (m := re.fullmatch(r"ON_layer_(\d+)", r["indicator"])))
    curves = {"global": ([k for k, _ in layers], [r["spearman_global"] for _, r in layers])}
    per_target = [(k, r["spearman_per_target"]) for k, r in layers
                  if r["spearman_per_target"] is not None]
    if per_target:
        curves["mean over targets"] = ([k for k, _ in per_target], [v for _, v in per_target])
    return learning_curves(curves, "Spearman correlation with transfer",
                           f"layer-wise ON vs zero-shot transfer, {model}", path,
                           xlabel="layer (encoder, then decoder)")
