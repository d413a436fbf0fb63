"""Every statistic a recommendation and its check state, in one place: an estimate over the
units of replication (seeds of a TPT comparison, the folds of the leave-one-task-out
benchmark) with its interval, and a paired difference put into words.

The intervals are `ptdist.statistics`' percentile bootstrap. Below `MIN_N` units no interval
is given and a comparison says "too few to compare (n = ...)": at n = 2 a percentile bootstrap
of a mean is the two values themselves. The calibrated intervals and minimum of issue 26
replace these functions' insides, not their callers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ptdist.statistics import Interval, bootstrap

MIN_N = 5  # units below which an estimate has no interval and a comparison is not made
TEST = "percentile bootstrap over {unit}"  # how each interval was made, as reports name it


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` units, with its 95 % interval when ``n`` allows one."""

    mean: float
    n: int
    unit: str  # what was resampled: seeds, folds
    interval: Interval | None

    def __str__(self) -> str:
        n = f"n = {self.n} {self.unit[:-1] if self.n == 1 else self.unit}"
        if not math.isfinite(self.mean):
            return f"undefined ({n})"
        if not self.has_interval:
            return f"{self.mean:.2f} ({n}: too few for an interval)"
        return f"{self.short()} ({n}, {TEST.format(unit=self.unit)})"

    @property
    def has_interval(self) -> bool:
        return self.interval is not None and self.interval.defined

    def short(self) -> str:
        """The mean and its interval, or the mean alone (for a table with an n column)."""
        if self.has_interval:
            return str(self.interval)  # the bootstrap's estimate is the mean
        return f"{self.mean:.2f}" if math.isfinite(self.mean) else "undefined"

    def to_json(self) -> dict:
        return {"mean": self.mean, "n": self.n, "unit": self.unit,
                "low": self.interval.low if self.interval else None,
                "high": self.interval.high if self.interval else None}


def estimate(values: Sequence[float], unit: str) -> Estimate:
    """The mean of ``values`` (one per unit; undefined ones left out) and its interval."""
    data = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not data:
        return Estimate(float("nan"), 0, unit, None)
    mean = float(np.mean(data))
    return Estimate(mean, len(data), unit, bootstrap(data) if len(data) >= MIN_N else None)


def paired(a: Sequence[float], b: Sequence[float], unit: str) -> Estimate:
    """The mean of ``a - b`` over the units both define, with its interval."""
    return estimate([x - y for x, y in zip(a, b) if x is not None and y is not None], unit)


def verdict(difference: Estimate, higher: str, lower: str) -> str:
    """A paired difference in words: ``higher`` when its interval lies above 0, ``lower``
    below, "not distinguishable" when it holds 0, "too few to compare" without an
    interval."""
    found = difference.interval
    if not difference.has_interval:
        return f"too few to compare (n = {difference.n} {difference.unit})"
    if found.low > 0:
        return higher
    if found.high < 0:
        return lower
    return "not distinguishable"
