"""The statistics every finding rests on, chosen so that a 95 % interval covers its quantity 95 %
of the time at the few replicates a study has (`tests/test_statistics.py` measures it by
simulation; docs/replicate.md, "How the report decides", has the table).

- **Replicates.** A study's unit of replication is the seed: each seed trains every task's
  prompt once, so a quantity computed on one seed's prompts (a group mean of transfer, a
  Spearman coefficient, a gain) is one independent replicate. `over_replicates` gives the mean
  of the replicates with its Student-t interval (n - 1 degrees of freedom), exact for normal
  replicates at any n >= 2 (`MIN_REPLICATES`); a comparison of two quantities on the same seeds
  is the t-interval of their per-seed differences (a paired t-test) with its two-sided p-value.
  With one replicate there is no interval: the comparison is "too few to compare (n = 1 ...)".
  A percentile bootstrap is not used over replicates: at n = 2 it is [min, max] and covers the
  mean half the time.
- **Rows.** Whether one prompt beats another on a task is decided on its evaluation rows: the
  paired percentile bootstrap of the score difference (`row_interval`; the rows resampled with
  replacement, both predictions scored on the same resample), used from `MIN_ROWS` rows on.
- **Spearman's rho** with ties at their average rank (`spearman`, `spearman_rows`).

Everything here is plain numpy, vectorised over leading axes where the simulations need it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

LEVEL = 0.95
MIN_REPLICATES = 2  # a t-interval needs two replicates; one gives no spread
MIN_ROWS = 40  # at 30 rows the row bootstrap covered 93.2 %, at the edge (docs/replicate.md)
RESAMPLES = 1000  # row bootstrap
SEED = 0


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95 % interval (``low``/``high`` NaN when there is none), the
    number of replicates it rests on, the method, and for a difference the two-sided p-value
    of "it is 0"."""

    estimate: float
    low: float
    high: float
    n: int = 0
    method: str = ""  # e.g. "t over seeds"
    p: float | None = None

    @classmethod
    def of(cls, estimate: float | None, low: float | None, high: float | None,
           n: int = 0, method: str = "") -> "Interval":
        """An interval from stored columns, where None means undefined."""
        nan = float("nan")
        return cls(nan if estimate is None else estimate, nan if low is None else low,
                   nan if high is None else high, n, method)

    @property
    def defined(self) -> bool:
        return bool(np.isfinite(self.low) and np.isfinite(self.high))

    def bounds(self) -> tuple[float | None, float | None]:
        """(low, high) as a table stores them: None when there is no interval."""
        return (self.low, self.high) if self.defined else (None, None)

    def __str__(self) -> str:
        if not np.isfinite(self.estimate):
            return "undefined"
        if not self.defined:
            return f"{self.estimate:.2f} [no interval]"
        return f"{self.estimate:.2f} [{self.low:.2f}, {self.high:.2f}]"

    def basis(self, unit: str) -> str:
        """What the interval rests on, in words: "t over 3 seeds, p = 0.012" or "too few to
        compare (n = 1 seed)"."""
        if not self.defined:
            return too_few(self.n, unit)
        p = "" if self.p is None else f", {format_p(self.p)}"
        return f"{self.method}, n = {self.n}{p}"


def with_basis(interval: Interval, unit: str = "seed", suffix: str = "") -> str:
    """An estimate with its interval and what it rests on: "6.90 [0.00, 13.79] % (t over
    seeds, n = 2)" or "6.90 % (too few to compare (n = 1 seed))"."""
    if not interval.defined:
        return f"{interval.estimate:.2f}{suffix} ({interval.basis(unit)})"
    return f"{interval}{suffix} ({interval.basis(unit)})"


def too_few(n: int, unit: str) -> str:
    return f"too few to compare (n = {n} {unit if n == 1 else plural(unit)})"


def plural(unit: str) -> str:
    return unit if unit.endswith("s") else unit + "s"


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def verdict(difference: Interval) -> str:
    """A difference in words from its interval: "higher" or "lower" when it excludes 0,
    "not distinguishable" when it holds 0, "too few" when there is no interval."""
    if not difference.defined:
        return "too few"
    if difference.low > 0:
        return "higher"
    if difference.high < 0:
        return "lower"
    return "not distinguishable"


# --- Student's t -----------------------------------------------------------------------------

