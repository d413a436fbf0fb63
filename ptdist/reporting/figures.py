"""PNG figures, drawn with matplotlib's non-interactive backend (no display needed)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ptdist.store.atomic import atomic_write  # noqa: E402
from ptdist.store.results import (CorrelationRow, IndicatorRow, MatrixRow,  # noqa: E402
                                  RecommendRow, TptCurveRow, TptSummaryRow)
from ptdist.transfer.matrix import cells  # noqa: E402


def grouped_heatmap(values: np.ndarray, rows: list[str], cols: list[str], groups: list[str],
                    title: str, path: str | os.PathLike, colorbar: str,
                    axis_labels: tuple[str, str] = ("source prompt's task (type)",
                                                    "target task")) -> Path:
    """A square heatmap whose rows and columns (the same items, already ordered by group) are
    split by lines between groups and annotated with each cell's value."""
    n = len(rows)
    fig, ax = plt.subplots(figsize=(4.5 + 0.55 * n, 3.0 + 0.5 * n))
    image = ax.imshow(values, cmap="viridis")
    ax.set_xticks(range(n), cols, rotation=45, ha="right")
    ax.set_yticks(range(n), [f"{r} ({g})" for r, g in zip(rows, groups)])
    ax.set_ylabel(axis_labels[0])
    ax.set_xlabel(axis_labels[1])
    for i in range(n):
        for j in range(n):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if values[i, j] < np.nanmean(values) else "black")
    for k in range(1, n):
        if groups[k] != groups[k - 1]:
            ax.axhline(k - 0.5, color="white", linewidth=2)
            ax.axvline(k - 0.5, color="white", linewidth=2)
    fig.colorbar(image, ax=ax, label=colorbar, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def learning_curves(curves: dict[str, tuple[list[int], list[float]]], metric: str, title: str,
                    path: str | os.PathLike, hline: float | None = None,
                    xlabel: str = "training step") -> Path:
    """One line per series (label -> (x, y)); ``hline``: a reference value."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, (steps, scores) in curves.items():
        ax.plot(steps, scores, marker="o", markersize=3, label=label)
    if hline is not None:
        ax.axhline(hline, color="gray", linestyle="--", linewidth=1, label="vanilla best")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)


def matrix_figure(rows: Sequence[MatrixRow], path: str | os.PathLike,
                  field: str = "relative") -> Path:
    """The heatmap of a zero-shot transfer matrix: ``field`` (relative or normalized, %),
    each cell the mean over its seeds."""
    order = list(dict.fromkeys(r.source_task for r in rows))
    types = {r.source_task: r.source_type for r in rows}
    index = {name: i for i, name in enumerate(order)}
    values = np.full((len(order), len(order)), np.nan)
    for (source, target), found in cells(rows, field).items():
        if found:
            values[index[source], index[target]] = float(np.mean(list(found.values())))
    label = {"relative": "relative performance (%)",
             "normalized": "chance-normalised transfer (%)"}[field]
    return grouped_heatmap(values, order, order, [types[n] for n in order],
                           f"zero-shot transfer, {rows[0].model}", path, label)


def indicator_figure(rows: Sequence[IndicatorRow], indicator: str,
                     path: str | os.PathLike) -> Path:
    """The heatmap of one indicator between every pair of prompts, grouped by task."""
    tasks = {r.prompt_a: r.task_a for r in rows}
    ids = sorted(tasks, key=lambda pid: (tasks[pid], pid))
    index = {pid: k for k, pid in enumerate(ids)}
    values = np.full((len(ids), len(ids)), np.nan)
    for r in rows:
        if r.indicator == indicator:
            values[index[r.prompt_a], index[r.prompt_b]] = 100.0 * r.value
    labels = [f"{tasks[pid]}:{pid[:6]}" for pid in ids]
    return grouped_heatmap(values, labels, labels, [tasks[pid] for pid in ids],
                           f"{indicator} between prompts, {rows[0].model}", path,
                           f"{indicator} x 100", axis_labels=("prompt (task)", "prompt"))


def layerwise_figure(rows: Sequence[CorrelationRow], path: str | os.PathLike) -> Path:
    """Spearman's correlation of layer-wise ON with transfer, layer by layer."""
    layers = sorted((int(m.group(1)), r) for r in rows
                    if (m := re.fullmatch(r"ON_layer_(\d+)", r.indicator)))
    curves = {"global": ([k for k, _ in layers], [r.spearman_global for _, r in layers])}
    per_target = [(k, r.spearman_per_target) for k, r in layers
                  if r.spearman_per_target is not None]
    if per_target:
        curves["mean over targets"] = ([k for k, _ in per_target], [v for _, v in per_target])
    return learning_curves(curves, "Spearman correlation with transfer",
                           f"layer-wise ON vs zero-shot transfer, {rows[0].model}", path,
                           xlabel="layer (encoder, then decoder)")


def tpt_figure(curves: Sequence[TptCurveRow], summary: Sequence[TptSummaryRow],
               path: str | os.PathLike, seeds: Mapping[str, int] | None = None) -> Path:
    """Vanilla PT's and each TPT run's learning curve on one target, with vanilla's best; with
    several seeds (``seeds``: each run's prompt id -> its seed), one line per run and seed."""
    seeds = seeds or {}
    several = len(set(seeds.values())) > 1
    speedups = {r.prompt_id: r.speedup for r in summary}
    lines: dict[str, tuple[list[int], list[float]]] = {}
    for r in curves:
        label = r.run + (f", seed {seeds[r.prompt_id]}" if several else "")
        if r.run != "vanilla":
            speedup = speedups.get(r.prompt_id)
            label += f" (speed-up {speedup:.2f}x)" if speedup else " (not reached)"
        steps, scores = lines.setdefault(label, ([], []))
        steps.append(r.step)
        scores.append(r.score)
    head = summary[0]
    return learning_curves(lines, head.metric, f"{head.target_task} on {head.model}: vanilla "
                           "PT vs TPT", path, hline=None if several else head.vanilla_best)


def recommend_figure(rows: Sequence[RecommendRow], path: str | os.PathLike,
                     shown: int = 30) -> Path:
    """A recommendation: each candidate's zero-shot score on the new task's sampled training
    rows with its 95 % interval (none below MIN_ROWS rows), in predicted order (the first
    ``shown``), beside the majority class and the random prompts; each bar names its predicted
    rank and interval (and the probe indicator's value)."""
    top = list(rows)[:shown]
    fig, ax = plt.subplots(figsize=(7.5, 1.6 + 0.32 * len(top)))
    y = np.arange(len(top))[::-1]
    scores = np.array([r.score for r in top])
    lows = np.array([r.score if r.score_low is None else r.score_low for r in top])
    highs = np.array([r.score if r.score_high is None else r.score_high for r in top])
    colors = ["tab:blue" if r.clearly_above else "tab:gray" for r in top]
    ax.barh(y, scores, xerr=np.array([scores - lows, highs - scores]), color=colors, capsize=2)
    ax.set_yticks(y, [f"{r.label[:24]} ({r.source_task[:16]})" for r in top], fontsize=8)
    for yi, high, r in zip(y, highs, top):
        note = f"rank {r.rank}" + ("" if r.rank_low is None else
                                   f" [{r.rank_low}, {r.rank_high}]")
        if r.indicator_value is not None:
            note += f", {r.indicator} {r.indicator_value:.2f}"
        ax.text(high, yi, "  " + note, va="center", fontsize=7)
    head = top[0]
    if head.chance is not None:
        ax.axvline(head.chance, color="black", linestyle="--", linewidth=1,
                   label=f"majority class {head.chance:.1f}")
    ax.axvline(float(np.mean([r.random_score for r in top])), color="tab:red", linestyle=":",
               linewidth=1, label="random prompt")
    ax.set_xlabel(f"zero-shot {head.metric} on {head.sample_rows} training rows of "
                  f"{head.target_task}\n(blue: clearly above both baselines)")
    ax.set_xlim(0, max(100.0, float(scores.max()) * 1.35))
    ax.set_title(f"source prompts for {head.target_task} on {head.model}, predicted order",
                 fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
