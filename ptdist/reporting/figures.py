"""PNG figures, drawn with matplotlib's non-interactive backend (no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ptdist.store.atomic import atomic_write  # noqa: E402


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