def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) (continued fraction, Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side only
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's T with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


@lru_cache(maxsize=None)
def t_quantile(df: int, level: float = LEVEL) -> float:
    """The two-sided ``level`` critical value of Student's T: P(|T| <= q) = level."""
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > 1 - level:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_two_sided_p(mid, df) > 1 - level else (low, mid)
    return (low + high) / 2


def t_bounds(values: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """Mean and Student-t interval along the last axis (n >= 2 replicates, all finite)."""
    n = values.shape[-1]
    mean = values.mean(axis=-1)
    half = t_quantile(n - 1, level) * values.std(axis=-1, ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half


def over_replicates(values: Sequence[float], method: str = "t over seeds",
                    test: bool = False) -> Interval:
    """The mean of independent replicates (NaN ones left out) with its t-interval and, for a
    difference (``test``), the p-value of "the mean is 0"; no interval below
    `MIN_REPLICATES`."""
    data = np.asarray(values, dtype=np.float64)
    data = data[np.isfinite(data)]
    n = len(data)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, method)
    if n < MIN_REPLICATES:
        return Interval(float(data.mean()), float("nan"), float("nan"), n, method)
    mean, low, high = (float(v) for v in t_bounds(data))
    sd = float(data.std(ddof=1))
    if not test:
        p = None
    elif sd == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = t_two_sided_p(mean / (sd / math.sqrt(n)), n - 1)
    return Interval(mean, low, high, n, method, p)


def paired(a: dict, b: dict, method: str = "paired t over seeds") -> Interval:
    """``a - b`` over the replicates both have (``{replicate: value}``): the paired t-test."""
    common = [k for k in a if k in b and np.isfinite(a[k]) and np.isfinite(b[k])]
    return over_replicates([a[k] - b[k] for k in common], method, test=True)


# --- evaluation rows -------------------------------------------------------------------------

def resamples(n: int, count: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """``count`` bootstrap samples of ``n`` indices drawn with replacement: ``[count, n]``."""
    return np.random.default_rng(seed).integers(0, n, size=(count, n))


def percentile_bounds(replicates: np.ndarray, level: float = LEVEL) -> np.ndarray:
    """The percentile interval of bootstrap replicates along the last axis: [2, ...]."""
    tail = 100 * (1 - level) / 2
    return np.percentile(replicates, [tail, 100 - tail], axis=-1)


def row_interval(estimate: float, replicates: np.ndarray, rows: int) -> Interval:
    """The percentile interval of a row bootstrap's ``replicates`` of a statistic over
    ``rows`` evaluation rows; none below `MIN_ROWS`."""
    method = "paired bootstrap over rows"
    if rows < MIN_ROWS:
        return Interval(estimate, float("nan"), float("nan"), rows, method)
    low, high = percentile_bounds(replicates)
    return Interval(estimate, float(low), float(high), rows, method)


# --- Spearman --------------------------------------------------------------------------------

def average_ranks(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """0-based ranks along the last axis among the ``valid`` entries (ties share the mean of
    their positions); invalid entries get NaN."""
    keyed = np.where(valid, values, np.inf)  # invalid entries rank last
    order = np.argsort(keyed, axis=-1)
    ordered = np.take_along_axis(keyed, order, axis=-1)
    ranks = np.empty(keyed.shape)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(keyed.shape[-1], dtype=float),
                                                    keyed.shape), axis=-1)
    tied = ((ordered[..., 1:] == ordered[..., :-1]) & np.isfinite(ordered[..., 1:])).any(axis=-1)
    if tied.any():  # only rows with ties need every pair compared
        v = keyed[tied]
        below = (v[..., None, :] < v[..., :, None]).sum(axis=-1)
        equal = (v[..., None, :] == v[..., :, None]).sum(axis=-1)
        ranks[tied] = below + (equal - 1) / 2.0
    return np.where(valid, ranks, np.nan)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho along the last axis over the entries where both are finite; NaN where
    fewer than two or either side is constant."""
    valid = np.isfinite(x) & np.isfinite(y)
    rx, ry = average_ranks(x, valid), average_ranks(y, valid)
    count = valid.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = np.where(valid, rx - np.nansum(rx, axis=-1, keepdims=True) / count, 0.0)
        dy = np.where(valid, ry - np.nansum(ry, axis=-1, keepdims=True) / count, 0.0)
        denominator = np.sqrt((dx * dx).sum(axis=-1) * (dy * dy).sum(axis=-1))
        rho = (dx * dy).sum(axis=-1) / denominator
    return np.where((count[..., 0] >= 2) & (denominator > 1e-12), rho, np.nan)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (ties get their average rank); NaN
    when either side is constant."""
    return float(spearman_rows(np.asarray(x, dtype=np.float64),
                               np.asarray(y, dtype=np.float64)))
