"""The statistics every finding rests on: Spearman's rank correlation, percentile bootstrap
intervals, and how two intervals are put into words.

Every interval is a percentile bootstrap: the statistic recomputed on ``RESAMPLES`` samples
drawn with replacement (a fixed seed, so a report repeats exactly), its 2.5th and 97.5th
percentiles forming the 95 % interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
SEED = 0


@dataclass(frozen=True)
class Interval:
    """An estimate with its bootstrap interval; ``low``/``high`` are NaN when undefined."""

    estimate: float
    low: float
    high: float

    @classmethod
    def of(cls, estimate: float | None, low: float | None, high: float | None) -> "Interval":
        """An interval from stored columns, where None means undefined."""
        nan = float("nan")
        return cls(nan if estimate is None else estimate, nan if low is None else low,
                   nan if high is None else high)

    @property
    def defined(self) -> bool:
        return bool(np.isfinite(self.low) and np.isfinite(self.high))

    def __str__(self) -> str:
        if not np.isfinite(self.estimate):
            return "undefined"
        if not self.defined:
            return f"{self.estimate:.2f} [no interval]"
        return f"{self.estimate:.2f} [{self.low:.2f}, {self.high:.2f}]"


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (ties get their average rank); NaN
    when either side is constant."""
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    """0-based ranks; tied values share the mean of their positions."""
    position = np.empty(len(values))
    position[values.argsort(kind="stable")] = np.arange(len(values), dtype=np.float64)
    _, tie = np.unique(values, return_inverse=True)
    return (np.bincount(tie, weights=position) / np.bincount(tie))[tie]


def resamples(n: int, count: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """``count`` bootstrap samples of ``n`` indices drawn with replacement: ``[count, n]``."""
    return np.random.default_rng(seed).integers(0, n, size=(count, n))


def percentile_interval(estimate: float, replicates: Sequence[float],
                        level: float = LEVEL) -> Interval:
    """The percentile interval of bootstrap ``replicates`` (undefined ones, NaN, left out; no
    interval when fewer than half are defined)."""
    values = np.asarray(replicates, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < max(1, len(replicates) // 2):
        return Interval(estimate, float("nan"), float("nan"))
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high))


def bootstrap(values: Sequence[float], statistic: Callable[[np.ndarray], float] = np.mean,
              count: int = RESAMPLES, seed: int = SEED) -> Interval:
    """``statistic`` of ``values`` with its percentile bootstrap interval over the values."""
    data = np.asarray(values, dtype=np.float64)
    if len(data) == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    replicates = [statistic(data[idx]) for idx in resamples(len(data), count, seed)]
    return percentile_interval(float(statistic(data)), replicates)


def compare(a: Interval, b: Interval) -> str:
    """``a`` against ``b`` in words, from their intervals: "higher" or "lower" when they do
    not overlap, else "not distinguishable"."""
    if not (a.defined and b.defined):
        return "not distinguishable"
    if a.low > b.high:
        return "higher"
    if a.high < b.low:
        return "lower"
    return "not distinguishable"
